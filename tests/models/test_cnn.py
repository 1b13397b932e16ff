"""Tests of jaxtricks/models/cnn.py: the layer order against a hand-written forward pass."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models import CNN

BATCH = 8


@pytest.fixture
def images(getkey):
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    return jax.random.normal(getkey(), (BATCH * 28 * 28,), jnp.float32).reshape((BATCH, 28, 28, 1))


def conv_same(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def pool(x):
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4


@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_forward_pass_matches_the_flax_mnist_layout(
    use_batch_norm, train, images, getkey, batch_norm, perturb
):
    model = CNN(features=(4, 8), hidden=16, use_batch_norm=use_batch_norm)
    variables = perturb(model.init(getkey(), images, train=False), getkey())
    params = variables["params"]
    logits, _ = model.apply(variables, images, train=train, mutable=["batch_stats"])

    def normalize_then_relu(z, index, weights):
        if use_batch_norm:
            norm = params[f"BatchNorm_{index}"]
            stats = {} if train else variables["batch_stats"][f"BatchNorm_{index}"]
            z = batch_norm(z, norm["scale"], norm["bias"], **stats)
        else:
            z = z + weights["bias"].reshape((1,) * (z.ndim - 1) + (-1,))
        return jax.nn.relu(z)

    h = images
    for index in range(2):
        conv = params[f"Conv_{index}"]
        h = pool(normalize_then_relu(conv_same(h, conv["kernel"]), index, conv))
    assert h.shape == (BATCH, 7, 7, 8)
    h = h.reshape((BATCH, -1))
    h = normalize_then_relu(h @ params["Dense_0"]["kernel"], 2, params["Dense_0"])
    expected = h @ params["head"]["kernel"] + params["head"]["bias"][None, :]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def param_shapes(model, x):
    variables = jax.eval_shape(
        lambda key: model.init(key, x, train=False), jax.random.key(0)
    )
    return {name: layer["kernel"].shape for name, layer in variables["params"].items()}


def test_default_is_the_flax_mnist_example(images):
    assert param_shapes(CNN(), images) == {
        "Conv_0": (3, 3, 1, 32),
        "Conv_1": (3, 3, 32, 64),
        "Dense_0": (7 * 7 * 64, 256),
        "head": (256, 10),
    }


def test_pooling_drops_an_odd_last_row_and_column(images):
    # 28 → 14 → 7 → 3
    shapes = param_shapes(CNN(features=(2, 3, 4), hidden=5), images)
    assert shapes["Dense_0"] == (3 * 3 * 4, 5)


def test_dropout_only_before_the_head(images, getkey, record_inputs):
    model = CNN(features=(4, 8), hidden=16, dropout_rate=0.5)
    variables = model.init(getkey(), images, train=False)
    with record_inputs() as inputs:
        _, state = model.apply(
            variables, images, train=True, rngs={"dropout": getkey()}, mutable=["intermediates"]
        )
    assert [name for name in inputs if name.startswith("Dropout")] == ["Dropout_0"]
    hidden = jax.nn.relu(state["intermediates"]["preactivations"][-1])
    received = inputs["head"][0]
    assert received.shape == hidden.shape == (BATCH, 16)
    kept = received != 0
    np.testing.assert_allclose(received[kept], 2.0 * hidden[kept], rtol=1e-6)
    assert bool(jnp.any(hidden[~kept] != 0))


@pytest.mark.parametrize("shape", [(BATCH, 28, 28), (BATCH, 784), (28, 28, 1)])
def test_input_without_batch_or_channel_axis_is_refused(shape, getkey):
    pattern = rf"CNN expects .*\(N, H, W, C\).*got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=pattern):
        CNN().init(getkey(), jnp.ones(shape), train=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("features", ()), ("features", (8, 0)), ("hidden", 0), ("hidden", 2.0)],
)
def test_bad_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        CNN(**{field: value})
