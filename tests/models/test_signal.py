"""Tests for jaxtricks.models.signal: per-layer forward statistics and backward gradient spread."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models import CNN, MLP, ResNet
from jaxtricks.models.signal import LayerSignal, signal_propagation
from jaxtricks.tricks.initializers import he_normal, normal

EPSILON = 1e-5  # Flax's batch-norm default


def _batch(key, shape, classes=10):
    x_key, y_key = jax.random.split(key)
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    images = jax.random.normal(x_key, (int(np.prod(shape)),)).reshape(shape)
    return images, jax.random.randint(y_key, shape[:1], 0, classes, jnp.int32)


def _stats(array):
    array = np.asarray(array, np.float64)
    return array.mean(), array.std()


def _numpy_mlp(params, x, labels, batch_stats_mode):
    """Forward and backward of a ReLU MLP in float64, by hand; per-layer (x, z, ∂L/∂z)."""
    h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    names = [name for name in params if name.startswith("Dense")] + ["head"]
    records, caches = [], []
    for name in names:
        kernel = np.asarray(params[name]["kernel"], np.float64)
        z = h @ kernel
        if "bias" in params[name]:
            z = z + np.asarray(params[name]["bias"], np.float64)
        records.append([h, z])
        if name == "head":
            break
        if batch_stats_mode:  # training-mode batch norm with γ = 1, β = 0
            centered = z - z.mean(0)
            std = np.sqrt(z.var(0) + EPSILON)
            normalized = centered / std
        else:
            normalized = z
        caches.append((z, normalized, std if batch_stats_mode else None, kernel))
        h = np.maximum(normalized, 0.0)
    logits = records[-1][1]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    grad = (probabilities - np.eye(logits.shape[1])[np.asarray(labels)]) / logits.shape[0]
    records[-1].append(grad)
    kernel_above = np.asarray(params["head"]["kernel"], np.float64)
    for record, (_, normalized, std, kernel) in zip(records[-2::-1], caches[::-1], strict=True):
        grad_h = grad @ kernel_above.T
        grad_n = grad_h * (normalized > 0)
        if std is None:
            grad = grad_n
        else:  # the backward pass of (z - mean) / std over the batch axis
            n = normalized
            grad = (grad_n - grad_n.mean(0) - n * (grad_n * n).mean(0)) / std
        record.append(grad)
        kernel_above = kernel
    return dict(zip(names, records, strict=True))


@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.slow
def test_mlp_matches_a_numpy_forward_and_backward_pass(getkey, perturb, use_batch_norm):
    model = MLP(features=(16, 8), num_classes=5, use_batch_norm=use_batch_norm)
    x, labels = _batch(getkey(), (32, 12), classes=5)
    variables = model.init(getkey(), x, train=False)
    if not use_batch_norm:  # random biases; with batch norm there are none, and γ = 1, β = 0
        variables = perturb(variables, getkey())
    params = variables["params"]
    signals = signal_propagation(model, variables, (x, labels), train=use_batch_norm)
    expected = _numpy_mlp(params, x, labels, batch_stats_mode=use_batch_norm)
    assert list(signals) == list(expected) == ["Dense_0", "Dense_1", "head"]
    for name, (inputs, outputs, grads) in expected.items():
        signal = signals[name]
        assert isinstance(signal, LayerSignal)
        assert all(value.dtype == jnp.float32 and value.shape == () for value in signal)
        actual = [float(value) for value in signal]
        wanted = [*_stats(inputs), *_stats(outputs), grads.std()]
        np.testing.assert_allclose(actual, wanted, rtol=2e-4, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_deep_relu_mlp_explodes_with_unit_normal_and_holds_with_he(getkey):
    width, depth = 128, 10
    x, labels = _batch(getkey(), (256, width))
    stds = {}
    for label, init in (("normal", normal(1.0)), ("he", he_normal())):
        model = MLP(features=(width,) * depth, kernel_init=init)
        variables = model.init(getkey(), x, train=False)
        signals = signal_propagation(model, variables, (x, labels))
        hidden = [signals[f"Dense_{i}"] for i in range(depth)]
        stds[label] = np.array([float(s.output_std) for s in hidden])
        if label == "he":
            grads = np.array([float(s.grad_std) for s in hidden])
    # Through a ReLU, Var(z_{l+1}) = width · Var(W) · Var(z_l) / 2: ×64 per layer with N(0, 1).
    growth = stds["normal"][1:] / stds["normal"][:-1]
    assert np.all((growth > 0.7 * np.sqrt(width / 2)) & (growth < 1.3 * np.sqrt(width / 2)))
    assert stds["normal"][-1] / stds["normal"][0] > 1e7  # ≈ 8⁹ ≈ 1.3e8
    # With He, Var(W) = 2 / width: the spread keeps its size, forwards and backwards.
    assert np.all((stds["he"] > 0.6 * stds["he"][0]) & (stds["he"] < 1.6 * stds["he"][0]))
    assert np.all((grads > 0.5 * grads[-1]) & (grads < 2.0 * grads[-1]))


@pytest.mark.slow
def test_cnn_in_training_mode_names_layers_and_measures_before_batch_norm(getkey):
    model = CNN(features=(4, 8), hidden=16, use_batch_norm=True)
    x, labels = _batch(getkey(), (8, 12, 12, 1))
    variables = model.init(getkey(), x, train=False)
    signals = signal_propagation(model, variables, (x, labels), train=True)
    assert list(signals) == ["Conv_0", "Conv_1", "Dense_0", "head"]
    kernel = variables["params"]["Conv_0"]["kernel"]
    z = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        [float(v) for v in signals["Conv_0"][:4]], [*_stats(x), *_stats(z)], rtol=1e-4
    )
    # The second conv's input is an average pool of φ(BN(z)), which has mean about E[relu(N(0,1))].
    assert 0.3 < float(signals["Conv_1"].input_mean) < 0.5
    logits = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    grad = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, 10)) / 8
    np.testing.assert_allclose(float(signals["head"].grad_std), float(grad.std()), rtol=1e-4)


@pytest.mark.slow
def test_resnet_reports_every_conv_in_call_order(getkey):
    model = ResNet(stage_sizes=(1, 1), width=4, use_batch_norm=True)
    x, labels = _batch(getkey(), (4, 8, 8, 1))
    variables = model.init(getkey(), x, train=False)
    signals = signal_propagation(model, variables, (x, labels), train=True)
    assert list(signals) == [
        "Conv_0",
        "ResidualBlock_0/Conv_0",
        "ResidualBlock_0/Conv_1",
        "ResidualBlock_1/Conv_0",
        "ResidualBlock_1/Conv_1",
        "ResidualBlock_1/projection",
        "head",
    ]
    values = np.array([[float(v) for v in signal] for signal in signals.values()])
    assert np.all(np.isfinite(values)) and np.all(values[:, [1, 3, 4]] > 0)


def test_a_module_called_twice_is_reported_for_each_call(getkey):
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            dense = nn.Dense(x.shape[-1])
            return nn.Dense(3, name="head")(dense(nn.relu(dense(x))))

    x, labels = _batch(getkey(), (8, 5), classes=3)
    model = Twice()
    variables = model.init(getkey(), x, train=False)
    signals = signal_propagation(model, variables, (x, labels))
    assert list(signals) == ["Dense_0", "Dense_0#1", "head"]
    dense = variables["params"]["Dense_0"]
    first_output = np.asarray(x) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(
        float(signals["Dense_0#1"].input_mean), np.maximum(first_output, 0).mean(), rtol=1e-5
    )


def test_bad_arguments_raise_naming_them(getkey):
    model = MLP(features=(4,))
    x, labels = _batch(getkey(), (4, 3))
    variables = model.init(getkey(), x, train=False)
    cases = [
        ((object(), variables, (x, labels)), {}, "model"),
        ((model, variables, x), {}, "batch"),
        ((model, variables, (x.astype(jnp.int32), labels)), {}, "images"),
        ((model, variables, (x, labels[:2])), {}, "labels"),
        ((model, variables, (x, labels)), {"train": 1}, "train"),
        ((model, variables, (x, labels)), {"rngs": getkey()}, "rngs"),
        ((model, variables, (x, labels)), {"loss_fn": "mse"}, "loss_fn"),
        ((model, variables, (x, labels)), {"layer_types": nn.Dense}, "layer_types"),
        ((model, variables, (x, labels)), {"layer_types": (nn.Conv,)}, "calls no layer"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            signal_propagation(*args, **kwargs)
