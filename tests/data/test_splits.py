"""Tests for jaxtricks.data.splits: real MNIST subsets, disjoint and scaled as asked."""

import numpy as np
import pytest

from jaxtricks.data import load
from jaxtricks.data.splits import SCALINGS, load_splits


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.slow
def test_load_splits_gives_disjoint_scaled_real_subsets(scaling):
    data = load_splits("mnist", train_examples=500, test_examples=200,
                            validation_examples=300, scaling=scaling)
    assert data.train_x.shape == (500, 28, 28, 1) and data.val_x.shape == (300, 28, 28, 1)
    assert data.test_x.shape == (200, 28, 28, 1)
    for x in (data.train_x, data.test_x, data.val_x):
        assert x.dtype == np.float32 and np.isfinite(x).all()
    for y in (data.train_y, data.test_y, data.val_y):
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() <= 9
    if scaling == "raw":
        assert data.train_x.max() == 255.0 and data.train_x.min() == 0.0
    elif scaling == "unit":
        assert data.train_x.max() == 1.0 and data.train_x.min() == 0.0
    else:
        assert abs(float(data.train_x.mean())) < 1e-3
        assert float(data.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    raw = load_splits("mnist", validation_examples=300, scaling="raw")
    assert raw.train_x.shape[0] == 60000 - 300
    assert raw.source
    # The validation images are the training split's last ones, the training images its first.
    published = load("mnist")
    np.testing.assert_array_equal(raw.val_x[..., 0], published.train_images[-300:])
    np.testing.assert_array_equal(raw.val_y, published.train_labels[-300:])
    np.testing.assert_array_equal(raw.train_x[..., 0], published.train_images[:-300])
    np.testing.assert_array_equal(raw.test_x[..., 0], published.test_images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "cifar"}, "dataset must be one of"),
        ({"scaling": "minmax"}, "scaling must be one of"),
        ({"train_examples": 0}, "train_examples must be an integer in"),
        ({"train_examples": 59_001, "validation_examples": 1000}, "train_examples"),
        ({"test_examples": 10_001}, "test_examples must be an integer in"),
        ({"validation_examples": -1}, "validation_examples"),
    ],
)
def test_load_splits_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_splits(**kwargs)
