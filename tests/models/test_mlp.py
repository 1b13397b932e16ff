"""Tests of jaxtricks/models/mlp.py: the layer order against a hand-written forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models import MLP

BATCH = 8


@pytest.fixture
def images(getkey):
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    return jax.random.normal(getkey(), (BATCH * 28 * 28,), jnp.float32).reshape((BATCH, 28, 28, 1))


@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh])
def test_forward_pass_is_weights_then_batch_norm_then_activation(
    use_batch_norm, train, activation, images, getkey, batch_norm, perturb
):
    model = MLP(features=(32, 16), use_batch_norm=use_batch_norm, activation=activation)
    variables = perturb(model.init(getkey(), images, train=False), getkey())
    params = variables["params"]
    logits, state = model.apply(variables, images, train=train, mutable=["batch_stats"])

    h = images.reshape((BATCH, -1))
    for layer in range(2):
        dense = params[f"Dense_{layer}"]
        z = h @ dense["kernel"]
        if use_batch_norm:
            norm = params[f"BatchNorm_{layer}"]
            stats = variables["batch_stats"][f"BatchNorm_{layer}"]
            running = {} if train else {"mean": stats["mean"], "var": stats["var"]}
            if train:
                # μ_run ← m μ_run + (1 - m) μ_batch with m = 0.9.
                updated = state["batch_stats"][f"BatchNorm_{layer}"]
                np.testing.assert_allclose(
                    updated["mean"], 0.9 * stats["mean"] + 0.1 * z.mean(0), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    updated["var"], 0.9 * stats["var"] + 0.1 * z.var(0), rtol=1e-4, atol=1e-6
                )
            z = batch_norm(z, norm["scale"], norm["bias"], **running)
        else:
            z = z + dense["bias"][None, :]
        h = activation(z)
    expected = h @ params["head"]["kernel"] + params["head"]["bias"][None, :]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_layer_widths(images):
    shapes = jax.eval_shape(
        lambda key: MLP(features=(64, 32, 16), num_classes=5).init(key, images, train=False),
        jax.random.key(0),
    )["params"]
    assert {name: layer["kernel"].shape for name, layer in shapes.items()} == {
        "Dense_0": (784, 64),
        "Dense_1": (64, 32),
        "Dense_2": (32, 16),
        "head": (16, 5),
    }


def test_dropout_follows_every_hidden_activation(images, getkey, record_inputs):
    model = MLP(features=(32, 16), dropout_rate=0.5)
    variables = model.init(getkey(), images, train=False)
    with record_inputs() as inputs:
        _, state = model.apply(
            variables, images, train=True, rngs={"dropout": getkey()}, mutable=["intermediates"]
        )
    preactivations = state["intermediates"]["preactivations"]
    # What the layer after each hidden layer receives: its activation, dropped and doubled.
    for layer, preactivation, width in (("Dense_1", 0, 32), ("head", 1, 16)):
        received = inputs[layer][0]
        activated = jax.nn.relu(preactivations[preactivation])
        assert received.shape == activated.shape == (BATCH, width)
        kept = received != 0
        np.testing.assert_allclose(received[kept], 2.0 * activated[kept], rtol=1e-6)
        assert bool(jnp.any(activated[~kept] != 0))


def test_any_trailing_axes_are_flattened(images, getkey):
    model = MLP(features=(16,), use_batch_norm=True)
    variables = model.init(getkey(), images, train=False)
    np.testing.assert_array_equal(
        model.apply(variables, images.reshape((BATCH, 784)), train=False),
        model.apply(variables, images, train=False),
    )


def test_unbatched_input_is_refused(getkey):
    with pytest.raises(ValueError, match=r"MLP expects .*\(N, \.\.\.\).*got shape \(784,\)"):
        MLP().init(getkey(), jnp.ones((784,)), train=False)


@pytest.mark.parametrize("features", [(), (0,), (32, -1), (3.5,), (True,), 32])
def test_bad_features_are_refused(features):
    with pytest.raises(ValueError, match="features"):
        MLP(features=features)
