"""A federated site trains and synthesises wherever it put the networks (its GPU, if any).

As in test_device.py, CI has no GPU, so the device path runs on PyTorch's ``meta`` device: any
CPU tensor mixed in fails there as it would on CUDA. A meta tensor has no value, so
``float()`` of one reads 0.0 here, and ``.cpu()`` of one gives zeros of its shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ai_engine.models.fed_cgan.local import LocalConfig, synthesize, train_local
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator
from training.federated import task

META = torch.device("meta")


@pytest.fixture
def meta_to_cpu(readable_meta: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also ``.cpu()`` of a meta tensor: zeros of its shape (a meta tensor has no data)."""
    to_cpu = torch.Tensor.cpu

    def meta_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.is_meta:
            return torch.zeros(self.shape, dtype=self.dtype)
        return to_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", meta_cpu)


def _gan() -> tuple[ConditionalUNetGenerator, AuxDiscriminator]:
    torch.manual_seed(0)
    g = ConditionalUNetGenerator(32, 2, noise_dim=8, channels=(4, 8), seed_channels=2)
    d = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    return g, d


def test_local_gan_training_and_synthesis_run_on_the_networks_device(
    meta_to_cpu: None,
) -> None:
    g, d = _gan()
    g, d = g.to(META), d.to(META)
    images, attributes = torch.rand(8, 1, 32, 32), torch.randn(8, 2)  # the site's, on the CPU
    result = train_local(g, d, images, attributes, LocalConfig(batch_size=4, dp=False), seed=0)
    assert result.steps == 2
    assert all(p.device == META for p in [*g.parameters(), *d.parameters()])
    # synthetic images come back to the CPU (the FID extractor and the reply live there)
    fake = synthesize(g, attributes[:5])
    assert fake.shape == (5, 1, 32, 32)
    assert fake.device == torch.device("cpu")


def test_the_baseline_classifier_trains_on_the_models_device(readable_meta: None) -> None:
    s = task.settings_from({"task": "classifier", "local-epochs": 1, "batch-size": 4})
    site = task.SiteData(
        images=torch.rand(6, 1, 32, 32),
        attributes=torch.randn(6, 2),
        labels=torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
        n_patients=6,
    )
    model = task.build_classifier(s).to(META)
    steps, _ = task.train_classifier_local(model, site, s)
    assert steps == 2
    assert all(p.device == META for p in model.parameters())
    # the weights a site sends back are CPU tensors whatever device it trained on
    state = task.state_dict_of({"classifier": task.build_classifier(s)})
    assert all(v.device == torch.device("cpu") for v in state.values())


def test_a_site_picks_its_device_from_its_node_config() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto means CUDA here")
    assert task.site_device({}) == torch.device("cpu")
    assert task.site_device({"device": "auto"}) == torch.device("cpu")
    assert task.site_device({"device": "cpu"}) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        task.site_device({"device": "cuda"})


def test_a_seeded_local_update_on_the_cpu_is_reproducible() -> None:
    """Noise, prior and Poisson batches come from the seed: one seed, one set of weights."""
    runs = []
    for _ in range(2):
        g, d = _gan()
        images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        attributes = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
        train_local(g, d, images, attributes, LocalConfig(batch_size=4, dp=True), seed=3)
        runs.append(np.concatenate([p.detach().numpy().ravel() for p in g.parameters()]))
    np.testing.assert_array_equal(runs[0], runs[1])
