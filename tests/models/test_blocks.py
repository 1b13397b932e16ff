"""The behaviour every model shares (jaxtricks/models/blocks.py), checked on MLP, CNN and ResNet.

Batch norm placement and bias, train/eval modes, dropout, initializers, activations, dtypes,
validation and gradients. Architecture-specific checks live in each model's own test module.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxtricks.backend import PLAIN, use_speed_paths
from jaxtricks.models import CNN, MLP, ResNet

# Small enough for a shared CPU; the ResNet has an identity block (4 → 4 channels) and a
# projection block (4 → 8 channels, stride 2).
FACTORIES = {
    "mlp": functools.partial(MLP, features=(32, 16)),
    "cnn": functools.partial(CNN, features=(4, 8), hidden=16),
    "resnet": functools.partial(ResNet, stage_sizes=(1, 1), width=4),
}
# Activations per forward pass: one per hidden layer; the ResNet's stem and two per block.
NUM_ACTIVATIONS = {"mlp": 2, "cnn": 3, "resnet": 5}
# Of those, the ones fed straight by batch norm (not by a residual sum).
NUM_NORMALIZED = {"mlp": 2, "cnn": 3, "resnet": 3}
BATCH = 8


@pytest.fixture
def images(getkey):
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    return jax.random.normal(getkey(), (BATCH * 28 * 28,), jnp.float32).reshape((BATCH, 28, 28, 1))


def init(model, x, key):
    return model.init(key, x, train=False)


def train_apply(model, variables, x, key, mutable=("batch_stats",)):
    return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=list(mutable))


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("dropout_rate", [0.0, 0.5])
def test_logits_shape_and_dtype(name, use_batch_norm, dropout_rate, images, getkey):
    model = FACTORIES[name](
        num_classes=3, use_batch_norm=use_batch_norm, dropout_rate=dropout_rate
    )
    variables = init(model, images, getkey())
    eval_logits = model.apply(variables, images, train=False)
    train_logits, _ = train_apply(model, variables, images, getkey())
    for logits in (eval_logits, train_logits):
        assert logits.shape == (BATCH, 3)
        assert logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.slow
def test_compute_dtype_keeps_float32_params_and_logits(name, images, getkey):
    model = FACTORIES[name](use_batch_norm=True, dtype=jnp.bfloat16)
    variables = init(model, images, getkey())
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, _ = train_apply(model, variables, images, getkey())
    assert logits.dtype == jnp.float32
    dense_out = model.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )[1]["intermediates"]["head"]["__call__"][0]
    assert dense_out.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_batch_stats_and_biases_follow_batch_norm(name, use_batch_norm, images, getkey):
    variables = init(FACTORIES[name](use_batch_norm=use_batch_norm), images, getkey())
    assert set(variables) == ({"params", "batch_stats"} if use_batch_norm else {"params"})
    params = traverse_util.flatten_dict(variables["params"])
    weight_layers = [path[:-1] for path in params if path[-1] == "kernel"]
    norm_layers = [path[:-1] for path in params if path[-1] == "scale"]
    hidden = [layer for layer in weight_layers if layer != ("head",)]
    assert len(hidden) == NUM_ACTIVATIONS[name] + (name == "resnet")  # + the projection
    for layer in hidden:
        assert ((*layer, "bias") in params) == (not use_batch_norm), layer
    assert ("head", "bias") in params
    assert len(norm_layers) == (len(hidden) if use_batch_norm else 0)
    if use_batch_norm:
        stats = traverse_util.flatten_dict(variables["batch_stats"])
        assert {path[:-1] for path in stats} == set(norm_layers)


@pytest.mark.parametrize("name", FACTORIES)
def test_preactivations_are_standardized_by_batch_norm_in_training(name, images, getkey):
    # At init γ = 1 and β = 0, so an activation fed straight by batch norm sees a batch mean
    # of 0 and variance of 1 in every feature; without batch norm it does not.
    def preactivations(use_batch_norm):
        model = FACTORIES[name](use_batch_norm=use_batch_norm)
        variables = init(model, images, getkey())
        _, state = train_apply(
            model, variables, images, getkey(), ("batch_stats", "intermediates")
        )
        sown = traverse_util.flatten_dict(state["intermediates"])
        # The second activation of a residual block sees the sum with the shortcut.
        return [
            z
            for path, values in sown.items()
            for z in (values[:1] if path[0].startswith("ResidualBlock") else values)
        ]

    normalized = preactivations(True)
    assert len(normalized) == NUM_NORMALIZED[name]
    for z in normalized:
        axes = tuple(range(z.ndim - 1))
        np.testing.assert_allclose(z.mean(axes), 0.0, atol=1e-4)
        np.testing.assert_allclose(z.var(axes), 1.0, rtol=1e-2)
    raw = preactivations(False)[0]
    assert not np.allclose(raw.var(tuple(range(raw.ndim - 1))), 1.0, rtol=1e-2)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_evaluation_is_deterministic_and_ignores_the_dropout_key(
    name, use_batch_norm, images, getkey
):
    model = FACTORIES[name](use_batch_norm=use_batch_norm, dropout_rate=0.5)
    variables = init(model, images, getkey())
    without_key = model.apply(variables, images, train=False)
    for _ in range(2):
        with_key = model.apply(variables, images, train=False, rngs={"dropout": getkey()})
        np.testing.assert_array_equal(with_key, without_key)


@pytest.mark.parametrize("name", FACTORIES)
def test_training_dropout_depends_on_the_key_only(name, images, getkey):
    model = FACTORIES[name](dropout_rate=0.5)
    variables = init(model, images, getkey())
    key = getkey()
    first, _ = train_apply(model, variables, images, key)
    again, _ = train_apply(model, variables, images, key)
    other, _ = train_apply(model, variables, images, getkey())
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # Without dropout, training needs no key, and computes what evaluation computes: the same
    # bits on the plain paths; on the CPU's, a one-channel first convolution by shifted sums
    # rounds differently.
    plain = FACTORIES[name]()
    evaluated = plain.apply(variables, images, train=False)
    with use_speed_paths(PLAIN):
        trained = plain.apply(variables, images, train=True, mutable=["batch_stats"])[0]
    np.testing.assert_array_equal(trained, evaluated)
    trained = plain.apply(variables, images, train=True, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(trained, evaluated, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_batch_stats_update_only_in_training(name, images, getkey):
    model = FACTORIES[name](use_batch_norm=True)
    variables = init(model, images, getkey())
    _, eval_state = model.apply(variables, images, train=False, mutable=["batch_stats"])
    for old, new in zip(
        jax.tree.leaves(variables["batch_stats"]),
        jax.tree.leaves(eval_state["batch_stats"]),
        strict=True,
    ):
        np.testing.assert_array_equal(old, new)
    train_logits, train_state = train_apply(model, variables, images, getkey())
    for old, new in zip(
        jax.tree.leaves(variables["batch_stats"]),
        jax.tree.leaves(train_state["batch_stats"]),
        strict=True,
    ):
        assert not np.allclose(old, new)
    # Evaluation normalizes with the running averages, not with the batch's statistics.
    updated = {"params": variables["params"], **train_state}
    assert not np.allclose(model.apply(updated, images, train=False), train_logits, atol=1e-3)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_zeroes_a_fraction_rate_and_rescales_the_rest(rate, getkey, record_inputs):
    # tanh is never exactly 0 on these inputs, so every zero after dropout is a dropped unit.
    model = MLP(features=(2048,), dropout_rate=rate, activation=jnp.tanh)
    x = jax.random.normal(getkey(), (64, 16), jnp.float32)
    variables = init(model, x, getkey())
    with record_inputs() as inputs:
        _, state = train_apply(model, variables, x, getkey(), ("intermediates",))
    activated = jnp.tanh(state["intermediates"]["preactivations"][0])
    dropped = inputs["head"][0]
    assert bool(jnp.all(activated != 0))
    zeroed = dropped == 0
    # 131072 Bernoulli draws: the standard error of the fraction is below 0.0014.
    assert abs(float(zeroed.mean()) - rate) < 0.01
    np.testing.assert_allclose(
        jnp.where(zeroed, 0.0, dropped),
        jnp.where(zeroed, 0.0, activated / (1 - rate)),
        rtol=1e-6,
    )
    # E[dropout(h) / h] = 1: inverted dropout keeps the expectation.
    assert abs(float((dropped / activated).mean()) - 1.0) < 0.03


@pytest.mark.parametrize("name", FACTORIES)
def test_kernel_init_is_used_for_every_kernel(name, images, getkey):
    for value in (0.0, 0.01):
        model = FACTORIES[name](kernel_init=jax.nn.initializers.constant(value))
        params = traverse_util.flatten_dict(init(model, images, getkey())["params"])
        kernels = [leaf for path, leaf in params.items() if path[-1] == "kernel"]
        assert len(kernels) == NUM_ACTIVATIONS[name] + (name == "resnet") + 1
        for kernel in kernels:
            np.testing.assert_array_equal(kernel, np.full(kernel.shape, value, np.float32))
    zero_logits = FACTORIES[name](kernel_init=jax.nn.initializers.zeros)
    variables = init(zero_logits, images, getkey())
    np.testing.assert_array_equal(
        zero_logits.apply(variables, images, train=False), np.zeros((BATCH, 10), np.float32)
    )


@pytest.mark.parametrize("name", FACTORIES)
def test_default_kernel_init_is_he_normal(name, images, getkey):
    params = traverse_util.flatten_dict(init(FACTORIES[name](), images, getkey())["params"])
    kernel = max(
        (leaf for path, leaf in params.items() if path[-1] == "kernel"), key=lambda k: k.size
    )
    fan_in = int(np.prod(kernel.shape[:-1]))
    # Var = 2 / fan_in; the largest kernel has at least 1152 entries.
    np.testing.assert_allclose(float(kernel.std()), np.sqrt(2.0 / fan_in), rtol=0.1)


@pytest.mark.parametrize("name", FACTORIES)
def test_activation_is_applied_to_every_preactivation(name, images, getkey):
    seen = []

    def recording_tanh(z):
        seen.append(z)
        return jnp.tanh(z)

    model = FACTORIES[name](activation=recording_tanh, use_batch_norm=True)
    variables = init(model, images, getkey())
    seen.clear()
    logits, state = train_apply(
        model, variables, images, getkey(), ("batch_stats", "intermediates")
    )
    sown = jax.tree.leaves(state["intermediates"])
    assert len(seen) == len(sown) == NUM_ACTIVATIONS[name]
    for z in seen:
        assert any(z.shape == s.shape and np.array_equal(z, s) for s in sown)
    relu_logits, _ = train_apply(FACTORIES[name](use_batch_norm=True), variables, images, getkey())
    assert not np.allclose(logits, relu_logits)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_dropout_rate_is_refused(name, rate):
    with pytest.raises(ValueError, match=rf"dropout_rate must be in \[0.0, 1.0\), got {rate}"):
        FACTORIES[name](dropout_rate=rate)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("batch_norm_momentum", 1.5, ValueError),
        ("batch_norm_momentum", -0.5, ValueError),
        ("num_classes", 0, ValueError),
        ("num_classes", 2.5, ValueError),
        ("dtype", jnp.int32, ValueError),
        ("activation", "relu", TypeError),
        ("kernel_init", 0.1, TypeError),
    ],
)
def test_bad_settings_are_refused(name, field, value, error):
    with pytest.raises(error, match=field):
        FACTORIES[name](**{field: value})


@pytest.mark.parametrize("name", FACTORIES)
def test_integer_input_is_refused(name, images, getkey):
    model = FACTORIES[name]()
    with pytest.raises(ValueError, match=r"floating batch of shape.*int32"):
        model.init(getkey(), images.astype(jnp.int32), train=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_gradients_are_finite_and_reach_every_parameter(name, use_batch_norm, images, getkey):
    model = FACTORIES[name](use_batch_norm=use_batch_norm, dropout_rate=0.2)
    variables = init(model, images, getkey())
    labels = jax.random.randint(getkey(), (BATCH,), 0, 10)
    key = getkey()

    def loss(params):
        logits, state = train_apply(model, {**variables, "params": params}, images, key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), state

    grads, _ = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    for path, grad in traverse_util.flatten_dict(grads).items():
        assert grad.shape == traverse_util.flatten_dict(variables["params"])[path].shape
        assert bool(jnp.all(jnp.isfinite(grad))), path
        assert bool(jnp.any(grad != 0)), path


@pytest.mark.parametrize("name", FACTORIES)
def test_models_run_under_jit(name, images, getkey, allclose):
    model = FACTORIES[name](use_batch_norm=True, dropout_rate=0.3)
    variables = init(model, images, getkey())
    key = getkey()
    jitted = jax.jit(functools.partial(train_apply, model))(variables, images, key)
    allclose(jitted, train_apply(model, variables, images, key), rtol=1e-4, atol=1e-5)
