"""ai_engine.memory.keep_freed_memory: large freed tensors are reused, not page-faulted again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# allocate and free a 64 MiB tensor 30 times; print the minor page faults of the last 10
PROBE = """
import resource, sys, torch
from ai_engine.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(20):
    torch.ones(16 * 1024 * 1024)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 1024 * 1024)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")
def test_a_freed_large_tensor_is_reused_instead_of_faulted_in_again():
    _, default_faults = _faults("default")
    applied, kept_faults = _faults("keep")
    assert applied == "True"
    # glibc's default maps each 64 MiB block afresh: 16384 4-KiB pages fault in per tensor
    assert default_faults > 10 * 10_000
    # kept: once the heap has grown, the block freed by the previous tensor is reused
    assert kept_faults < default_faults / 10
