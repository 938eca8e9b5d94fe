"""Engines for `dicom_node.engine_process` tests; they run in the child (``child_engines:NAME``).

``run`` writes one SR per study like the tests' FakeEngine (``logged``: slowly, and notes when
and in which process in $CHILD_ENGINE_LOG); ``die`` exits the process in the middle of the
job, ``hang`` sleeps, ``bad_input`` raises the engine's own error and ``broken`` a plain one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import FakeEngine

from ai_engine.errors import UnsupportedInputError

_fake = FakeEngine()


def run(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    results = _fake(input_dir, output_dir, checkpoints)
    for result in results:
        result["engine_pid"] = os.getpid()
    return results


def logged(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    """``run`` after half a second, appending ``start end pid`` to $CHILD_ENGINE_LOG."""
    started = time.time()
    time.sleep(0.5)
    results = run(input_dir, output_dir, checkpoints)
    with Path(os.environ["CHILD_ENGINE_LOG"]).open("a", encoding="utf-8") as log:
        log.write(f"{started} {time.time()} {os.getpid()}\n")
    return results


def die(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    os._exit(3)


def hang(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    time.sleep(60)
    return []


def bad_input(
    input_dir: Path, output_dir: Path, checkpoints: Sequence[str]
) -> list[dict[str, Any]]:
    raise UnsupportedInputError(f"no readable DICOM image under {input_dir}")


def broken(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> list[dict[str, Any]]:
    raise MemoryError("out of memory")
