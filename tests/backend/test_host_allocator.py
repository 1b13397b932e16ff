"""configure_host_allocator: what it asks of glibc, what it refuses, and that a freed large
block is then reused without page faults."""

import subprocess
import sys

import pytest

from jaxtricks.backend.host_allocator import DEFAULT_KEEP_BYTES, configure_host_allocator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


class FakeGlibc:
    def __init__(self, answer=1):
        self.calls = []
        self.answer = answer

    def gnu_get_libc_version(self):
        return b"2.36"

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


def test_turns_off_mmap_and_raises_the_trim_threshold():
    libc = FakeGlibc()
    assert configure_host_allocator(libc=libc) == "set"
    assert libc.calls == [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, DEFAULT_KEEP_BYTES)]


def test_keep_bytes_is_the_trim_threshold():
    libc = FakeGlibc()
    configure_host_allocator(keep_bytes=12345, libc=libc)
    assert libc.calls[-1] == (M_TRIM_THRESHOLD, 12345)


def test_another_c_library_is_left_alone():
    class Musl:
        def mallopt(self, param, value):
            raise AssertionError("must not be called")

    assert configure_host_allocator(libc=Musl()) == "not glibc"


def test_a_process_without_a_loadable_c_library_is_left_alone(monkeypatch):
    from jaxtricks.backend import host_allocator

    def refuse(name):
        raise OSError("no C library")

    monkeypatch.setattr(host_allocator.ctypes, "CDLL", refuse)
    assert configure_host_allocator() == "not glibc"


def test_a_refusal_is_an_error():
    with pytest.raises(RuntimeError, match="M_MMAP_MAX"):
        configure_host_allocator(libc=FakeGlibc(answer=0))


@pytest.mark.parametrize("keep_bytes", [-1, 2**31, 1.5, True, "1GiB", None])
def test_bad_keep_bytes_is_refused(keep_bytes):
    libc = FakeGlibc()
    with pytest.raises(ValueError, match="keep_bytes must be an int"):
        configure_host_allocator(keep_bytes=keep_bytes, libc=libc)
    assert libc.calls == []


# Allocates and frees a 64 MiB block (above glibc's largest mmap threshold) five times after a
# warm-up, and prints the page faults those five allocations took.
_PROBE = """
import ctypes, resource, sys
from jaxtricks.backend.host_allocator import configure_host_allocator
if sys.argv[1] == "configured":
    print(configure_host_allocator())
else:
    print("default")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    status, faults = result.stdout.split()
    return status, int(faults)


def _huge_pages_always():
    """Whether the kernel backs every anonymous mapping with 2 MiB pages (THP ``always``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.slow
def test_a_freed_large_block_is_reused_without_page_faults():
    # Configured, the heap keeps the freed block and reuses it: almost no page faults.
    status, configured = _faults("configured")
    if status == "not glibc":
        pytest.skip("the C library is not glibc")
    assert status == "set"
    assert configured < 1000, configured
    # glibc's default maps the block afresh each time; with 4 KiB pages the kernel faults in
    # (and zero-fills) 5 * 16,384 pages. With transparent huge pages always on it is 512 times
    # fewer faults, so the contrast is only checked with small pages.
    default_status, default = _faults("default")
    assert default_status == "default"
    if not _huge_pages_always():
        assert default > 5 * (64 << 20) // 4096 // 2, default
