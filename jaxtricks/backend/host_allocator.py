"""glibc malloc settings that stop XLA:CPU from page-faulting its scratch memory on every step.

XLA:CPU runs a compiled program with one scratch ("temp") buffer for all its intermediates,
allocated when the program starts and freed when it ends. glibc's ``malloc`` serves a request
above its mmap threshold with a fresh ``mmap`` and gives the pages back to the kernel on
``free``; the threshold adapts to the blocks a program frees, but never above 32 MiB on 64-bit
Linux. A larger scratch buffer is therefore mapped afresh for every step, and the kernel
zero-fills each of its 4 KiB pages on first touch. The command line's CNN (batch norm, dropout,
batch 128) has a scratch buffer above that threshold, so every step pays thousands of page
faults. Two settings keep freed memory in the process instead:

    mallopt(M_MMAP_MAX, 0)                  malloc maps no block of its own: blocks come from
                                            its heaps
    mallopt(M_TRIM_THRESHOLD, keep_bytes)   free memory at the top of a heap is given back to
                                            the kernel only beyond keep_bytes

The main thread's heap grows without limit. A thread other than the main one allocates from a
heap of at most 64 MiB, and glibc maps a block too large for that heap afresh even so (glibc
also unmaps a secondary heap that becomes empty), so blocks of that size allocated off the main
thread are still refaulted; the scratch buffers of the MNIST models are smaller than that.
docs/benchmarks.md has the page-fault counts and the training throughput with and without
the settings, and the commands that measured them.

The price: the process keeps up to ``keep_bytes`` of freed memory at the top of each heap, and
memory freed inside a heap goes back to the kernel only through an explicit ``malloc_trim(0)``,
so the resident size stays near its peak. Large zeroed blocks (``calloc``) reused from a heap
are zero-filled at once instead of lazily by the kernel. Under a replacement allocator
(``LD_PRELOAD`` of jemalloc or tcmalloc) the calls would reach glibc's malloc, which is then
unused, and change nothing (not tried). The settings suit a training process; a long-lived
server with changing sizes may prefer the default. They are process-wide and take effect for
later allocations. Like :func:`~jaxtricks.backend.configure_xla_cpu`, ``import jaxtricks``
does not apply them: the command line, the examples, the notebooks, the benchmarks and the
tests call :func:`configure_host_allocator` first thing.
"""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["DEFAULT_KEEP_BYTES", "configure_host_allocator"]

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

DEFAULT_KEEP_BYTES = 1 << 30
_MAX_C_INT = (1 << 31) - 1


def _process_libc() -> Any:
    """The C library the process runs on, or None where ctypes cannot open it (Windows)."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None


def configure_host_allocator(*, keep_bytes: int = DEFAULT_KEEP_BYTES, libc: Any = None) -> str:
    """Makes glibc's malloc keep freed memory, so large per-step buffers are not refaulted.

    Args:
        keep_bytes: the trim threshold: free memory at the top of a heap up to this many bytes
            stays in the process. It should exceed the scratch buffer of the step (see
            ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``); 1 GiB by
            default. An int in ``[0, 2**31 - 1]`` (mallopt takes a C int).
        libc: the C library to configure (anything with ``mallopt`` and
            ``gnu_get_libc_version``); the process's own by default.

    Returns:
        ``"set"``, or ``"not glibc"`` when the C library is not glibc (nothing changed).

    Raises:
        ValueError: ``keep_bytes`` is not an int in range.
        RuntimeError: glibc refused a setting.

    Examples:
        >>> calls = []
        >>> class FakeGlibc:
        ...     def gnu_get_libc_version(self): return b"2.36"
        ...     def mallopt(self, param, value): calls.append((param, value)); return 1
        >>> configure_host_allocator(keep_bytes=1 << 28, libc=FakeGlibc())
        'set'
        >>> calls
        [(-4, 0), (-1, 268435456)]
    """
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or not (
        0 <= keep_bytes <= _MAX_C_INT
    ):
        raise ValueError(f"keep_bytes must be an int in [0, 2**31 - 1], got {keep_bytes!r}")
    libc = _process_libc() if libc is None else libc
    if libc is None or not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return "not glibc"
    for name, param, value in (
        ("M_MMAP_MAX", _M_MMAP_MAX, 0),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, keep_bytes),
    ):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name} = {value}")
    return "set"
