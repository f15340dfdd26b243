"""Setting up a process that raeae owns (a restore model actor, a Ray Train worker) for the dense
model's work: its torch threads and its memory allocator.

Why the allocator: a forward pass of 4,096 tiles allocates a 16 MB activation per layer and frees it
again. glibc gives a freed block at the top of the heap back to the kernel once more than
``M_TRIM_THRESHOLD`` is free there (by default twice the mmap threshold, at most 64 MB), and serves
any block above ``M_MMAP_THRESHOLD`` with a fresh ``mmap``; either way the next pass touches new
pages and the kernel zeroes every one of them (a page fault per 4 KB). Measured on 2 AMD EPYC cores
(fp32, one thread, 40 passes of 4,096 tiles after 3 warm-up ones, each setting in a fresh process):
the gray model ran 13,900-15,400 tiles/s with 330-490k page faults by default and 17,500 tiles/s with
none once freed memory is kept (a later pair of runs: 19,050 against 19,310, so the machine's own
drift is as large as the gain); the colour model (1,365 tiles a pass, three interleaved runs)
4,860-5,390 tiles/s by default and 5,360-5,600 kept.

This is a process-wide setting, so raeae only makes it in processes it owns, never in a process
that imports it as a library. The other half of the fix is in the code: tiles are cut into batches
and bands of at most ~16 MB (``raeae.inference.PACK_TILES``, ``raeae.patches.restore_tiles``), below
the 32 MB mmap threshold set here, so every large buffer is reused from the heap.
"""

from __future__ import annotations

import ctypes

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): blocks up to this size come
# from the heap, where freed ones are reused.
MMAP_THRESHOLD = 32 * 2**20
# Free memory kept at the top of the heap instead of handed back: a model actor's working set is a few
# hundred MB at most (its peak, which it reaches anyway), so keeping it costs no new memory.
TRIM_THRESHOLD = 1024 * 2**20


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; whether it applied: False on a C library without it (musl,
    macOS), where nothing changes."""
    try:  # the running process's own symbols: the C library it already uses (no library search)
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(fn(param, value))


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep and reuse freed memory (see the module docstring). Returns whether it
    applied (see :func:`mallopt`)."""
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def prepare_worker(threads: int) -> None:
    """A model actor's or training worker's process: ``threads`` torch threads (the CPUs Ray reserved
    for it; 0 leaves torch's default) and an allocator that reuses freed memory."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    keep_freed_memory()
