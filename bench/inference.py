"""Inference speed of the engine: images/s per backend and batch size, and seconds per study.

    .venv/bin/python bench/inference.py [--checkpoint default-cxr] [--batch-sizes 1,8,32]
        [--seconds 3] [--runs 30] [--threads N] [--no-onnx] [--no-e2e]

1. Throughput of `ai_engine.pipeline.predict_images` (the node's and ``training evaluate``'s
   scoring path) for torch on CPU, ONNX Runtime on CPU (the checkpoint exported with
   `ai_engine.export.export_onnx`) and torch on CUDA when there is a GPU (with the autocast the
   pipeline uses there). For each batch size B the pipeline's batch size is set to B and
   ``predict_images`` gets the next B of the decoded samples per call (cycling, so every B
   sees the same mix of source sizes, 224^2 to 1024^2), so one call is one batch.
   ONNX Runtime runs with spinning off (`ai_engine.export.onnx_model`'s default);
   ``--ort-spinning`` adds a row with ONNX Runtime's own default (idle threads busy-wait).
   ``pipeline img/s`` includes preprocessing from the source size (MONAI area resize of the
   decoded radiographs); ``model img/s`` is ``model.predict`` on a ready (B, 1, H, W) tensor.
2. End to end: `ai_engine.pipeline.run` on a one-image study (read DICOM, score, write the
   binary SEG, the fractional SEG and the SR into a fresh folder), p50/p95 seconds over
   ``--runs`` runs cycling over the committed samples in tests/data/dicom that the model
   analyses. The model is loaded before timing (the node keeps it loaded).

Prints tables, then, as the last line, one JSON object with every number. Bounded: each
throughput cell runs about ``--seconds`` seconds (at least 2 calls after a warm-up call).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "data" / "dicom"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sample_files() -> list[Path]:
    """One DICOM file per committed sample study folder (the one-image studies)."""
    files = []
    for folder in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
        dcms = sorted(folder.glob("*.dcm"))
        if len(dcms) == 1:
            files.append(dcms[0])
    return files


def timed_calls(call: Callable[[], object], n_per_call: int, seconds: float) -> float:
    """Images/s of ``call`` (one warm-up call, then at least 2 calls and ``seconds``)."""
    call()
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls * n_per_call / (time.perf_counter() - started)


def throughput(
    backends: dict[str, Any],
    images: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    seconds: float,
) -> list[dict[str, Any]]:
    from ai_engine import pipeline
    from ai_engine.transforms import model_input

    rows = []
    default_batch = pipeline.BATCH_SIZE
    try:
        for name, model in backends.items():
            size = model.card.image_size
            for bs in batch_sizes:
                # Every call takes the next bs images (cycling), so each batch size sees the
                # same mix of source sizes (224^2 ... 1024^2).
                batches = [
                    [images[(j * bs + i) % len(images)] for i in range(bs)]
                    for j in range(len(images))
                ]
                tensor = torch.stack([model_input(img, size) for img in batches[0]])
                tensor = tensor.to(model.device)
                pipeline.BATCH_SIZE = bs  # one predict_images call = one batch of bs
                ring = deque(batches)

                def run_pipeline(r: deque[list[np.ndarray]] = ring, m: Any = model) -> object:
                    r.rotate(-1)
                    return pipeline.predict_images(m, r[0]).score

                def run_model(x: torch.Tensor = tensor, m: Any = model) -> object:
                    return pipeline.infer_batch(m, x).score.float().cpu()

                row = {
                    "backend": name,
                    "batch": bs,
                    "pipeline_img_s": round(timed_calls(run_pipeline, bs, seconds), 1),
                    "model_img_s": round(timed_calls(run_model, bs, seconds), 1),
                }
                rows.append(row)
                print(
                    f"  {name:<16} B={bs:<3} pipeline {row['pipeline_img_s']:>8.1f} img/s"
                    f"   model {row['model_img_s']:>8.1f} img/s",
                    file=sys.stderr,
                )
    finally:
        pipeline.BATCH_SIZE = default_batch
    return rows


def end_to_end(checkpoint: str, runs: int, device: torch.device) -> dict[str, Any]:
    from ai_engine import pipeline

    pipeline.get_model(checkpoint, device)  # loaded once, as in the node's worker
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        usable, skipped = [], []
        for src in sample_files():  # warm-up run per sample; keep those that get a score
            in_dir = work / "probe" / src.parent.name
            in_dir.mkdir(parents=True)
            shutil.copy(src, in_dir / src.name)
            [result] = pipeline.run(in_dir, work / "probe-out", [checkpoint], device)
            if any(img.score is not None for img in result.images):
                usable.append(in_dir)
            else:
                skipped.append(src.parent.name)
        if not usable:
            raise SystemExit("no committed sample is analysed by this checkpoint")
        seconds, n_files = [], []
        for i in range(runs):
            out = work / f"out-{i}"
            started = time.perf_counter()
            [result] = pipeline.run(usable[i % len(usable)], out, [checkpoint], device)
            seconds.append(time.perf_counter() - started)
            n_files.append(len(result.files))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ordered = sorted(seconds)
    return {
        "runs": runs,
        "studies": [p.name for p in usable],
        "not_analysed": skipped,
        "files_per_study": sorted(set(n_files)),
        "p50_s": round(statistics.median(ordered), 4),
        "p95_s": round(ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)], 4),
        "mean_s": round(statistics.fmean(ordered), 4),
        "max_s": round(ordered[-1], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="default-cxr", help="shipped name or folder")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput cell")
    parser.add_argument("--runs", type=int, default=30, help="end-to-end runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument(
        "--ort-spinning",
        action="store_true",
        help="also measure ONNX Runtime with its idle threads spinning (its own default)",
    )
    parser.add_argument("--no-e2e", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # torch.export's own deprecation notice inside torch 2.13 (nothing to act on here).
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")

    from ai_engine import checkpoints as ckpt
    from ai_engine.dicom_io.reader import read_image
    from ai_engine.errors import AiEngineError

    torch.set_num_threads(args.threads)
    try:
        card = ckpt.read_card(args.checkpoint)
    except AiEngineError as exc:
        print(f"error: {exc}\nPass --checkpoint FOLDER (python -m training fit ...).")
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    info = machine()
    info["threads"] = args.threads
    print(f"checkpoint {args.checkpoint}: {card.model_id} {card.version}, input {card.image_size}")
    print(f"machine: {info}")

    images = [read_image(p).pixels for p in sample_files()]
    backends: dict[str, Any] = {"torch-cpu": ckpt.load(args.checkpoint, device="cpu")}
    export_seconds = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        if not args.no_onnx:
            from ai_engine.export import OnnxExportError, export_onnx, onnx_model

            started = time.perf_counter()
            try:
                onnx_path: Path | None = export_onnx(args.checkpoint, tmp / "model.onnx")
            except OnnxExportError as exc:  # e.g. a model with its own predict(): torch only
                print(f"no ONNX Runtime rows: {exc}")
                onnx_path = None
            export_seconds = round(time.perf_counter() - started, 2) if onnx_path else None
            if onnx_path is not None:
                backends["onnxruntime-cpu"] = onnx_model(
                    onnx_path, args.checkpoint, intra_op_threads=args.threads
                )
            if onnx_path is not None and args.ort_spinning:
                backends["onnxruntime-cpu-spin"] = onnx_model(
                    onnx_path, args.checkpoint, intra_op_threads=args.threads, allow_spinning=True
                )
        if torch.cuda.is_available():
            backends["torch-cuda-amp"] = ckpt.load(args.checkpoint, device="cuda")
        rows = throughput(backends, images, batch_sizes, args.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"Throughput, images/s ({args.threads} threads; source images {len(images)} samples)")
    print("| backend | batch | pipeline img/s | model img/s |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['batch']} | {row['pipeline_img_s']:.1f} "
            f"| {row['model_img_s']:.1f} |"
        )

    e2e = None
    if not args.no_e2e:
        from ai_engine.models.base import default_device

        device = default_device()
        e2e = end_to_end(args.checkpoint, args.runs, device)
        e2e["device"] = str(device)
        print()
        print(f"End to end, pipeline.run on a one-image study ({device}, {args.runs} runs)")
        print("| p50 s | p95 s | mean s | max s | files/study |")
        print("|---:|---:|---:|---:|---:|")
        print(
            f"| {e2e['p50_s']:.3f} | {e2e['p95_s']:.3f} | {e2e['mean_s']:.3f} "
            f"| {e2e['max_s']:.3f} | {','.join(map(str, e2e['files_per_study']))} |"
        )
        print(f"studies: {', '.join(e2e['studies'])}; not analysed: {e2e['not_analysed']}")

    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(
        json.dumps(
            {
                "bench": "inference",
                "checkpoint": args.checkpoint,
                "model_id": card.model_id,
                "image_size": list(card.image_size),
                "machine": info,
                "onnx_export_s": export_seconds,
                "throughput": rows,
                "end_to_end": e2e,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
