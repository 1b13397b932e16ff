"""batch_norm_train and BatchNorm against flax.linen.BatchNorm and plain autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models.batch_norm import BatchNorm, _channel_sum, batch_norm_train

SHAPES = [(16, 5), (8, 7, 7, 3), (4, 28, 28, 16), (2, 3, 4, 5, 6)]


def _reference(x, scale, bias, epsilon=1e-5):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + epsilon) * scale.reshape(mean.shape) + bias.reshape(mean.shape)
    return y, mean.reshape(-1), var.reshape(-1)


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]).astype(np.float32))
    bias = jnp.asarray(rng.standard_normal(shape[-1], np.float32))
    return x, scale, bias


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_sum_equals_the_plain_sum(shape):
    x, _, _ = _inputs(shape)
    np.testing.assert_allclose(_channel_sum(x), jnp.sum(x, tuple(range(x.ndim - 1))), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_values_match_the_definition(shape, allclose):
    x, scale, bias = _inputs(shape)
    allclose(jax.jit(batch_norm_train)(x, scale, bias), _reference(x, scale, bias), rtol=2e-5,
             atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_autodiff_of_the_definition_with_every_output_used(shape, allclose):
    # Cotangents on y, μ and σ² all nonzero: the hand-written VJP must handle each.
    x, scale, bias = _inputs(shape, seed=1)
    rng = np.random.default_rng(2)
    weights = (jnp.asarray(rng.standard_normal(shape, np.float32)),
               jnp.asarray(rng.standard_normal(shape[-1], np.float32)),
               jnp.asarray(rng.standard_normal(shape[-1], np.float32)))

    def loss(function):
        def value(x, scale, bias):
            outputs = function(x, scale, bias)
            return sum(jnp.sum(w * o) for w, o in zip(weights, outputs, strict=True))
        return jax.jit(jax.grad(value, argnums=(0, 1, 2)))

    allclose(loss(batch_norm_train)(x, scale, bias), loss(_reference)(x, scale, bias),
             rtol=2e-4, atol=2e-4)


def test_vmap_and_second_use_under_jit(allclose):
    x, scale, bias = _inputs((3, 8, 5, 5, 4))  # 3 independent batches
    batched = jax.jit(jax.vmap(batch_norm_train, in_axes=(0, None, None)))(x, scale, bias)
    one_by_one = [batch_norm_train(x[i], scale, bias) for i in range(3)]
    allclose(batched, jax.tree.map(lambda *a: jnp.stack(a), *one_by_one), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=jnp.ones((4, 3), jnp.bfloat16)), "x must be float32"),
        (dict(scale=jnp.ones(4)), "scale and bias of shape"),
        (dict(x=jnp.ones(3)), "scale and bias of shape"),
        (dict(epsilon=0.0), "epsilon must be > 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    arguments = dict(x=jnp.ones((4, 3)), scale=jnp.ones(3), bias=jnp.zeros(3)) | kwargs
    with pytest.raises(ValueError, match=message):
        batch_norm_train(**arguments)


@pytest.mark.parametrize("shape", [(16, 5), (8, 7, 7, 3)])
@pytest.mark.slow
def test_the_layer_equals_flax_in_training_and_evaluation(shape, allclose):
    x, _, _ = _inputs(shape, seed=3)
    ours, flax = BatchNorm(momentum=0.8), nn.BatchNorm(momentum=0.8)
    variables = flax.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.structure(ours.init(jax.random.key(0), x, use_running_average=False)) == (
        jax.tree.structure(variables)
    )
    variables = {
        "params": {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.arange(shape[-1]) / 4},
        "batch_stats": {"mean": jnp.full(shape[-1], 0.3), "var": jnp.full(shape[-1], 2.0)},
    }

    def train(module, variables):
        def loss(params):
            y, updates = module.apply({**variables, "params": params}, x,
                                      use_running_average=False, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y)), updates
        return jax.grad(loss, has_aux=True)(variables["params"])

    allclose(train(ours, variables), train(flax, variables), rtol=1e-4, atol=1e-5)
    # ... and it did take its own path in training:
    def forward(v):
        return ours.apply(v, x, use_running_average=False, mutable=["batch_stats"])

    assert "custom_vjp_call" in str(jax.make_jaxpr(forward)(variables))
    allclose(ours.apply(variables, x, use_running_average=True),
             flax.apply(variables, x, use_running_average=True), rtol=1e-6)


def test_the_layer_falls_back_to_flax_outside_its_fast_path(allclose):
    x, _, _ = _inputs((6, 4, 5), seed=4)
    for kwargs in (dict(axis=1), dict(use_bias=False), dict(use_fast_variance=False)):
        ours, flax = BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
        variables = flax.init(jax.random.key(0), x, use_running_average=False)
        allclose(
            ours.apply(variables, x, use_running_average=False, mutable=["batch_stats"]),
            flax.apply(variables, x, use_running_average=False, mutable=["batch_stats"]),
            rtol=0,
        )


@pytest.mark.parametrize("use_running_average", [False, True])
def test_the_flag_may_come_with_the_constructor(use_running_average, allclose):
    x, _, _ = _inputs((8, 3, 3, 4), seed=5)
    ours = BatchNorm(use_running_average=use_running_average)
    flax = nn.BatchNorm(use_running_average=use_running_average)
    variables = flax.init(jax.random.key(0), x)
    allclose(ours.apply(variables, x, mutable=["batch_stats"]),
             flax.apply(variables, x, mutable=["batch_stats"]), rtol=1e-5, atol=1e-5)
