"""Pieces shared by the model tests: batch norm by hand, non-trivial variables, layer inputs."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

# Flax's default, which the models keep.
EPSILON = 1e-5


def reference_batch_norm(z, scale, bias, mean=None, var=None):
    """γ (z - μ) / sqrt(σ² + ε) + β over all axes but the last; batch statistics if μ is None."""
    axes = tuple(range(z.ndim - 1))
    if mean is None:
        mean, var = z.mean(axes), z.var(axes)
    shape = (1,) * (z.ndim - 1) + (-1,)
    normalized = (z - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + EPSILON)
    return normalized * scale.reshape(shape) + bias.reshape(shape)


def perturbed(variables, key):
    """Variables with random batch-norm scales, shifts, running means and variances and biases.

    Initial values (γ = 1, β = 0, μ = 0, σ² = 1, b = 0) would hide a missing or misplaced term.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(leaves))
    new_leaves = []
    for (path, leaf), leaf_key in zip(leaves, keys, strict=True):
        name = path[-1].key
        if name in ("scale", "var"):
            leaf = 1.0 + 0.3 * jnp.tanh(jax.random.normal(leaf_key, leaf.shape, leaf.dtype))
        elif name in ("bias", "mean"):
            leaf = 0.3 * jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
        new_leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


@pytest.fixture
def batch_norm():
    """:func:`reference_batch_norm` as a fixture."""
    return reference_batch_norm


@pytest.fixture
def perturb():
    """:func:`perturbed` as a fixture."""
    return perturbed


@contextlib.contextmanager
def recording_inputs():
    """Records the first argument of every submodule call, as lists keyed by the module's path.

    What a layer receives, e.g. the head's input after dropout, rather than what the layer
    before it returned.
    """
    inputs = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:
            inputs.setdefault("/".join(context.module.path), []).append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield inputs


@pytest.fixture
def record_inputs():
    """:func:`recording_inputs` as a fixture."""
    return recording_inputs
