"""Deployment engine end to end: a SuperLink and 3 SuperNodes as separate processes on loopback.

3 sites x 2 rounds of the Fed-GAN with tiny networks on the committed mini CXR images (each
SuperNode gets its patient share via --node-config). Checks the ServerApp's card: both rounds
aggregated from all 3 sites, epsilon reported and growing, weights written, no process left.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("opacus")

from training.federated import task
from training.federated.deployment import run_deployment

pytestmark = pytest.mark.integration
MINI = Path(__file__).resolve().parents[1] / "data" / "mini" / "cxr_kermany_pediatric"


def tiny_manifest(tmp_path: Path) -> Path:
    """The committed mini CXR set with made-up ages/sexes (the Kermany set has none)."""
    rows = list(csv.DictReader((MINI / "manifest.csv").open()))
    out = tmp_path / "manifest.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for i, row in enumerate(rows):
            row["path"] = str((MINI / row["path"]).resolve())
            row["age"], row["sex"] = str(20 + 5 * i), "MF"[i % 2]
            writer.writerow(row)
    return out


def test_three_sites_two_rounds_on_the_deployment_engine(tmp_path: Path) -> None:
    s = task.settings_from(
        {},
        manifest=str(tiny_manifest(tmp_path)),
        num_rounds=2,
        num_sites=3,
        image_size=32,
        noise_dim=8,
        g_channels="4,8",
        d_channels="4,4,4,4",
        batch_size=4,
        site_fid=False,
        out_dir=str(tmp_path / "out"),
    )
    t0 = time.monotonic()
    card = run_deployment(s, tmp_path / "work", timeout=240)
    wall = time.monotonic() - t0
    rounds = card["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["sites"] == 3 for r in rounds)
    assert all(r["num_examples"] == 16 for r in rounds)  # every train image, each at one site
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]
    assert card["privacy"]["epsilon"] == rounds[1]["epsilon"]
    assert card["privacy"]["delta"] == s.delta
    for name in ("generator", "discriminator"):
        assert (tmp_path / "out" / f"{name}.safetensors").stat().st_size > 0
    logs = (tmp_path / "work" / "superlink.log").read_text()
    assert "register-node" in logs
    print(f"deployment 3 sites x 2 rounds: {wall:.0f} s")
