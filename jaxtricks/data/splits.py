"""MNIST and Fashion-MNIST as scaled float splits, ready for training: train, validation, test.

The validation images are the last ones of the published training split and the training
images its first ones, so the two never overlap and the test split stays untouched. Scaling
(lesson L1) is fitted on the training images only and applied to all three.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from jaxtricks.data.datasets import load
from jaxtricks.tricks import preprocessing

__all__ = ["DATASETS", "SCALINGS", "Splits", "load_splits"]

DATASETS = ("mnist", "fashion_mnist")
SCALINGS = ("raw", "unit", "standardize")


class Splits(NamedTuple):
    """Float32 images ``(N, 28, 28, 1)`` and int32 labels; validation may be empty."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    source: str = ""  # where the files were found (see jaxtricks.data.load)


def _check_count(name: str, value: Any, low: int, high: int) -> int:
    integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not integer or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def load_splits(
        dataset: str = "mnist",
        *,
        train_examples: int | None = None,
        validation_examples: int = 0,
        test_examples: int | None = None,
        scaling: str = "standardize",
        data_dir: str | os.PathLike | None = None,
) -> Splits:
    """Real MNIST or Fashion-MNIST subsets, scaled as the lesson's L1 discusses.

    Training images are the first ``train_examples`` of the training split, validation images
    its last ``validation_examples`` (disjoint from them), test images the first
    ``test_examples`` of the test split. ``scaling``: ``"raw"`` keeps 0–255, ``"unit"`` divides
    by 255, ``"standardize"`` maps ``x → (x/255 − μ)/σ`` with the mean and standard deviation
    of the training subset's pixels.

    Args:
        dataset: ``"mnist"`` or ``"fashion_mnist"``.
        train_examples: training images, in [1, N − validation_examples]; None: all left.
        validation_examples: held-out training images, in [0, N − 1].
        test_examples: test images, in [1, M]; None: all.
        scaling: ``"raw"``, ``"unit"`` or ``"standardize"``.
        data_dir: where to look first for the IDX files (see :func:`jaxtricks.data.load`).

    Returns:
        A :class:`Splits`.

    Raises:
        ValueError: an argument is out of range (the message names it).
        DatasetNotFoundError: the files are nowhere to be found or fetched.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    raw = load(dataset, data_dir)
    total, total_test = raw.train_images.shape[0], raw.test_images.shape[0]
    validation_examples = _check_count("validation_examples", validation_examples, 0, total - 1)
    available = total - validation_examples
    train_examples = available if train_examples is None else train_examples
    train_examples = _check_count("train_examples", train_examples, 1, available)
    test_examples = total_test if test_examples is None else test_examples
    test_examples = _check_count("test_examples", test_examples, 1, total_test)

    images = raw.train_images[..., None]
    splits = [
        images[:train_examples],
        raw.test_images[:test_examples, ..., None],
        images[total - validation_examples:],
    ]
    if scaling == "raw":
        splits = [s.astype(np.float32) for s in splits]
    else:
        splits = [preprocessing.scale_to_unit(s) for s in splits]
    if scaling == "standardize":
        stats = preprocessing.fit_standardization(splits[0])
        splits = [preprocessing.standardize(s, stats) for s in splits]
    labels = raw.train_labels.astype(np.int32)
    return Splits(
        np.asarray(splits[0], np.float32),
        labels[:train_examples],
        np.asarray(splits[1], np.float32),
        raw.test_labels[:test_examples].astype(np.int32),
        np.asarray(splits[2], np.float32),
        labels[total - validation_examples:],
        raw.source,
    )
