"""Tests for jaxtricks.models.lsuv: orthogonal kernels rescaled to unit output variance."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.models import CNN, MLP
from jaxtricks.models.lsuv import lsuv

TOLERANCE = 0.1


def _images(key, n=64):
    """MNIST-shaped made-up images, scaled to [0, 1) like the real ones."""
    # A flat draw: XLA on CPU compiles a 4-D draw many times more slowly.
    return jax.random.uniform(key, (n * 28 * 28,)).reshape((n, 28, 28, 1))


def _model(kind, use_batch_norm):
    if kind == "mlp":
        return MLP(features=(32, 16), use_batch_norm=use_batch_norm)
    return CNN(features=(4, 8), hidden=16, use_batch_norm=use_batch_norm)


def _layer_outputs(model, variables, x, train=False):
    """{module path: output} of every Dense and Conv call, read by an interceptor of its own."""
    outputs = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, nn.Dense | nn.Conv):
            outputs.setdefault("/".join(context.module.path), out)
        return out

    with nn.intercept_methods(record):
        model.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)
    return outputs


def _variances(model, variables, x, train=False):
    return {
        name: float(np.var(np.asarray(out, np.float64)))
        for name, out in _layer_outputs(model, variables, x, train).items()
    }


def _kernels(variables):
    return {
        "/".join(str(k.key) for k in path[:-1]): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if path[-1].key == "kernel"
    }


def _non_kernels(variables):
    return [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
        if path[-1].key != "kernel"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_layer_reaches_unit_output_variance(getkey, kind, use_batch_norm):
    model = _model(kind, use_batch_norm)
    x = _images(getkey())
    variables = model.init(getkey(), x, train=False)
    before = _variances(model, variables, x)
    # He init on [0, 1) pixels starts the first layer at Var ≈ 2 · E[x²] = 2/3: LSUV has work.
    assert any(abs(v - 1) >= TOLERANCE for v in before.values())
    result = lsuv(model, variables, x, key=getkey(), tolerance=TOLERANCE)
    after = _variances(model, result, x)
    assert sorted(after) == sorted(before) == sorted(_kernels(variables))
    for name, variance in after.items():
        assert abs(variance - 1) < TOLERANCE, (name, variance)
    # Only kernels change; biases and batch norm's variables are kept.
    for (path, new), (_, old) in zip(_non_kernels(result), _non_kernels(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old), err_msg=str(path))


def test_kernels_are_rescaled_orthogonal_matrices(getkey):
    model = _model("cnn", use_batch_norm=False)
    x = _images(getkey())
    result = lsuv(model, model.init(getkey(), x, train=False), x, key=getkey())
    for name, kernel in _kernels(result).items():
        matrix = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
        gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
        scale = np.mean(np.diag(gram))
        np.testing.assert_allclose(gram / scale, np.eye(gram.shape[0]), atol=1e-5, err_msg=name)


def test_training_mode_measures_with_batch_statistics(getkey):
    model = _model("mlp", use_batch_norm=True)
    x = _images(getkey())
    variables = model.init(getkey(), x, train=False)
    result = lsuv(model, variables, x, key=getkey(), train=True)
    for name, variance in _variances(model, result, x, train=True).items():
        assert abs(variance - 1) < TOLERANCE, (name, variance)


def test_biases_make_it_iterate_and_it_still_converges(getkey, perturb):
    model = _model("mlp", use_batch_norm=False)
    x = _images(getkey())
    variables = perturb(model.init(getkey(), x, train=False), getkey())  # biases ~ N(0, 0.3²)
    result = lsuv(model, variables, x, key=getkey(), tolerance=0.02)
    for name, variance in _variances(model, result, x).items():
        assert abs(variance - 1) < 0.02, (name, variance)


def test_the_key_decides_the_kernels(getkey):
    model = _model("mlp", use_batch_norm=False)
    x = _images(getkey(), n=16)
    variables = model.init(getkey(), x, train=False)
    key = getkey()
    first, again = lsuv(model, variables, x, key=key), lsuv(model, variables, x, key=key)
    other = lsuv(model, variables, x, key=getkey())
    for name, kernel in _kernels(first).items():
        np.testing.assert_array_equal(np.asarray(kernel), np.asarray(_kernels(again)[name]))
        assert not np.allclose(np.asarray(kernel), np.asarray(_kernels(other)[name]))


def test_a_frozen_dict_gives_a_frozen_dict(getkey):
    model = _model("mlp", use_batch_norm=False)
    x = _images(getkey(), n=16)
    variables = flax.core.freeze(model.init(getkey(), x, train=False))
    assert isinstance(lsuv(model, variables, x, key=getkey()), flax.core.FrozenDict)


def test_an_unreachable_variance_warns(getkey):
    model = _model("mlp", use_batch_norm=False)
    x = _images(getkey(), n=16)
    variables = model.init(getkey(), x, train=False)
    # Biases spread with variance 9 across units: no kernel scale brings Var(z) down to 1.
    bias = variables["params"]["Dense_0"]["bias"]
    spread = 3.0 * jax.random.normal(getkey(), bias.shape)
    params = {**variables["params"], "Dense_0": {**variables["params"]["Dense_0"], "bias": spread}}
    with pytest.warns(RuntimeWarning, match="layer Dense_0 .* after 2 rescalings"):
        lsuv(model, {"params": params}, x, key=getkey(), max_iterations=2)


def test_a_constant_batch_is_refused(getkey):
    model = _model("mlp", use_batch_norm=False)
    x = jnp.zeros((4, 28, 28, 1))
    variables = model.init(getkey(), x, train=False)
    with pytest.raises(ValueError, match="x: the output of layer Dense_0 has variance 0"):
        lsuv(model, variables, x, key=getkey())


def test_bad_arguments_raise_naming_them(getkey):
    model = _model("mlp", use_batch_norm=False)
    x = _images(getkey(), n=4)
    variables = model.init(getkey(), x, train=False)
    key = getkey()
    cases = [
        ((object(), variables, x), {"key": key}, "model"),
        ((model, {"batch_stats": {}}, x), {"key": key}, "variables"),
        ((model, variables, x.astype(jnp.int32)), {"key": key}, "x must be"),
        ((model, variables, x), {"key": 0}, "key"),
        ((model, variables, x), {"key": jax.random.split(key)}, "key"),
        ((model, variables, x), {"key": key, "tolerance": 0.0}, "tolerance"),
        ((model, variables, x), {"key": key, "tolerance": 1.0}, "tolerance"),
        ((model, variables, x), {"key": key, "tolerance": float("nan")}, "tolerance"),
        ((model, variables, x), {"key": key, "max_iterations": 0}, "max_iterations"),
        ((model, variables, x), {"key": key, "max_iterations": 2.5}, "max_iterations"),
        ((model, variables, x), {"key": key, "max_iterations": True}, "max_iterations"),
        ((model, variables, x), {"key": key, "train": "yes"}, "train"),
        ((model, variables, x), {"key": key, "layer_types": ()}, "layer_types"),
        ((model, variables, x), {"key": key, "layer_types": (nn.Conv,)}, "calls no layer"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            lsuv(*args, **kwargs)
    with pytest.raises(TypeError, match="key"):
        lsuv(model, variables, x)


@pytest.mark.slow
@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_unit_variance_on_real_mnist(kind, use_batch_norm):
    from jaxtricks.data import load

    images = load("mnist", download=False).train_images[:512]
    x = jnp.asarray(images, jnp.float32)[..., None] / 255.0
    model = MLP(use_batch_norm=use_batch_norm) if kind == "mlp" else CNN(
        use_batch_norm=use_batch_norm
    )
    variables = model.init(jax.random.key(0), x, train=False)
    result = lsuv(model, variables, x, key=jax.random.key(1))
    variances = _variances(model, result, x)
    assert len(variances) == len(_kernels(variables))
    for name, variance in variances.items():
        assert abs(variance - 1) < TOLERANCE, (name, variance)
