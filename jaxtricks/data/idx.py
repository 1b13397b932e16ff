"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a header followed by the data of one array, all big-endian::

    byte 0, 1    0x00 0x00                      (magic, part 1)
    byte 2       type code                      (magic, part 2; table below)
    byte 3       ndim                           (magic, part 3)
    4 * ndim     d_0, ..., d_{ndim-1}           (unsigned 32-bit sizes)
    rest         prod(d_i) * itemsize bytes     (the values, row-major)

so a well-formed file holds exactly ``4 + 4 * ndim + prod(d_i) * itemsize`` bytes. Type codes:
0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. Files are often
gzipped; the reader recognises gzip by its magic bytes 0x1f 0x8b, never by the file name.

Every departure from that layout raises :class:`IdxFormatError` naming the file and the problem,
so a damaged download can never turn into a silently wrong array. Sizes are bounded: a file
may declare at most ``max_bytes`` bytes of content (default :data:`MAX_IDX_BYTES`, 2 GiB), and
a gzip stream is decompressed only as far as its header declares, so a small ``.gz`` that
inflates to gigabytes (a "gzip bomb") costs the memory of the file its header declares and
of the compressed bytes, no more.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from jaxtricks.files import atomic_write

__all__ = [
    "MAX_IDX_BYTES",
    "IdxFormatError",
    "check_images_labels",
    "decode_idx",
    "encode_idx",
    "read_idx",
    "read_idx_bytes",
    "write_idx",
]

Source = str | os.PathLike | bytes | bytearray | memoryview

MAX_IDX_BYTES = 2**31
"""The largest content (header and data, decompressed) a file may declare, by default: 2 GiB.

MNIST's largest file holds 47,040,016 bytes. A header declaring more is refused before
anything is allocated; the readers take ``max_bytes`` to raise or lower the limit.
"""

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib parses the gzip header and checks CRC-32 and length
# numpy 1.x cannot build arrays of more than 32 dimensions; no real IDX file comes close.
_MAX_NDIM = 32
_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in _TYPE_CODES.items()}


class IdxFormatError(ValueError):
    """Raised when bytes are not a well-formed IDX file; the message names the file and why."""


def _describe(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.fspath(source)


def _check_max_bytes(max_bytes: int) -> int:
    # numpy indexes arrays with signed machine words, and the gzip reader asks zlib for one
    # byte more than the limit, so the limit must stay below the largest such word.
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise ValueError(f"max_bytes must be an int, got {max_bytes!r}")
    if not 0 < max_bytes < sys.maxsize:
        raise ValueError(f"max_bytes must be in [1, sys.maxsize - 1], got {max_bytes}")
    return max_bytes


def _parse_magic(magic: bytes, name: str) -> tuple[np.dtype, int]:
    """The dtype and ``ndim`` the 4 magic bytes declare."""
    if magic[:2] != b"\x00\x00":
        raise IdxFormatError(
            f"{name}: bad magic 0x{magic.hex()}: an IDX file starts with two zero bytes"
        )
    code, ndim = magic[2], magic[3]
    if code not in _TYPE_CODES:
        known = ", ".join(f"0x{c:02X}" for c in _TYPE_CODES)
        raise IdxFormatError(f"{name}: bad magic: unknown type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IdxFormatError(f"{name}: bad magic: zero dimensions")
    if ndim > _MAX_NDIM:
        raise IdxFormatError(f"{name}: absurd number of dimensions {ndim} (at most {_MAX_NDIM})")
    return _TYPE_CODES[code], ndim


def _content_size(shape: tuple[int, ...], dtype: np.dtype, name: str, max_bytes: int) -> int:
    """The bytes a file of ``shape`` holds, header included, if at most ``max_bytes``.

    The sizes are multiplied with the zeros left out: numpy refuses a zero-size array whose
    other sizes multiply past its index range, so such a header is refused here too.
    """
    header_size = 4 + 4 * len(shape)
    span = header_size + math.prod(size or 1 for size in shape) * dtype.itemsize
    if span > max_bytes:
        zeros = " without its zero sizes" if 0 in shape else ""
        raise IdxFormatError(
            f"{name}: the header declares shape {shape} of {dtype.name}, {span} bytes{zeros}, "
            f"over the limit of {max_bytes} (max_bytes)"
        )
    return header_size + math.prod(shape) * dtype.itemsize


class _GzipReader:
    """The decompressed bytes of a gzip stream, read as far as asked and no further.

    Like :func:`gzip.decompress`, it reads concatenated members and ignores zero bytes after
    one, and every member's CRC-32 and length are checked once the member's end is reached.
    """

    def __init__(self, data: bytes, name: str):
        self._name = name
        self._member = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._pending = data  # compressed bytes not yet given to the member's decompressor

    def read(self, size: int) -> list[bytes]:
        """Up to ``size`` bytes, as a list of chunks; fewer only when the stream ends there."""
        chunks = []
        while size > 0:
            if self._member.eof:
                rest = self._member.unused_data.lstrip(b"\x00")
                if not rest:
                    break
                if not rest.startswith(_GZIP_MAGIC):
                    raise IdxFormatError(
                        f"{self._name}: corrupt gzip stream ({len(rest)} bytes after its end "
                        "that are not another gzip member)"
                    )
                self._member, self._pending = zlib.decompressobj(wbits=_GZIP_WBITS), rest
            try:
                chunk = self._member.decompress(self._pending, size)
            except zlib.error as err:
                raise IdxFormatError(f"{self._name}: corrupt gzip stream ({err})") from err
            self._pending = self._member.unconsumed_tail
            if not (chunk or self._pending or self._member.eof):
                raise IdxFormatError(
                    f"{self._name}: corrupt gzip stream (truncated: it ends inside a member)"
                )
            if chunk:
                chunks.append(chunk)
                size -= len(chunk)
        return chunks


def _gunzip(data: bytes, name: str, max_bytes: int) -> bytes:
    """Decompresses a gzip stream, never producing more than one byte past the declared size.

    The header (at most ``4 + 4 * 32`` bytes) is read first; once it declares the content's
    size, the stream is read again from its start up to that size plus one byte, which only
    a stream holding more than declared can produce. Starting again costs the header's
    decompression twice, and lets a one-member stream come out as one chunk, which
    ``b"".join`` returns without copying.
    """
    head = b"".join(_GzipReader(data, name).read(4 + 4 * _MAX_NDIM))
    if len(head) < 4:
        return head  # the stream ended: decode_idx names what is missing
    dtype, ndim = _parse_magic(head[:4], name)
    header_size = 4 + 4 * ndim
    if len(head) < header_size:
        return head
    shape = struct.unpack(f">{ndim}I", head[4:header_size])
    size = _content_size(shape, dtype, name, max_bytes)
    chunks = _GzipReader(data, name).read(size + 1)
    if sum(map(len, chunks)) > size:
        raise IdxFormatError(
            f"{name}: the header declares shape {shape} of {dtype.name}, {size - header_size} "
            "data bytes, but the gzip stream holds more (decompression stopped there)"
        )
    return b"".join(chunks)


def read_idx_bytes(
        source: Source, *, name: str | None = None, max_bytes: int = MAX_IDX_BYTES
) -> bytes:
    """The IDX content of a file or buffer, gunzipped when it starts with the gzip magic.

    Content is what checksums are taken of, so that a raw file and its ``.gz`` check the same.
    A gzip stream is decompressed only up to the size its IDX header declares (plus one byte,
    to tell that it holds more), so its magic and sizes are checked here as by
    :func:`decode_idx`; a stream that ends early is returned as it is, for :func:`decode_idx`
    to say what is missing. Concatenated gzip members and zero padding after the last one are
    read as :func:`gzip.decompress` reads them.

    Args:
        source: a path, or the file's bytes.
        name: how error messages call the source; defaults to the path, or ``<bytes>``.
        max_bytes: the largest content a gzipped file may declare (header included).

    Returns:
        The decompressed bytes (``source`` unchanged when it is not gzipped).

    Raises:
        IdxFormatError: the gzip stream is corrupt, truncated or followed by other data, its
            content has a bad magic, declares more than ``max_bytes`` bytes or holds more
            bytes than it declares.
        ValueError: ``max_bytes`` is not an int in ``[1, sys.maxsize - 1]``.

    Examples:
        >>> import gzip
        >>> header = b"\\x00\\x00\\x08\\x01" + bytes([0, 0, 0, 2])  # uint8, shape (2,)
        >>> read_idx_bytes(gzip.compress(header + bytes([7, 8])))
        b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\x08'
        >>> bomb = gzip.compress(header + bytes(10**6))  # a million zeros after the 2 values
        >>> read_idx_bytes(bomb, name="bomb.gz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        jaxtricks.data.idx.IdxFormatError: bomb.gz: ... but the gzip stream holds more (...)
    """
    max_bytes = _check_max_bytes(max_bytes)
    label = _describe(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = Path(source).read_bytes()
    if not data.startswith(_GZIP_MAGIC):
        return data
    return _gunzip(data, label, max_bytes)


def decode_idx(data: bytes, *, name: str = "<bytes>", max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Parses uncompressed IDX bytes into an array, checking the header against the data.

    The result has shape ``(d_0, ..., d_{ndim-1})`` and the native-endian dtype of the type code.

    Args:
        data: the whole IDX content (see :func:`read_idx_bytes` for gzipped input).
        name: how error messages call the source.
        max_bytes: the largest content the header may declare: ``4 + 4 * ndim`` plus the
            product of the nonzero sizes times the item size (zero sizes are left out so that
            a zero-size array cannot declare sizes numpy refuses).

    Returns:
        A new writable ``np.ndarray``.

    Raises:
        IdxFormatError: bad magic, unknown type code, no or too many dimensions, truncated
            header, sizes over ``max_bytes``, fewer data bytes than the header declares, or
            bytes after the data.
        ValueError: ``max_bytes`` is not an int in ``[1, sys.maxsize - 1]``.

    Examples:
        >>> decode_idx(b"\\x00\\x00\\x08\\x02" + bytes([0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
    """
    max_bytes = _check_max_bytes(max_bytes)
    if len(data) < 4:
        raise IdxFormatError(
            f"{name}: truncated header: {len(data)} bytes, an IDX file starts with 4 magic bytes"
        )
    dtype, ndim = _parse_magic(data[:4], name)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header_size} header bytes, "
            f"the file holds {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = _content_size(shape, dtype, name, max_bytes) - header_size
    found = len(data) - header_size
    if found < expected:
        raise IdxFormatError(
            f"{name}: truncated data: the header declares shape {shape} of {dtype.name}, "
            f"{expected} bytes, but only {found} follow the header"
        )
    if found > expected:
        raise IdxFormatError(
            f"{name}: {found - expected} trailing bytes after the {expected} data bytes "
            f"declared by the header (shape {shape} of {dtype.name})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(
        source: Source, *, name: str | None = None, max_bytes: int = MAX_IDX_BYTES
) -> np.ndarray:
    """Reads an IDX array from a path or bytes, raw or gzipped.

    ``read_idx(s) == decode_idx(read_idx_bytes(s))``.

    Args:
        source: a path, or the file's bytes.
        name: how error messages call the source; defaults to the path, or ``<bytes>``.
        max_bytes: the largest content the file may declare, header included (decompressed).

    Returns:
        The array, with the header's shape and native-endian dtype.

    Raises:
        IdxFormatError: the content is not a well-formed IDX file of at most ``max_bytes``
            bytes (see :func:`decode_idx`) or the gzip stream is corrupt or holds more than
            its header declares (see :func:`read_idx_bytes`).
        ValueError: ``max_bytes`` is not an int in ``[1, sys.maxsize - 1]``.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "labels-idx1-ubyte.gz")
        ...     write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
        ...     read_idx(path)
        array([3, 1, 4], dtype=uint8)
    """
    label = _describe(source, name)
    content = read_idx_bytes(source, name=label, max_bytes=max_bytes)
    return decode_idx(content, name=label, max_bytes=max_bytes)


def encode_idx(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes of an array (header then big-endian row-major data).

    Args:
        array: an array of uint8, int8, int16, int32, float32 or float64 with at least one
            dimension, each below 2**32.

    Returns:
        The bytes; :func:`decode_idx` turns them back into an equal array.

    Raises:
        ValueError: the dtype has no IDX type code or the shape cannot be stored.

    Examples:
        >>> import numpy as np
        >>> encode_idx(np.array([1, 2], dtype=np.int16)).hex(" ", 4)  # magic, size, data
        '00000b01 00000002 00010002'
    """
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        names = ", ".join(dtype.name for dtype in _TYPE_CODES.values())
        raise ValueError(f"array dtype must be one of {names}, got {array.dtype}")
    if not 1 <= array.ndim <= _MAX_NDIM:
        raise ValueError(f"array must have 1 to {_MAX_NDIM} dimensions, got shape {array.shape}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"array dimensions must be below 2**32, got shape {array.shape}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    return header + array.astype(_TYPE_CODES[code], copy=False).tobytes(order="C")


def write_idx(
        path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Writes an array as an IDX file, raw or gzipped, atomically (see files.atomic_write).

    Args:
        path: the destination.
        array: see :func:`encode_idx` for the dtypes and shapes that can be stored.
        compress: gzip the file; None gzips exactly when ``path`` ends in ``.gz``.

    Returns:
        None.

    Raises:
        ValueError: the array cannot be stored as IDX.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "x-idx2-ubyte")
        ...     write_idx(path, np.zeros((2, 3), dtype=np.uint8))
        ...     os.path.getsize(path)  # 4 magic + 2 * 4 sizes + 6 values
        18
    """
    data = encode_idx(array)
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        # mtime=0 makes the bytes a function of the array alone.
        data = gzip.compress(data, mtime=0)
    atomic_write(path, data)


def check_images_labels(
        images: np.ndarray,
        labels: np.ndarray,
        *,
        images_name: str = "images",
        labels_name: str = "labels",
        image_shape: tuple[int, ...] = (28, 28),
        num_classes: int = 10,
) -> None:
    """Checks that images and labels form one labelled set: ``(N, *image_shape)``, ``(N,)``.

    Both must be uint8, ``N >= 1`` and every label ``< num_classes``.

    Args:
        images: the images array.
        labels: the labels array.
        images_name: how the error message calls the images (their file).
        labels_name: how the error message calls the labels (their file).
        image_shape: the shape of one image.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        None.

    Raises:
        IdxFormatError: naming both files, the shapes or counts, or the bad labels.

    Examples:
        >>> import numpy as np
        >>> check_images_labels(np.zeros((2, 28, 28), np.uint8), np.array([0, 9], np.uint8))
        >>> check_images_labels(np.zeros((2, 28, 28), np.uint8), np.array([7], np.uint8))
        Traceback (most recent call last):
        ...
        jaxtricks.data.idx.IdxFormatError: images (2 images) and labels (1 labels) differ in count
    """
    pair = f"{images_name} and {labels_name}"
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"{pair} must be uint8, got {images.dtype} images and {labels.dtype} labels"
        )
    if images.ndim != 1 + len(image_shape) or images.shape[1:] != tuple(image_shape):
        raise IdxFormatError(
            f"{images_name}: images must have shape (N, {', '.join(map(str, image_shape))}), "
            f"got {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{labels_name}: labels must have shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{images_name} ({len(images)} images) and {labels_name} ({len(labels)} labels) "
            "differ in count"
        )
    if len(labels) == 0:
        raise IdxFormatError(f"{pair} hold no examples")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise IdxFormatError(
            f"{labels_name}: {bad.size} labels are not in [0, {num_classes}), "
            f"e.g. label {labels[bad[0]]} at index {bad[0]}"
        )
