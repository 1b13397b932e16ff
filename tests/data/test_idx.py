"""IDX reading and writing: round trips, the exact byte layout, and every malformed input."""

import gzip
import struct
import sys
import tracemalloc
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtricks.data.idx import (
    IdxFormatError,
    check_images_labels,
    decode_idx,
    encode_idx,
    read_idx,
    read_idx_bytes,
    write_idx,
)

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(5,), (3, 4), (2, 28, 28), (2, 1, 3, 2)]


def _header(code, shape):
    return struct.pack(f">BBBB{len(shape)}I", 0, 0, code, len(shape), *shape)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_file(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=shape) * 100).astype(dtype)
    path = tmp_path / "array-idx"
    write_idx(path, array, compress=compress)
    assert path.read_bytes().startswith(b"\x1f\x8b") == compress
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    assert loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)
    loaded[...] = 0  # a fresh writable array, not a view of the file's bytes
    np.testing.assert_array_equal(read_idx(path.read_bytes()), array)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_round_trip_bytes(array):
    decoded = decode_idx(encode_idx(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    "dtype, code, fmt",
    [
        (np.uint8, 0x08, "B"),
        (np.int8, 0x09, "b"),
        (np.int16, 0x0B, "h"),
        (np.int32, 0x0C, "i"),
        (np.float32, 0x0D, "f"),
        (np.float64, 0x0E, "d"),
    ],
)
def test_layout_is_big_endian_row_major(dtype, code, fmt):
    values = [[1, 2, 3], [4, 5, 100]] if dtype == np.uint8 else [[1, -2, 3], [4, -5, 100]]
    array = np.array(values, dtype=dtype)
    flat = [v for row in values for v in row]
    expected = _header(code, (2, 3)) + struct.pack(f">6{fmt}", *flat)
    assert encode_idx(array) == expected
    decoded = decode_idx(expected)
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, array)


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(encode_idx(array))
    gz_named_raw = tmp_path / "gz-idx2-ubyte"
    gz_named_raw.write_bytes(gzip.compress(encode_idx(array)))
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)
    assert read_idx_bytes(gz_named_raw) == encode_idx(array)


def test_compress_none_follows_suffix(tmp_path):
    array = np.ones(3, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a").read_bytes() == encode_idx(array)


GOOD = _header(0x08, (2, 3)) + bytes(range(6))
MALFORMED = {
    "zero_length": (b"", "truncated header"),
    "short_magic": (b"\x00\x00\x08", "truncated header"),
    "bad_magic": (b"\x01\x02" + GOOD[2:], "bad magic"),
    "unknown_type": (b"\x00\x00\x07\x01" + GOOD[4:], "unknown type code 0x07"),
    "zero_dims": (b"\x00\x00\x08\x00", "zero dimensions"),
    "absurd_ndim": (b"\x00\x00\x08\xc8" + bytes(4 * 200), "absurd number of dimensions 200"),
    "truncated_header": (GOOD[:9], "truncated header"),
    "truncated_data": (GOOD[:-1], "truncated data"),
    "absurd_sizes": (_header(0x08, (2**32 - 1, 2**32 - 1)) + bytes(8), "over the limit"),
    # numpy refuses a zero-size array whose other sizes multiply past its index range.
    "zero_size_absurd": (bytes.fromhex("0000080300000000ffffffffffffffff"), "over the limit"),
    "trailing_bytes": (GOOD + b"\x00\x00", "2 trailing bytes"),
    "corrupt_gzip": (gzip.compress(GOOD)[:12] + b"garbage" * 3, "corrupt gzip"),
    "truncated_gzip": (gzip.compress(GOOD)[:-6], "corrupt gzip"),
    "gzip_of_bad_idx": (gzip.compress(GOOD[:-1]), "truncated data"),
    "gzip_more_than_declared": (gzip.compress(GOOD + b"\x00"), "the gzip stream holds more"),
    "gzip_member_more_than_declared": (
        gzip.compress(GOOD) + gzip.compress(b"\x00"), "the gzip stream holds more"
    ),
    "gzip_trailing_garbage": (gzip.compress(GOOD) + b"garbage", "corrupt gzip"),
    "gzip_bad_magic": (gzip.compress(b"\x01" + GOOD[1:]), "bad magic"),
    "gzip_over_the_limit": (gzip.compress(_header(0x0E, (2**31, 2, 1))), "over the limit"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_raises_naming_file_and_problem(tmp_path, case):
    data, problem = MALFORMED[case]
    path = tmp_path / f"{case}-idx2-ubyte"
    path.write_bytes(data)
    with pytest.raises(IdxFormatError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_bytes_use_given_name():
    with pytest.raises(IdxFormatError, match=r"^mirror/x\.gz: truncated data"):
        read_idx(GOOD[:-1], name="mirror/x.gz")


def _bomb(prefix, excess, *, members):
    """A gzip stream of ``prefix`` then ``excess`` zero bytes, as one member or 1 MiB members."""
    if members == "many":
        zeros = gzip.compress(bytes(2**20), mtime=0)
        assert excess % 2**20 == 0
        return gzip.compress(prefix, mtime=0) + zeros * (excess // 2**20)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(bytes(2**20)) for _ in range(excess // 2**20)]
    return b"".join(parts) + compressor.flush()


def _peak_bytes(function, *args, **kwargs):
    """The peak of Python's traced memory while ``function`` runs (it must raise)."""
    tracemalloc.start()
    try:
        with pytest.raises(IdxFormatError) as info:
            function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1], info.value
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("members", ["one", "many"])
def test_gzip_bomb_stops_at_the_declared_size(members):
    # 64 MiB of zeros after a well-formed 18-byte file, in a 64 KiB (or 70 KiB) stream.
    bomb = _bomb(GOOD, 64 * 2**20, members=members)
    assert len(bomb) < 2**17
    peak, error = _peak_bytes(read_idx_bytes, bomb, name="data/bomb.gz")
    assert str(error).startswith("data/bomb.gz: ") and "the gzip stream holds more" in str(error)
    assert peak < 2**20, f"{peak} bytes traced"


def test_gzip_header_over_the_limit_is_refused_before_decompressing():
    declared = _header(0x08, (2**32 - 1,) * 3)
    peak, error = _peak_bytes(read_idx, _bomb(declared, 64 * 2**20, members="one"))
    assert "over the limit" in str(error)
    assert peak < 2**20, f"{peak} bytes traced"


def test_max_bytes_bounds_what_a_well_formed_file_may_declare():
    array = np.arange(100, dtype=np.uint8)
    data = gzip.compress(encode_idx(array))
    np.testing.assert_array_equal(read_idx(data, max_bytes=108), array)
    with pytest.raises(IdxFormatError, match="108 bytes, over the limit of 107"):
        read_idx(data, max_bytes=107)
    with pytest.raises(IdxFormatError, match="108 bytes, over the limit of 107"):
        decode_idx(encode_idx(array), max_bytes=107)


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True, "2", sys.maxsize])
def test_max_bytes_is_validated(max_bytes):
    with pytest.raises(ValueError, match="max_bytes"):
        read_idx(GOOD, max_bytes=max_bytes)


def test_multi_member_gzip_and_zero_padding_read_as_gzip_decompress_does():
    data = gzip.compress(GOOD[:5]) + gzip.compress(b"") + gzip.compress(GOOD[5:]) + bytes(7)
    assert gzip.decompress(data) == GOOD
    assert read_idx_bytes(data) == GOOD


def test_good_reference_bytes_decode():
    # The malformed cases above are one defect away from this file.
    np.testing.assert_array_equal(read_idx(GOOD), np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros(3, dtype=np.int64), "dtype"),
        (np.zeros(3, dtype=bool), "dtype"),
        (np.zeros(3, dtype=np.uint16), "dtype"),
        (np.uint8(3), "dimensions"),
    ],
)
def test_encode_refuses_what_idx_cannot_hold(array, message):
    with pytest.raises(ValueError, match=message):
        encode_idx(array)


def _images(n):
    return np.zeros((n, 28, 28), dtype=np.uint8)


def test_check_images_labels_accepts_a_labelled_set():
    check_images_labels(_images(3), np.array([0, 5, 9], dtype=np.uint8))


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (_images(3), np.zeros(2, np.uint8), r"imgs.idx \(3 images\) and lbls.idx \(2 labels\)"),
        (_images(2), np.array([3, 10], np.uint8), r"lbls.idx: 1 labels .* label 10 at index 1"),
        (np.zeros((2, 28, 27), np.uint8), np.zeros(2, np.uint8), r"imgs.idx: .*\(2, 28, 27\)"),
        (_images(2), np.zeros((2, 1), np.uint8), r"lbls.idx: labels must have shape \(N,\)"),
        (_images(2).astype(np.float32), np.zeros(2, np.uint8), "must be uint8"),
        (_images(0), np.zeros(0, np.uint8), "no examples"),
    ],
)
def test_check_images_labels_refuses(images, labels, message):
    with pytest.raises(IdxFormatError, match=message):
        check_images_labels(images, labels, images_name="imgs.idx", labels_name="lbls.idx")
