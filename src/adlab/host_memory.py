"""Keep freed host memory in the process for reuse (glibc malloc tuning, Linux).

glibc's ``malloc`` serves large blocks (from 128 KiB, adaptively up to 32 MiB, and always
above) with ``mmap`` and returns them to the kernel on ``free``; it also gives the free top of
its heap back once it exceeds ``M_TRIM_THRESHOLD``. A CPU training step allocates and frees the
same activations and gradients every step, so the kernel maps and zeroes them in again every
step. In ``make run`` (the autoencoder, batch 16 at 128 px: 32 MiB activations) that was 6.2-7.1
M minor page faults and 16-22 s of system time per run; keeping the blocks made its training
step 1.28x and the whole run 1.10x faster (2 threads, AMD EPYC; ``benchmarks/RESULTS.md``, "Host
memory reuse"). With ``M_MMAP_MAX = 0`` every block comes from the heap, and with a 2 GiB trim
threshold freed blocks stay there for the next step: what CPU tuning guides (PyTorch's, AMD
ZenDNN's) get by preloading jemalloc or tcmalloc, here without another library. The cost: while
it is on, the process keeps up to 2 GiB of freed heap instead of returning it (``make run``:
maximum resident set 1.32 -> 1.45-1.59 GB).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
from collections.abc import Callable

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc malloc.h)
M_MMAP_MAX = -4
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` of this process, or None off Linux / glibc."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)


def available() -> bool:
    """Whether this process's C library is glibc, whose ``malloc`` this module tunes."""
    return _mallopt() is not None


def keep_freed_memory(keep: bool) -> None:
    """Keep freed blocks in the heap (``keep=True``) or restore glibc's default limits.

    Raises:
        RuntimeError: not glibc (e.g. macOS, Windows, musl), or ``mallopt`` refused a value.
    """
    mallopt = _mallopt()
    if mallopt is None:
        raise RuntimeError(
            "keeping freed host memory tunes glibc malloc (Linux); this process runs on "
            f"{sys.platform} with {platform.libc_ver()[0] or 'an unknown C library'}: set "
            "callbacks.fast_path.reuse_host_memory=false (or auto)"
        )
    for param, value in (KEEP if keep else GLIBC_DEFAULTS).items():
        if mallopt(param, value) != 1:
            raise RuntimeError(f"glibc mallopt({param}, {value}) was refused")
