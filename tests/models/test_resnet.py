"""Tests of jaxtricks/models/resnet.py: residual blocks and stages against a hand-written pass."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models import ResidualBlock, ResNet

BATCH = 8


@pytest.fixture
def images(getkey):
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    return jax.random.normal(getkey(), (BATCH * 28 * 28,), jnp.float32).reshape((BATCH, 28, 28, 1))


def conv_same(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_forward_pass_adds_the_shortcut_before_the_last_activation(
    use_batch_norm, train, images, getkey, batch_norm, perturb
):
    # Stage 1 keeps 4 channels (identity shortcut); stage 2 has 8 and stride 2 (projection).
    model = ResNet(stage_sizes=(1, 1), width=4, use_batch_norm=use_batch_norm)
    variables = perturb(model.init(getkey(), images, train=False), getkey())
    logits, _ = model.apply(variables, images, train=train, mutable=["batch_stats"])

    def weights_then_norm(x, scope, conv, norm, stride):
        params = variables["params"][scope] if scope else variables["params"]
        z = conv_same(x, params[conv]["kernel"], stride)
        if not use_batch_norm:
            return z + params[conv]["bias"].reshape((1, 1, 1, -1))
        stats = {}
        if not train:
            stats = (variables["batch_stats"][scope] if scope else variables["batch_stats"])[norm]
        return batch_norm(z, params[norm]["scale"], params[norm]["bias"], **stats)

    relu = jax.nn.relu
    h = relu(weights_then_norm(images, None, "Conv_0", "BatchNorm_0", 1))
    block = "ResidualBlock_0"
    r = relu(weights_then_norm(h, block, "Conv_0", "BatchNorm_0", 1))
    h = relu(weights_then_norm(r, block, "Conv_1", "BatchNorm_1", 1) + h)
    block = "ResidualBlock_1"
    r = relu(weights_then_norm(h, block, "Conv_0", "BatchNorm_0", 2))
    shortcut = weights_then_norm(h, block, "projection", "BatchNorm_2", 2)
    h = relu(weights_then_norm(r, block, "Conv_1", "BatchNorm_1", 1) + shortcut)
    assert h.shape == (BATCH, 14, 14, 8)
    head = variables["params"]["head"]
    expected = h.mean(axis=(1, 2)) @ head["kernel"] + head["bias"][None, :]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def abstract_apply(model, x):
    """Parameter shapes and each block's output shape, without running anything."""

    def run(key):
        variables = model.init(key, x, train=False)
        _, state = model.apply(
            variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        return variables["params"], state["intermediates"]

    return jax.eval_shape(run, jax.random.key(0))


def test_default_stages_double_the_channels_and_halve_the_size(images):
    params, captured = abstract_apply(ResNet(), images)
    assert params["Conv_0"]["kernel"].shape == (3, 3, 1, 32)
    blocks = {name: captured[name]["__call__"][0].shape for name in captured if "Block" in name}
    assert blocks == {
        "ResidualBlock_0": (BATCH, 28, 28, 32),
        "ResidualBlock_1": (BATCH, 14, 14, 64),
        "ResidualBlock_2": (BATCH, 7, 7, 128),
    }
    assert "projection" not in params["ResidualBlock_0"]
    assert params["ResidualBlock_1"]["projection"]["kernel"].shape == (1, 1, 32, 64)
    assert params["ResidualBlock_2"]["projection"]["kernel"].shape == (1, 1, 64, 128)
    assert params["head"]["kernel"].shape == (128, 10)


def test_only_the_first_block_of_a_stage_has_stride_two(images):
    _, captured = abstract_apply(ResNet(stage_sizes=(1, 2), width=4), images)
    blocks = [captured[f"ResidualBlock_{index}"]["__call__"][0].shape for index in range(3)]
    assert blocks == [(BATCH, 28, 28, 4), (BATCH, 14, 14, 8), (BATCH, 14, 14, 8)]


@pytest.mark.parametrize(
    ("features", "strides", "in_shape", "out_shape", "projection"),
    [
        (8, 1, (2, 7, 7, 8), (2, 7, 7, 8), False),
        (16, 1, (2, 7, 7, 8), (2, 7, 7, 16), True),
        (8, 2, (2, 7, 7, 8), (2, 4, 4, 8), True),
    ],
)
def test_block_projects_the_shortcut_only_when_the_shape_changes(
    features, strides, in_shape, out_shape, projection
):
    block = ResidualBlock(features, strides=strides, use_batch_norm=True)
    params, captured = abstract_apply(block, jnp.ones(in_shape))
    assert captured["__call__"][0].shape == out_shape
    assert ("projection" in params) == projection
    # Under batch norm the projection is normalized too: three norms, else two.
    assert sum(name.startswith("BatchNorm") for name in params) == 2 + projection


def test_dropout_only_before_the_head(images, getkey, record_inputs):
    model = ResNet(stage_sizes=(1, 1), width=4, dropout_rate=0.5)
    variables = model.init(getkey(), images, train=False)
    with record_inputs() as inputs:
        _, state = model.apply(
            variables,
            images,
            train=True,
            rngs={"dropout": getkey()},
            capture_intermediates=True,
            mutable=["intermediates"],
        )
    assert [name for name in inputs if "Dropout" in name] == ["Dropout_0"]
    pooled = state["intermediates"]["ResidualBlock_1"]["__call__"][0].mean(axis=(1, 2))
    received = inputs["head"][0]
    assert received.shape == pooled.shape == (BATCH, 8)
    kept = received != 0
    np.testing.assert_allclose(received[kept], 2.0 * pooled[kept], rtol=1e-6)
    assert bool(jnp.any(pooled[~kept] != 0))


@pytest.mark.parametrize("shape", [(BATCH, 28, 28), (BATCH, 784), (28, 28, 1)])
def test_input_without_batch_or_channel_axis_is_refused(shape, getkey):
    pattern = rf"ResNet expects .*\(N, H, W, C\).*got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=pattern):
        ResNet().init(getkey(), jnp.ones(shape), train=False)


@pytest.mark.parametrize(
    ("module", "field", "value"),
    [
        (ResNet, "stage_sizes", ()),
        (ResNet, "stage_sizes", (1, 0)),
        (ResNet, "width", 0),
        (ResNet, "width", 8.0),
        (ResidualBlock, "features", 0),
        (ResidualBlock, "strides", 0),
    ],
)
def test_bad_sizes_are_refused(module, field, value):
    arguments = {"features": 8} if module is ResidualBlock else {}
    with pytest.raises(ValueError, match=field):
        module(**{**arguments, field: value})
