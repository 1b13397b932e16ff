"""Tests for jaxtricks.tricks.preprocessing: ranges, train-only statistics, dtypes, validation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks import preprocessing as pp


def _mnist_like(seed, n=64):
    """uint8 images shaped like MNIST, with an always-black border as in the real digits."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, :2, :] = 0
    images[:, :, :2] = 0
    images[0, 10, 10], images[1, 10, 10] = 0, 255
    return images


@pytest.mark.parametrize("family", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_scale_to_unit_puts_uint8_images_in_unit_interval(family):
    images = _mnist_like(0)
    scaled = pp.scale_to_unit(family(images))
    assert isinstance(scaled, np.ndarray if family is np.asarray else jax.Array)
    assert scaled.shape == images.shape
    assert scaled.dtype == np.float32
    scaled = np.asarray(scaled)
    assert scaled.min() == 0.0
    assert scaled.max() == 1.0
    np.testing.assert_allclose(scaled, images.astype(np.float64) / 255.0, rtol=1e-6)


def test_scale_to_unit_with_other_max_value():
    x = jnp.array([0, 512, 1023], dtype=jnp.int32)
    np.testing.assert_allclose(pp.scale_to_unit(x, max_value=1023.0), [0.0, 512 / 1023, 1.0])


@pytest.mark.parametrize("family", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_global_standardization_gives_mean_zero_std_one_on_train(family):
    train = np.random.default_rng(1).normal(30.0, 50.0, size=(500, 12)).astype(np.float32)
    stats = pp.fit_standardization(family(train))
    assert stats.mean.shape == () and stats.std.shape == ()
    np.testing.assert_allclose(stats.mean, train.astype(np.float64).mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.std, train.astype(np.float64).std(), rtol=1e-5)
    standardized = pp.standardize(family(train), stats)
    assert isinstance(standardized, np.ndarray if family is np.asarray else jax.Array)
    assert standardized.dtype == np.float32
    standardized = np.asarray(standardized, dtype=np.float64)
    np.testing.assert_allclose(standardized.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(), 1.0, rtol=1e-5)


def test_standardization_statistics_come_from_train_only():
    rng = np.random.default_rng(2)
    train = rng.normal(0.0, 2.0, size=(400, 5)).astype(np.float32)
    test = train + np.float32(10.0)
    stats = pp.fit_standardization(jnp.asarray(train))
    standardized = np.asarray(pp.standardize(jnp.asarray(test), stats), dtype=np.float64)
    # The test split is moved by train's map, so it is not re-centred on its own mean.
    expected_mean = (test.astype(np.float64).mean() - train.mean()) / train.std()
    assert standardized.mean() > 4.0
    np.testing.assert_allclose(standardized.mean(), expected_mean, rtol=1e-4)
    np.testing.assert_allclose(
        standardized, (test - float(stats.mean)) / float(stats.std), rtol=1e-5, atol=1e-5
    )


def test_min_max_statistics_come_from_train_only_and_test_may_leave_the_range():
    train = np.linspace(-3.0, 5.0, 81, dtype=np.float32)
    test = np.array([-7.0, -3.0, 1.0, 5.0, 9.0], dtype=np.float32)
    stats = pp.fit_min_max(train, feature_range=(-1.0, 1.0))
    scaled_train = pp.apply_min_max(train, stats)
    assert scaled_train.min() == -1.0 and scaled_train.max() == 1.0
    np.testing.assert_allclose(pp.apply_min_max(test, stats), [-2.0, -1.0, 0.0, 1.0, 2.0])


@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 1.0), (2.0, 7.5)])
def test_min_max_matches_numpy_and_round_trips(feature_range):
    train = _mnist_like(3)
    test = _mnist_like(4, n=16)
    low, high = feature_range
    stats = pp.fit_min_max(jnp.asarray(train), feature_range=feature_range)
    scaled = np.asarray(pp.apply_min_max(jnp.asarray(test), stats), dtype=np.float64)
    data_min, data_max = train.min().astype(np.float64), train.max().astype(np.float64)
    expected = low + (test - data_min) / (data_max - data_min) * (high - low)
    np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)
    restored = (scaled - low) / (high - low) * (data_max - data_min) + data_min
    np.testing.assert_allclose(restored, test, atol=1e-4)


def test_per_feature_standardization_with_constant_pixels():
    train = _mnist_like(5)
    stats = pp.fit_standardization(jnp.asarray(train), per_feature=True, eps=1e-3)
    assert stats.mean.shape == stats.std.shape == (28, 28)
    standardized = np.asarray(pp.standardize(jnp.asarray(train), stats), dtype=np.float64)
    assert np.all(np.isfinite(standardized))
    # The black border is constant: std floored at eps, and it standardizes to exactly 0.
    np.testing.assert_array_equal(np.asarray(stats.std)[:2, :], 1e-3 * np.ones((2, 28), np.float32))
    np.testing.assert_array_equal(standardized[:, :2, :], 0.0)
    np.testing.assert_array_equal(standardized[:, :, :2], 0.0)
    inner = standardized[:, 2:, 2:]
    np.testing.assert_allclose(inner.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(inner.std(axis=0), 1.0, rtol=1e-4)
    train64 = train.astype(np.float64)
    np.testing.assert_allclose(stats.mean, train64.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        stats.std, np.maximum(train64.std(axis=0), 1e-3), rtol=1e-5, atol=1e-5
    )


def test_per_feature_min_max_with_constant_pixels():
    train = _mnist_like(6)
    stats = pp.fit_min_max(train, per_feature=True)
    assert stats.data_min.shape == stats.data_max.shape == (28, 28)
    scaled = pp.apply_min_max(train, stats)
    assert isinstance(scaled, np.ndarray)
    assert np.all(np.isfinite(scaled))
    np.testing.assert_array_equal(scaled[:, :2, :], 0.0)
    inner = scaled[:, 2:, 2:]
    np.testing.assert_array_equal(inner.min(axis=0), 0.0)
    np.testing.assert_array_equal(inner.max(axis=0), 1.0)


def test_constant_training_data_does_not_divide_by_zero():
    train = np.full((10, 3), 4.0, dtype=np.float32)
    minmax = pp.apply_min_max(train + 1.0, pp.fit_min_max(train))
    np.testing.assert_array_equal(minmax, np.ones((10, 3), np.float32))
    standardized = pp.standardize(train, pp.fit_standardization(train))
    np.testing.assert_array_equal(standardized, np.zeros((10, 3), np.float32))


def test_single_example_uses_per_feature_statistics():
    train = _mnist_like(7)
    stats = pp.fit_standardization(jnp.asarray(train), per_feature=True)
    batch = pp.standardize(jnp.asarray(train[:3]), stats)
    one = pp.standardize(jnp.asarray(train[1]), stats)
    # Equal up to rounding: XLA may vectorize the division differently for the two shapes.
    np.testing.assert_allclose(one, batch[1], rtol=1e-6)


def test_works_under_jit(allclose):
    train = jnp.asarray(_mnist_like(8))
    test = jnp.asarray(_mnist_like(9, n=8))

    def pipeline(train, test):
        unit_train, unit_test = pp.scale_to_unit(train), pp.scale_to_unit(test)
        standardized = pp.standardize(unit_test, pp.fit_standardization(unit_train))
        stats = pp.fit_min_max(unit_train, feature_range=(-1.0, 1.0), per_feature=True)
        return standardized, pp.apply_min_max(unit_test, stats)

    allclose(jax.jit(pipeline)(train, test), pipeline(train, test), rtol=1e-5, atol=1e-6)
    stats = pp.fit_standardization(train)
    allclose(jax.jit(pp.standardize)(test, stats), pp.standardize(test, stats), rtol=1e-6)


def test_float64_input():
    x = np.array([[0.5, 1.5], [2.5, 3.5]])
    assert pp.scale_to_unit(x).dtype == np.float32
    assert pp.standardize(x, pp.fit_standardization(x)).dtype == np.float32
    with jax.enable_x64(True):
        assert pp.scale_to_unit(x).dtype == np.float64
        stats = pp.fit_standardization(x, per_feature=True)
        assert stats.mean.dtype == np.float64
        assert pp.standardize(jnp.asarray(x), stats).dtype == jnp.float64
        assert pp.apply_min_max(x, pp.fit_min_max(x)).dtype == np.float64


INVALID = [
    ("max_value", lambda: pp.scale_to_unit(np.ones(3), max_value=0.0)),
    ("max_value", lambda: pp.scale_to_unit(np.ones(3), max_value=-255.0)),
    ("train", lambda: pp.fit_min_max(np.zeros((0, 784)))),
    ("train", lambda: pp.fit_standardization(jnp.zeros((0, 28, 28)))),
    ("feature_range", lambda: pp.fit_min_max(np.ones(3), feature_range=(1.0, 0.0))),
    ("feature_range", lambda: pp.fit_min_max(np.ones(3), feature_range=(0.5, 0.5))),
    ("feature_range", lambda: pp.fit_min_max(np.ones(3), feature_range=(0.0,))),
    ("feature_range", lambda: pp.fit_min_max(np.ones(3), feature_range=(0.0, float("nan")))),
    ("eps", lambda: pp.fit_standardization(np.ones(3), eps=0.0)),
    ("eps", lambda: pp.fit_standardization(np.ones(3), eps=-1e-8)),
    ("per_feature", lambda: pp.fit_standardization(np.float32(1.0), per_feature=True)),
    (
        "x",
        lambda: pp.standardize(
            np.ones((2, 5)), pp.fit_standardization(np.ones((4, 3)), per_feature=True)
        ),
    ),
    (
        "x",
        lambda: pp.apply_min_max(
            np.ones((2, 4)), pp.fit_min_max(np.ones((4, 3)), per_feature=True)
        ),
    ),
]


@pytest.mark.parametrize(("argument", "build"), INVALID)
def test_invalid_arguments_raise_value_error_naming_them(argument, build):
    with pytest.raises(ValueError, match=rf"^{re.escape(argument)}\b"):
        build()
