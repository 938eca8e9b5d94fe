"""A stand-in for ``ai_engine.pipeline.run`` in worker processes (``DICOM_NODE_WORKER_ENGINE``).

``standin_engine:run`` writes one small DICOM SR per study, like the unit tests' FakeEngine,
and is steered by environment variables (it runs in another process):

- ``STANDIN_ENGINE_LOG``: file to which it appends ``start|end <pid> <StudyInstanceUID>``.
- ``STANDIN_ENGINE_HOLD_DIR``: while ``<dir>/hold-<StudyInstanceUID>`` exists, the run waits
  (so a test can kill the worker in the middle of that job).
- ``STANDIN_ENGINE_SECONDS``: fixed cost per job (default 0).
- ``STANDIN_ENGINE_COST``: ``sleep`` (default; waits, like a GPU-bound engine leaves the CPU
  free) or ``cpu`` (busy loop on one core).

Used by ``tests/integration/test_distributed.py`` and ``bench/scale.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _log(event: str, study_uid: str) -> None:
    path = os.environ.get("STANDIN_ENGINE_LOG")
    if path:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(f"{event} {os.getpid()} {study_uid}\n")
            f.flush()
            os.fsync(f.fileno())


def _cost(seconds: float) -> None:
    if seconds <= 0:
        return
    if os.environ.get("STANDIN_ENGINE_COST", "sleep") == "cpu":
        end = time.process_time() + seconds
        x = 0
        while time.process_time() < end:
            x += 1
    else:
        time.sleep(seconds)


def run(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    studies: dict[str, list[str]] = {}
    for path in sorted(Path(input_dir).rglob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        studies.setdefault(str(ds.StudyInstanceUID), []).append(str(ds.SOPInstanceUID))
    hold_dir = os.environ.get("STANDIN_ENGINE_HOLD_DIR")
    results = []
    for study_uid, sops in studies.items():
        _log("start", study_uid)
        while hold_dir and (Path(hold_dir) / f"hold-{study_uid}").exists():
            time.sleep(0.05)
        _cost(float(os.environ.get("STANDIN_ENGINE_SECONDS", "0")))
        for ckpt in checkpoints:
            out = Dataset()
            out.SOPClassUID = SR_SOP_CLASS
            out.SOPInstanceUID = generate_uid()
            out.StudyInstanceUID = study_uid
            out.SeriesInstanceUID = generate_uid()
            out.Modality = "SR"
            out.Manufacturer = "AI Anomaly Node"
            out.SeriesDescription = "AI anomaly report (research use only, not for clinical use)"
            out.file_meta = FileMetaDataset()
            out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
            out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            target = Path(output_dir) / f"{out.SOPInstanceUID}.dcm"
            out.save_as(target, enforce_file_format=True)
            results.append(
                {
                    "study_instance_uid": study_uid,
                    "algorithm": {"name": ckpt, "version": "1.0.0"},
                    "images": [
                        {"sop_instance_uid": s, "score": 0.7, "threshold": 0.5} for s in sops
                    ],
                    "study_score": 0.7,
                    "is_abnormal": True,
                    "files": [str(target)],
                }
            )
        _log("end", study_uid)
    return results
