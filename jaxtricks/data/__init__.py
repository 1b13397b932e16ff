"""Data layer: IDX files, the MNIST and Fashion-MNIST datasets as numpy uint8 arrays, and
their scaled train/validation/test splits."""

from jaxtricks.data.datasets import (
    Dataset,
    DatasetNotFoundError,
    fashion_mnist,
    load,
    mnist,
)
from jaxtricks.data.idx import (
    IdxFormatError,
    check_images_labels,
    decode_idx,
    encode_idx,
    read_idx,
    read_idx_bytes,
    write_idx,
)
from jaxtricks.data.splits import Splits, load_splits

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "IdxFormatError",
    "Splits",
    "check_images_labels",
    "decode_idx",
    "encode_idx",
    "fashion_mnist",
    "load",
    "load_splits",
    "mnist",
    "read_idx",
    "read_idx_bytes",
    "write_idx",
]
