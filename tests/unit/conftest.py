from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "tests" / "data" / "mini"


@pytest.fixture(scope="session")
def mini_cxr_manifest() -> Path:
    return MINI / "cxr_kermany_pediatric" / "manifest.csv"


@pytest.fixture(scope="session")
def mini_brain_manifest() -> Path:
    return MINI / "brain_lgg_flair" / "manifest.csv"


def tiny_conv_ae_config(manifest: Path, name: str) -> dict:
    """conv_ae.yaml shrunk to seconds: 64x64, channels 4-8, on ``manifest``."""
    from training.fit import load_config

    config = load_config(REPO / "training" / "configs" / "conv_ae.yaml")
    config.update(
        manifest=str(manifest),
        name=name,
        image_size=[64, 64],
        init_args={"image_size": [64, 64], "channels": [4, 8, 8, 8], "latent_dim": 8},
    )
    return config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, mini_cxr_manifest) -> Path:
    """A conv AE trained for 2 epochs at 64x64 on the committed mini CXR set."""
    from training.fit import fit

    config = tiny_conv_ae_config(mini_cxr_manifest, "tiny-test")
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    fit(config, out, epochs=2)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out
