"""Data layer: IDX files and the MNIST and Fashion-MNIST datasets as numpy uint8 arrays."""

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

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "IdxFormatError",
    "check_images_labels",
    "decode_idx",
    "encode_idx",
    "fashion_mnist",
    "load",
    "mnist",
    "read_idx",
    "read_idx_bytes",
    "write_idx",
]
