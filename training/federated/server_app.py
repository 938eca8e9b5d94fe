"""Flower ServerApp: FedAvg (FedProx when ``proximal-mu`` > 0) of G and D across the sites.

Each round the server sends the global weights and the run's settings to every site, averages
the returned weights by image count (FedAvg) and prints one progress line. FedProx is the
same aggregation with the proximal term applied by the sites (``proximal-mu``). After the last
round it asks every site for the FID/KID of the global generator against the site's own
images (computed at the site), then writes to ``out-dir``: ``generator.safetensors``,
``discriminator.safetensors`` (or ``classifier.safetensors``) and ``card.json`` (settings,
per-round losses and privacy spent, per-site FID/KID, wall time).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import save_file

from training.federated import task

logger = logging.getLogger(__name__)
app = ServerApp()


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted means of the losses, the *largest* epsilon of any site, summed counts."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(row[weight_key]) for row in rows]
    total = sum(weights) or 1.0
    out: dict[str, float | int] = {"num-examples": int(sum(weights)), "sites": len(rows)}
    for key in ("d-loss", "g-loss", "cond-cos", "loss"):
        vals = [(float(row[key]), w) for row, w in zip(rows, weights, strict=True) if key in row]
        if vals:
            out[key] = sum(v * w for v, w in vals) / total
    for key in ("epsilon", "delta", "epsilon-1e-5", "dp-steps"):
        vals_max = [float(row[key]) for row in rows if key in row]
        if vals_max:
            out[key] = max(vals_max)
    return MetricRecord(out)  # type: ignore[arg-type]


class ProgressFedAvg(FedAvg):
    """FedAvg that prints one line per round and keeps the history for the model card."""

    def __init__(self, num_rounds: int, **kwargs: Any) -> None:
        super().__init__(train_metrics_aggr_fn=aggregate_metrics, **kwargs)
        self.num_rounds = num_rounds
        self.t0 = time.monotonic()
        self.history: list[dict[str, Any]] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        row: dict[str, Any] = {"round": server_round, "elapsed_s": time.monotonic() - self.t0}
        if metrics is not None:
            row.update({k.replace("-", "_"): v for k, v in metrics.items()})
        self.history.append(row)
        parts = [f"round {server_round}/{self.num_rounds}", f"sites {row.get('sites', 0)}"]
        for key in ("d_loss", "g_loss", "cond_cos", "loss"):
            if key in row:
                parts.append(f"{key} {row[key]:.3f}")
        if "epsilon" in row and math.isfinite(row["epsilon"]):
            parts.append(f"eps {row['epsilon']:.2f} (delta {row['delta']:.0e})")
        parts.append(f"{row['elapsed_s']:.0f} s")
        line = " | ".join(parts)
        print(line, file=sys.stderr, flush=True)
        flwr_log(INFO, line)  # shows in `flwr log <run-id>` on the deployment engine
        return arrays, metrics


def initial_state(s: task.FedSettings) -> dict[str, Any]:
    if s.task == "cgan":
        g, d = task.build_gan(s)
        return task.state_dict_of({"generator": g, "discriminator": d})
    return task.state_dict_of({"classifier": task.build_classifier(s)})


def site_evaluation(grid: Grid, arrays: ArrayRecord, s: task.FedSettings) -> list[dict[str, Any]]:
    """Ask every site for its FID/KID of the final generator; the sites compute them."""
    config = ConfigRecord(s.to_flower())  # type: ignore[arg-type]
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            message_type=MessageType.EVALUATE,
            dst_node_id=node_id,
        )
        for node_id in grid.get_node_ids()
    ]
    out = []
    for reply in grid.send_and_receive(messages, timeout=3600):
        if reply.has_error():
            logger.warning("site evaluation failed: %s", reply.error.reason)
            continue
        metrics = reply.content["metrics"]
        out.append({k.replace("-", "_"): v for k, v in metrics.items()})
    return sorted(out, key=lambda r: r.get("partition_id", 0))


def run_federation(grid: Grid, s: task.FedSettings) -> dict[str, Any]:
    """Train for ``s.num_rounds`` rounds, evaluate at the sites, write the outputs."""
    t0 = time.monotonic()
    out_dir = Path(s.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = ProgressFedAvg(
        s.num_rounds,
        fraction_evaluate=0.0,
        min_train_nodes=s.num_sites,
        min_available_nodes=s.num_sites,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state(s)),  # type: ignore[arg-type]
        num_rounds=s.num_rounds,
        train_config=ConfigRecord(s.to_flower()),  # type: ignore[arg-type]
    )
    final = result.arrays
    state = final.to_torch_state_dict()
    sites: list[dict[str, Any]] = []
    if s.task == "cgan" and s.site_fid:
        sites = site_evaluation(grid, final, s)
    for name in ("generator", "discriminator", "classifier"):
        part = {
            k[len(name) + 1 :]: v.contiguous() for k, v in state.items() if k.startswith(name + ".")
        }
        if part:
            save_file(part, str(out_dir / f"{name}.safetensors"))
    last = strategy.history[-1] if strategy.history else {}
    card = {
        "model": "fed_cgan" if s.task == "cgan" else "fedavg_classifier",
        "settings": s.to_flower(),
        "rounds": strategy.history,
        "sites": sites,
        "privacy": {
            "dp": s.dp,
            "mechanism": "DP-SGD (Opacus) on each site's discriminator update" if s.dp else "none",
            "epsilon": last.get("epsilon", float("inf")) if s.dp else None,
            "delta": s.delta if s.dp else None,
            "epsilon_at_delta_1e-5": last.get("epsilon_1e_5", float("inf")) if s.dp else None,
            "noise_multiplier": s.noise_multiplier,
            "max_grad_norm": s.max_grad_norm,
            "unit": "one image (a patient with k images: group privacy of size k)",
        },
        "wall_s": time.monotonic() - t0,
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, default=str))
    return card


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are the run config updated with ``overrides`` (simulation)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, task.settings_from({**dict(context.run_config), **(overrides or {})}))

    return server


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point (deployment engine): settings from the app's run config."""
    run_federation(grid, task.settings_from(context.run_config))
