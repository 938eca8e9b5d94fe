import numpy as np
import pytest
import torch

from ai_engine import registry
from ai_engine.errors import UnknownModelError
from ai_engine.models.base import AnomalyModel
from ai_engine.models.components.autoencoder import ConvAutoEncoder


def test_unknown_model_id_lists_the_valid_ones():
    with pytest.raises(UnknownModelError, match="conv_ae"):
        registry.get("no_such_model")


@pytest.mark.parametrize("model_id", registry.list_ids())
def test_every_registered_model_imports_and_implements_the_interface(model_id):
    cls = registry.get(model_id)
    assert issubclass(cls, AnomalyModel)
    assert cls.model_id == model_id


@pytest.mark.parametrize(
    ("size", "channels", "latent"),
    [
        ((64, 64), (8, 16, 32, 32), 16),
        ((128, 128), (16, 32, 64, 64), 128),
        ((96, 160), (4, 8, 8, 8), 8),
    ],
)
def test_conv_ae_reconstructs_the_input_shape_in_unit_range(size, channels, latent):
    net = ConvAutoEncoder(image_size=size, channels=channels, latent_dim=latent).eval()
    x = torch.rand(3, 1, *size)
    y = net(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0
    assert float(y.max()) <= 1.0


def test_conv_ae_refuses_sizes_it_cannot_mirror():
    with pytest.raises(ValueError, match="divisible by 16"):
        ConvAutoEncoder(image_size=(100, 100))


def test_conv_ae_is_deterministic_given_a_seed():
    torch.manual_seed(7)
    a = ConvAutoEncoder(image_size=(64, 64)).eval()
    torch.manual_seed(7)
    b = ConvAutoEncoder(image_size=(64, 64)).eval()
    x = torch.rand(2, 1, 64, 64)
    assert torch.equal(a(x), b(x))


# models trained with labels (cnn_supervised) have no normal-only trainer; their own test
# files train them with `training fit-supervised`
# files train them with `training fit-supervised`; a no-learning baseline (flair_threshold)
# has no trainer at all and is tested in test_brain.py and test_metrics.py
UNSUPERVISED = [
    m
    for m in registry.list_ids()
    if not registry.get(m).requires_labels and registry.get(m).trainable
]


def test_the_unsupervised_list_leaves_out_only_the_label_trained_models_and_the_baseline():
    assert set(registry.list_ids()) - set(UNSUPERVISED) == {"cnn_supervised", "flair_threshold"}


@pytest.mark.parametrize("model_id", UNSUPERVISED)
def test_every_model_trains_a_few_steps_with_finite_loss_and_predicts(model_id):
    from ai_engine.types import Calibration, ModelCard

    torch.manual_seed(0)
    cls = registry.get(model_id)
    args = {"image_size": (64, 64), "channels": (4, 8, 8, 8), "latent_dim": 8}
    net = cls.build_network(**args)
    trainer = cls.make_trainer(net, {"lr": 1e-3})
    x = torch.rand(4, 1, 64, 64)
    for _ in range(3):
        losses = trainer.step(x)
        assert losses
        assert all(np.isfinite(v) for v in losses.values())
    assert np.isfinite(trainer.validation_loss(x))
    card = ModelCard(
        model_id,
        "t",
        "0",
        ("DX",),
        (),
        (),
        (64, 64),
        "",
        "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        architecture=args,
    )
    out = cls(card, net).eval().predict(x)
    assert out.score.shape == (4,)
    assert out.anomaly_map.shape == (4, 1, 64, 64)
    assert torch.isfinite(out.score).all()
