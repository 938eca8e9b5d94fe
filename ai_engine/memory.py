"""glibc malloc settings for batched tensor work on the CPU: keep freed memory for reuse.

glibc serves a block larger than its mmap threshold (adjusted as blocks are freed, but never
above 32 MiB on 64-bit) with a fresh ``mmap`` and gives it back to the kernel on ``free``, and it
trims the top of its heap when more than the trim threshold is free there. A network's
activations at 256² and batch 8 are blocks of that size, so every forward and backward pass
page-faults them in again. Measured on the project's 2-core machine (docs/results/model_speed.md):
a Reversed AE forward pass at 256², batch 8, took 0.47-0.50 s with glibc's
defaults and 0.23-0.24 s with both thresholds at 1 GiB.

`keep_freed_memory` sets both thresholds to 1 GiB for the calling process. Nothing computed
changes (the same weights come out of training, byte for byte); the cost is that the process
keeps the memory of its largest step mapped. The training and benchmark command lines call it;
the node does not (it scores one image at a time at 128², blocks glibc's own threshold already
keeps, and a long-running service should give memory back).
"""

from __future__ import annotations

import ctypes
import sys

# from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ONE_GIB = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB for this process.

    Returns:
        True when both were set; False where there is no glibc ``mallopt`` (not Linux, musl),
        and then nothing was changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _ONE_GIB)) and bool(mallopt(_M_TRIM_THRESHOLD, _ONE_GIB))
