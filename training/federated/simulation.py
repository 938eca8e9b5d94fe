"""Run the federation on one machine with Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from training.federated import task

logger = logging.getLogger(__name__)


def simulate(s: task.FedSettings, num_cpus: int = 2) -> dict[str, Any]:
    """``s.num_sites`` virtual SuperNodes (partition-id 0..N-1) and the ServerApp; returns the card.

    Each site's ClientApp runs in its own Ray worker process with one CPU and, on a machine
    with GPUs, an equal share of them (Ray hides the GPUs from a worker given none, and a site
    on ``auto`` then trains on the CPU).
    """
    import torch
    from flwr.simulation import run_simulation

    from training.federated.client_app import app as client_app
    from training.federated.server_app import make_server_app

    gpus = torch.cuda.device_count()
    gpus_per_site = min(1.0, gpus / max(1, s.num_sites)) if gpus else 0.0
    run_simulation(
        server_app=make_server_app(s.to_flower()),
        client_app=client_app,
        num_supernodes=s.num_sites,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": gpus_per_site},
            "init_args": {"num_cpus": num_cpus, "num_gpus": gpus, "include_dashboard": False},
        },
    )
    card: dict[str, Any] = json.loads((Path(s.out_dir) / "card.json").read_text())
    return card
