"""Tests for jaxtricks.training.averaging: batch-norm statistics measured again, exactly, for
Linen and NNX models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtricks.models.cnn import CNN
from jaxtricks.training.averaging import recompute_batch_stats, recompute_model_state

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


# ------------------------------------------------------------------ recompute_model_state


def test_linen_model_state_gets_recomputed_batch_stats_and_keeps_the_rest(setup):
    data, params, stale = setup
    other = {"counter": jnp.arange(3)}
    fresh = recompute_model_state(MODEL, params, {"batch_stats": stale, "other": other}, data,
                                  batch_size=len(data))
    assert set(fresh) == {"batch_stats", "other"} and fresh["other"] is other
    assert_stats_close(fresh["batch_stats"], hand_statistics(data, params), rtol=1e-5)
    without = recompute_model_state(nn.Dense(2), {"kernel": jnp.ones((5, 2))}, {}, data)
    assert without == {}


def nnx_model(seed=0):
    """Linear → BN → ReLU → Dropout → Linear → BN, as TwoBatchNorms, in NNX."""
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(
        nnx.Linear(5, 4, rngs=rngs), nnx.BatchNorm(4, momentum=0.9, epsilon=EPSILON, rngs=rngs),
        nnx.relu, nnx.Dropout(0.5, rngs=rngs),
        nnx.Linear(4, 3, rngs=rngs), nnx.BatchNorm(3, momentum=0.99, epsilon=EPSILON, rngs=rngs),
    )


def nnx_hand_statistics(data, model):
    """Each NNX batch-norm layer's mean and biased variance in float64, dropout off."""
    first, norm, second = model.layers[0], model.layers[1], model.layers[4]

    def array(variable):
        return np.asarray(variable[...], np.float64)

    z1 = data.astype(np.float64) @ array(first.kernel) + array(first.bias)
    mean1, var1 = z1.mean(0), z1.var(0)
    h = np.maximum(array(norm.scale) * (z1 - mean1) / np.sqrt(var1 + EPSILON) + array(norm.bias),
                   0)
    z2 = h @ array(second.kernel) + array(second.bias)
    return [(mean1, var1), (z2.mean(0), z2.var(0))]


@pytest.mark.parametrize("batch_size", [7, 30])
def test_nnx_batch_norm_statistics_are_measured_again(setup, batch_size):
    data = setup[0]
    model = nnx_model()
    # Non-trivial scales and shifts, so that the second layer's inputs depend on them.
    model.layers[1].scale.set_value(jnp.linspace(0.5, 2.0, 4))
    model.layers[1].bias.set_value(jnp.linspace(-1.0, 1.0, 4))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    fresh = recompute_model_state(model, params, model_state, data, batch_size=batch_size)
    # The module itself is left as it was: only the returned state holds the measurement.
    np.testing.assert_array_equal(model.layers[1].mean[...], np.zeros(4))
    assert model.layers[1].momentum == 0.9
    nnx.update(model, fresh)
    expected = nnx_hand_statistics(data, model)
    layers = [model.layers[1], model.layers[5]]
    # The first layer is exact for any batch size, every layer with one batch of all the data.
    for index, (layer, (mean, var)) in enumerate(zip(layers, expected, strict=True)):
        if index == 0 or batch_size >= len(data):
            np.testing.assert_allclose(layer.mean[...], mean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(layer.var[...], var, rtol=1e-4, atol=1e-5)


def test_an_nnx_model_without_batch_norm_gets_its_state_back():
    model = nnx.Sequential(nnx.Linear(5, 2, rngs=nnx.Rngs(0)))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    assert recompute_model_state(model, params, model_state, np.ones((4, 5), np.float32)) is (
        model_state)
