"""Speed of every registered model at one input size: inference images/s with and without mixed
precision, and training images/s, on the GPU when there is one (else the CPU).

    .venv/bin/python bench/model_speed.py [--models all] [--size 256] [--batch 16]
        [--configs full|cpu] [--seconds 3] [--device auto|cpu|cuda] [--threads N] [--no-train]
        [--malloc-default]

Per model: the network of its config (``training/configs/<id>_full.yaml``, the GPU budget, with
``--configs full`` where one exists, else ``<id>.yaml``) is built for ``--size``² input with
untrained weights (speed does not depend on the weights' values) and seeded.

- Inference: ``ai_engine.pipeline.infer_batch`` (what ``predict_images`` runs for the node and
  ``training evaluate``: ``model.predict`` under ``torch.autocast``) on a ready batch of
  ``--batch`` of the committed sample radiographs (``model_input`` at ``--size``²), once with
  mixed precision off (fp32) and once on (float16 on CUDA, bfloat16 on the CPU). The node uses
  mixed precision on CUDA only. Scores and maps are copied back to the CPU in every call, as
  the pipeline does. AnoGAN's inference is its latent search (``scoring.search_steps``).
- Training: ``trainer.step`` of the model's own trainer (``make_trainer``; the supervised
  baseline's ``make_supervised_trainer``), the step ``training fit`` runs, on CPU batches moved
  to the device per step as fit does; fp32 (fit has no mixed precision). Semi-supervised
  trainers get the same images as their unlabelled mix.
- Each model runs in a fresh Python process, with `ai_engine.memory.keep_freed_memory` as
  ``python -m training`` has it (``--malloc-default``: glibc's own malloc thresholds).
- Each cell: one warm-up call, then calls until ``--seconds`` have passed (at least 2); on
  CUDA every call ends with a synchronisation. ``peak GiB``: the most GPU memory allocated in
  the model's cells (CUDA only).

A failing cell (e.g. an operation without a bfloat16 kernel) prints its error instead of a
number; the others still run. Prints a table, then, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from inference import sample_files, timed_calls  # bench/inference.py (bench/ is on sys.path)

from ai_engine import pipeline, registry
from ai_engine.dicom_io.reader import read_image
from ai_engine.memory import keep_freed_memory
from ai_engine.models.base import AnomalyModel
from ai_engine.transforms import model_input
from training.fit import _provisional_card, device_name, load_config, resolve_device

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config_for(model_id: str, configs: str, size: int) -> tuple[str, dict[str, Any]]:
    """(config file name, config resized to ``size``²): the ``_full`` one when asked and there."""
    path = CONFIGS / f"{model_id}_full.yaml"
    if configs != "full" or not path.exists():
        path = CONFIGS / f"{model_id}.yaml"
    config = load_config(path)
    config["image_size"] = [size, size]
    if "image_size" in config["init_args"]:  # a filter-only baseline has no size of its own
        config["init_args"] = {**config["init_args"], "image_size": [size, size]}
    return path.name, config


def _cell(call: Callable[[], object], n: int, seconds: float, cuda: bool) -> float | str:
    """Images/s of ``call`` (``timed_calls``: a warm-up call, then ``seconds``, at least 2 calls),
    each call ending with a CUDA synchronisation on a GPU; or the error that stopped it."""

    def synced() -> None:
        call()
        if cuda:
            torch.cuda.synchronize()

    try:
        return round(timed_calls(synced, n, seconds), 1)
    except Exception as exc:  # noqa: BLE001 - a failing cell is reported, the rest still runs
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def measure(
    model_id: str, args: argparse.Namespace, device: torch.device, x_cpu: torch.Tensor
) -> dict[str, Any]:
    """One row: the model's inference (fp32, mixed precision) and training images/s."""
    name, config = config_for(model_id, args.configs, args.size)
    cls = registry.get(model_id)
    torch.manual_seed(0)
    network = cls.build_network(**config["init_args"]).to(device)
    rules = config.get("scoring", {}).get("rules") or list(cls.score_rules())
    scoring = {**config.get("scoring", {}), "rule": rules[0]}
    card = _provisional_card(config, (args.size, args.size), scoring)
    model: AnomalyModel = cls(card, network).eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    x = x_cpu.to(device)

    def infer(amp: bool) -> Callable[[], object]:
        def call() -> object:
            out = pipeline.infer_batch(model, x, amp=amp)
            return out.score.float().cpu(), out.anomaly_map.float().cpu()

        return call

    row: dict[str, Any] = {
        "model": model_id,
        "config": name,
        "params_m": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
        "batch": len(x_cpu),
        "infer_fp32_img_s": _cell(infer(False), len(x_cpu), args.seconds, cuda),
        "infer_amp_img_s": _cell(infer(True), len(x_cpu), args.seconds, cuda),
    }
    if not args.no_train:
        row["train_img_s"] = (
            _cell(train_call(cls, network, config, x_cpu, device), len(x_cpu), args.seconds, cuda)
            if cls.trainable
            else "-"  # nothing to train (a no-learning baseline)
        )
    if cuda:
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def train_call(
    cls: type[AnomalyModel],
    network: torch.nn.Module,
    config: dict[str, Any],
    x_cpu: torch.Tensor,
    device: torch.device,
) -> Callable[[], object]:
    """One training step of the model's trainer on ``x_cpu`` moved to ``device``."""
    if cls.requires_labels:
        trainer = cls.make_supervised_trainer(network, config["optim"])  # type: ignore[attr-defined]
        labels = (torch.arange(len(x_cpu)) % 2).float()
        return lambda: trainer.step(x_cpu.to(device), labels.to(device))
    trainer = cls.make_trainer(network, config["optim"])
    if config.get("unlabelled"):
        trainer.set_unlabelled(x_cpu)  # type: ignore[attr-defined]
    return lambda: trainer.step(x_cpu.to(device))


def measure_in_child(model_id: str) -> list[dict[str, Any]]:
    """The model's row, measured in a fresh Python process with this one's arguments.

    A fresh process per model keeps one model's figures from depending on which models ran
    before it: with glibc's own settings (``--malloc-default``) malloc raises its mmap threshold
    as large blocks are freed, so a process that has already run big networks serves later
    allocations from its heap, while a fresh one maps and page-faults large tensors on every
    call (`ai_engine.memory`).
    """
    argv = list(sys.argv[1:])
    if "--models" in argv:
        i = argv.index("--models")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--models=")]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--models", model_id,
         "--in-process"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{model_id}: {proc.stderr.strip()[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated ids, or all")
    parser.add_argument("--size", type=int, default=256, help="input size (square)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--configs", choices=("full", "cpu"), default="full")
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc malloc's thresholds at their defaults (ai_engine/memory.py)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ids = registry.list_ids() if args.models == "all" else args.models.split(",")
    if args.in_process:  # one model, in the process a parent started for it: the row only
        if not args.malloc_default:
            keep_freed_memory()  # as `python -m training` does
        images = [read_image(path).pixels for path in sample_files()]
        size = (args.size, args.size)
        x_cpu = torch.stack([model_input(images[i % len(images)], size) for i in range(args.batch)])
        print(json.dumps([measure(model_id, args, device, x_cpu) for model_id in ids]))
        return
    rows = [row for model_id in ids for row in measure_in_child(model_id)]

    columns = ["model", "config", "params_m", "batch", "infer_fp32_img_s", "infer_amp_img_s"]
    columns += [c for c in ("train_img_s", "peak_gib") if c in rows[0]]
    amp = "float16" if device.type == "cuda" else "bfloat16"
    print(f"Model speed at {args.size}x{args.size} on {device_name(device)} "
          f"({args.threads} threads; mixed precision = {amp} autocast)")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c in ("model", "config") else "---:" for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    info = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "size": args.size,
        "batch": args.batch,
        "configs": args.configs,
        "seconds_per_cell": args.seconds,
        "amp_dtype": amp,
        "malloc": "glibc defaults" if args.malloc_default else "keep_freed_memory",
    }
    print(json.dumps({**info, "rows": rows}))


if __name__ == "__main__":
    main()
