"""Tests for jaxtricks.training.averaging: batch-norm statistics measured again, exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models.cnn import CNN
from jaxtricks.training.averaging import recompute_batch_stats

EPSILON = 1e-5


class TwoBatchNorms(nn.Module):
    """Dense → BN → ReLU → Dropout → Dense → BN, small enough to compute by hand."""

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPSILON)(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = nn.Dense(3)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=EPSILON)(x)


MODEL = TwoBatchNorms()


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(30, 5)) * 3 + 2).astype(np.float32)
    variables = MODEL.init(jax.random.key(0), jnp.asarray(data[:2]), train=False)
    # Non-trivial γ and β, so that the second layer's inputs depend on them.
    params = jax.tree.map(
        lambda p: jnp.asarray(p + rng.normal(size=p.shape).astype(np.float32) * 0.5),
        variables["params"],
    )
    return data, params, variables["batch_stats"]


def hand_statistics(data, params):
    """Each layer's mean and biased variance in float64, dropout off, full-data batch norm."""
    p = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)
    z1 = data.astype(np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    mean1, var1 = z1.mean(0), z1.var(0)
    bn = p["BatchNorm_0"]
    h = np.maximum(bn["scale"] * (z1 - mean1) / np.sqrt(var1 + EPSILON) + bn["bias"], 0)
    z2 = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    return {
        "BatchNorm_0": {"mean": mean1, "var": var1},
        "BatchNorm_1": {"mean": z2.mean(0), "var": z2.var(0)},
    }


def assert_stats_close(actual, expected, rtol):
    for layer, stats in expected.items():
        for name, value in stats.items():
            assert actual[layer][name].dtype == jnp.float32
            np.testing.assert_allclose(actual[layer][name], value, rtol=rtol, atol=1e-5)


def test_one_batch_gives_every_layer_the_data_statistics(setup):
    data, params, stale = setup
    stats = recompute_batch_stats(
        MODEL, params, data, batch_size=len(data), batch_stats_template=stale
    )
    assert_stats_close(stats, hand_statistics(data, params), rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 10])
def test_first_layer_is_exact_for_any_batch_size(setup, batch_size):
    data, params, stale = setup
    stats = recompute_batch_stats(
        MODEL, params, data, batch_size=batch_size, batch_stats_template=stale
    )
    expected = hand_statistics(data, params)["BatchNorm_0"]
    assert_stats_close({"BatchNorm_0": stats["BatchNorm_0"]}, {"BatchNorm_0": expected}, 1e-5)


def test_large_offsets_do_not_cancel(setup):
    """The merged two-pass variance survives a mean far above the spread (E[x²] − E[x]² not)."""
    _, params, stale = setup
    rng = np.random.default_rng(1)
    data = (1000 + 0.01 * rng.normal(size=(40, 5))).astype(np.float32)
    stats = recompute_batch_stats(MODEL, params, data, batch_size=8, batch_stats_template=stale)
    expected = hand_statistics(data, params)["BatchNorm_0"]
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], expected["var"], rtol=2e-2)


def test_evaluation_with_fresh_statistics_normalizes_the_data(setup):
    data, params, stale = setup
    stats = recompute_batch_stats(
        MODEL, params, data, batch_size=len(data), batch_stats_template=stale
    )
    fresh = MODEL.apply({"params": params, "batch_stats": stats}, data, train=False)
    old = MODEL.apply({"params": params, "batch_stats": stale}, data, train=False)
    # With fresh statistics evaluation equals training mode on the whole data with dropout
    # off, whose last batch norm leaves each feature with mean β and spread |γ|.
    beta = np.asarray(params["BatchNorm_1"]["bias"])
    gamma = np.asarray(params["BatchNorm_1"]["scale"])
    np.testing.assert_allclose(np.asarray(fresh).mean(0), beta, atol=1e-4)
    np.testing.assert_allclose(np.asarray(fresh).std(0), np.abs(gamma), rtol=1e-3)
    assert not np.allclose(np.asarray(old), np.asarray(fresh), atol=1e-2)


def test_convolutional_batch_norm_reduces_batch_and_space(getkey):
    model = CNN(features=(4,), hidden=4, use_batch_norm=True, num_classes=3)
    images = jax.random.normal(getkey(), (12, 8, 8, 1)) + 1.0
    variables = jax.jit(lambda key, x: model.init(key, x, train=False))(getkey(), images[:2])
    stats = recompute_batch_stats(
        model, variables["params"], images, batch_size=5,
        batch_stats_template=variables["batch_stats"],
    )  # fmt: skip
    layer = "BatchNorm_0"
    # The first layer's input is the convolution of the images, seen in the intermediates.
    _, state = jax.jit(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(variables, images)
    conv = np.asarray(state["intermediates"]["Conv_0"]["__call__"][0], np.float64)
    np.testing.assert_allclose(stats[layer]["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[layer]["var"], conv.var((0, 1, 2)), rtol=1e-4)


class MaskedBatchNorm(nn.Module):
    """Batch norm over the rows whose first feature is positive."""

    @nn.compact
    def __call__(self, x, train):
        mask = jnp.broadcast_to(x[:, :1] > 0, x.shape)
        return nn.BatchNorm(use_running_average=not train)(x, mask=mask)


def test_a_mask_restricts_the_statistics_to_its_rows():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(24, 3)).astype(np.float32)
    model = MaskedBatchNorm()
    variables = model.init(jax.random.key(0), jnp.asarray(data), train=False)
    stats = recompute_batch_stats(
        model, variables["params"], data, batch_size=5,
        batch_stats_template=variables["batch_stats"],
    )
    kept = data[data[:, 0] > 0].astype(np.float64)
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], kept.var(0), rtol=1e-5)


def test_a_model_without_batch_norm_gets_its_empty_stats_back(setup):
    data, _, _ = setup
    model = nn.Dense(2)
    params = model.init(jax.random.key(0), jnp.asarray(data))["params"]
    assert recompute_batch_stats(model, params, data, batch_stats_template={}) == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"images": np.zeros((4, 5), np.int32)}, "floating"),
        ({"images": np.zeros((0, 5), np.float32)}, "images"),
        ({"model": "net"}, "model"),
        ({"batch_stats_template": {"Other": {"mean": jnp.zeros(4)}}}, "batch_stats_template"),
    ],
)
def test_invalid_arguments_are_refused(setup, kwargs, message):
    data, params, stale = setup
    arguments = {
        "model": MODEL, "params": params, "images": data, "batch_size": 10,
        "batch_stats_template": stale,
    } | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=message):
        recompute_batch_stats(**arguments)
