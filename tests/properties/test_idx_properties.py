"""Fuzzing the IDX reader: every input reads as the array it encodes or raises IdxFormatError.

Inputs are well-formed files (random arrays, raw, gzipped, split into gzip members, padded
with zeros) and what can go wrong with them: truncations, byte changes, insertions and
deletions before or after compression, headers with extreme sizes and type codes, garbage
gzip streams and gzip bombs (a valid file followed by megabytes of repeated bytes). For each,
``read_idx`` must return an array whose encoding is exactly the content the input holds, or
raise :class:`IdxFormatError` whose message starts with the name it was given; any other
exception fails the test. Headers are judged against the format's own rules, written out
here, and gzip streams against :func:`gzip.decompress`.

The number of examples per test comes from the Hypothesis profile (``default`` 10, ``ci``
100); ``JAXTRICKS_IDX_FUZZ_EXAMPLES=N`` sets it to N, for a longer fuzzing campaign.
"""

import gzip
import math
import os
import struct
import tracemalloc
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jaxtricks.data.idx import MAX_IDX_BYTES, IdxFormatError, encode_idx, read_idx, read_idx_bytes

NAME = "fuzz/input-idx"
# The format's type codes and item sizes, as the IDX description lists them.
ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
DTYPES = [np.dtype(d) for d in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64)]
EXTREME_SIZES = [0, 1, 2, 3, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1]
BOMB_EXCESS = [1, 2, 1000, 2**16, 2**20, 2**22]

# How a read ended, by words of its message (counted by --hypothesis-show-statistics).
OUTCOMES = [
    "truncated header",
    "bad magic",
    "absurd number of dimensions",
    "over the limit",
    "truncated data",
    "trailing bytes",
    "the gzip stream holds more",
    "corrupt gzip stream",
]


def fuzz_settings(test):
    """The profile's settings, or ``JAXTRICKS_IDX_FUZZ_EXAMPLES`` examples where it is set."""
    examples = os.environ.get("JAXTRICKS_IDX_FUZZ_EXAMPLES")
    return settings(max_examples=int(examples))(test) if examples else test


def _read(data, **kwargs):
    """The array ``data`` holds, or the IdxFormatError naming it; other exceptions escape."""
    try:
        array = read_idx(data, name=NAME, **kwargs)
    except IdxFormatError as err:
        assert str(err).startswith(f"{NAME}: "), err
        kinds = [kind for kind in OUTCOMES if kind in str(err)]
        assert kinds, f"an IdxFormatError of no known kind: {err}"
        event(f"IdxFormatError: {kinds[0]}")
        return err
    event("read")
    return array


def _gunzipped(data):
    """What ``gzip.decompress`` makes of ``data``, or None where it refuses it."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


def _holds(result, content):
    """Whether a read result is an array whose IDX encoding is ``content``."""
    return isinstance(result, np.ndarray) and encode_idx(result) == content


arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
)


@st.composite
def packed(draw, content):
    """``content`` raw, gzipped, or gzipped in several members; gzip may be zero-padded."""
    kind = draw(st.sampled_from(["raw", "gzip", "members"]))
    if kind == "raw":
        return content
    level = draw(st.integers(0, 9))
    if kind == "gzip":
        data = gzip.compress(content, compresslevel=level, mtime=0)
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=4)))
        parts = [content[a:b] for a, b in zip([0, *cuts], [*cuts, len(content)], strict=True)]
        data = b"".join(gzip.compress(part, compresslevel=level, mtime=0) for part in parts)
    return data + bytes(draw(st.sampled_from([0, 0, 1, 5, 64])))


@st.composite
def files(draw):
    """A random array, its IDX content and a packing of that content."""
    array = draw(arrays)
    content = encode_idx(array)
    return array, content, draw(packed(content))


@fuzz_settings
@given(files())
def test_well_formed_files_read_back(file):
    array, content, data = file
    result = _read(data)
    assert _holds(result, content), result
    assert result.dtype == array.dtype and result.shape == array.shape
    assert read_idx_bytes(data) == content


@fuzz_settings
@given(files(), st.data())
def test_truncated_files_raise(file, data):
    _, content, packed_data = file
    cut = data.draw(st.integers(0, len(packed_data) - 1))
    result = _read(packed_data[:cut])
    if packed_data[:2] == b"\x1f\x8b":
        # Cutting only zero padding or empty trailing members leaves the same content.
        assert isinstance(result, IdxFormatError) or _holds(result, content), result
    else:
        assert isinstance(result, IdxFormatError) and "truncated" in str(result), result


@st.composite
def mutations(draw, data):
    """``data`` with one byte changed, bytes inserted, a range deleted, or bytes appended."""
    how = draw(st.sampled_from(["change", "insert", "delete", "append"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "change" and data:
        value = (data[at] + draw(st.integers(1, 255))) % 256
        return data[:at] + bytes([value]) + data[at + 1 :]
    if how == "delete" and data:
        return data[:at] + data[at + draw(st.integers(1, 8)) :]
    extra = draw(st.binary(min_size=1, max_size=16))
    return data + extra if how == "append" else data[:at] + extra + data[at:]


@fuzz_settings
@given(files(), st.booleans(), st.data())
def test_mutated_files_read_as_what_they_hold_or_raise(file, before_packing, data):
    _, content, packed_data = file
    if before_packing:
        packed_data = data.draw(packed(data.draw(mutations(content))))
    else:
        packed_data = data.draw(mutations(packed_data))
    gzipped = packed_data[:2] == b"\x1f\x8b"
    content = _gunzipped(packed_data) if gzipped else packed_data
    result = _read(packed_data)
    if content is None:
        assert isinstance(result, IdxFormatError), "gzip.decompress refuses it, read_idx not"
    else:
        assert isinstance(result, IdxFormatError) or _holds(result, content), result
    if content is not None and len(content) >= 4 and content[:2] != b"\x00\x00" and not (
        gzipped and "corrupt gzip" in str(result)  # zlib checks more than gzip.decompress
    ):
        assert isinstance(result, IdxFormatError) and "bad magic" in str(result), result


@st.composite
def headers(draw):
    """An IDX header of any type code, 0 to 40 sizes from an extreme menu, and some data."""
    code = draw(st.one_of(st.sampled_from(list(ITEMSIZE)), st.integers(0, 255)))
    ndim = draw(st.one_of(st.integers(1, 4), st.integers(0, 40)))
    shape = draw(
        st.lists(
            st.sampled_from(EXTREME_SIZES) | st.integers(0, 8), min_size=ndim, max_size=ndim
        )
    )
    declared = math.prod(shape) * ITEMSIZE.get(code, 1)
    lengths = st.integers(0, 64)
    if declared <= 4096:
        lengths |= st.just(declared)
    length = draw(lengths)
    values = draw(st.binary(min_size=length, max_size=length))
    max_bytes = draw(st.one_of(st.just(MAX_IDX_BYTES), st.integers(1, 4096)))
    header = struct.pack(f">BBBB{ndim}I", 0, 0, code, ndim, *shape)
    return code, tuple(shape), header + values, max_bytes


@fuzz_settings
@given(headers(), st.booleans())
def test_headers_are_judged_by_the_format(header, compress):
    code, shape, content, max_bytes = header
    data = gzip.compress(content, mtime=0) if compress else content
    result = _read(data, max_bytes=max_bytes)
    itemsize = ITEMSIZE.get(code)
    span = 4 + 4 * len(shape) + math.prod(size or 1 for size in shape) * (itemsize or 1)
    well_formed = (
        itemsize is not None
        and 1 <= len(shape) <= 32
        and span <= max_bytes
        and len(content) == 4 + 4 * len(shape) + math.prod(shape) * itemsize
    )
    if well_formed:
        assert _holds(result, content) and result.shape == shape, result
    else:
        assert isinstance(result, IdxFormatError), result


@fuzz_settings
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda tail: b"\x1f\x8b" + tail),
        st.binary(max_size=300).map(lambda tail: b"\x1f\x8b\x08\x00" + bytes(6) + tail),
    )
)
def test_garbage_raises_or_reads_as_what_it_holds(data):
    content = _gunzipped(data) if data[:2] == b"\x1f\x8b" else data
    result = _read(data)
    if content is None:
        assert isinstance(result, IdxFormatError), "gzip.decompress refuses it, read_idx not"
    else:
        assert isinstance(result, IdxFormatError) or _holds(result, content), result


@st.composite
def bombs(draw):
    """A gzip stream of a valid file (or a header declaring too much) and many more bytes."""
    content = encode_idx(draw(arrays))
    if draw(st.booleans()):
        content = struct.pack(">BBBBIII", 0, 0, 0x0E, 3, 2**31, 2**31, draw(st.integers(1, 9)))
    excess = bytes([draw(st.integers(0, 255))]) * draw(st.sampled_from(BOMB_EXCESS))
    if draw(st.booleans()):
        compressor = zlib.compressobj(draw(st.integers(1, 9)), zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = compressor.compress(content) + compressor.compress(excess) + compressor.flush()
    else:
        data = gzip.compress(content, mtime=0) + gzip.compress(excess, compresslevel=1, mtime=0)
    return content, data


@fuzz_settings
@given(bombs())
def test_bombs_are_refused_within_the_declared_size(bomb):
    content, data = bomb
    tracemalloc.start()
    try:
        result = _read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(result, IdxFormatError), result
    assert "the gzip stream holds more" in str(result) or "over the limit" in str(result), result
    # Compressed input (and zlib's copies of its unread part), the content and one byte more
    # (twice: zlib builds its output in blocks), and a fixed allowance for zlib's own state.
    bound = 2 * len(data) + 2 * (len(content) + 1) + 2**18
    assert peak <= bound, f"{peak} bytes traced for a {len(content)}-byte file, bound {bound}"
