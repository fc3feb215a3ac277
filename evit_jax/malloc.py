"""Keep the memory of XLA:CPU's per-call buffers mapped between calls (glibc malloc).

Every call of a compiled XLA:CPU program allocates its temporary and output buffers and
frees them at the end. glibc serves large blocks with a fresh `mmap` and unmaps them on
`free` (or trims the heap top), so each call touches all of that memory for the first time
again: B1 at batch 8 took ~8700 minor page faults per call, 21-25 ms of kernel time next to
~180 ms of compute. With `mmap` off for malloc and the heap trimmed only beyond 2 GiB of
free top, freed blocks stay in the process and the next call reuses them (what ONNX
Runtime's and PyTorch's caching arenas do): 580-3200 faults per call. Side by side
(docs/speed.md) this made B1 bs8 1.10x, the Cityscapes segmenter 1.16x and the SAM decoder
on 64 prompts 1.16x faster, and L1 and the SAM encoder unchanged.

Blocks over 64 MiB that a thread other than the main one allocates are still mapped afresh
(glibc's per-thread heaps are at most 64 MiB and it falls back to `mmap` for them).

The cost is the usual one of an arena: the process keeps memory it has freed (up to its
peak) for reuse instead of returning it at once. `import evit_jax` applies it on Linux
with glibc; `EVIT_MALLOC=0` in the environment leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept before trimming (int max)

_applied: bool | None = None


def keep_buffers_mapped() -> bool:
    """Apply the settings once per process; True if they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("EVIT_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: other libcs' mallopt differs
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
