"""Tests for jaxtricks.tricks.normalized_gradient: the lesson's ``∇L / ‖∇L‖``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.normalized_gradient import normalize_by_global_norm

EPS = 1e-6
NORMALIZE = normalize_by_global_norm(EPS)
NORMALIZE_UPDATE = jax.jit(NORMALIZE.update)  # compiled once per dtype


def _tree(scale, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((3, 2)) * scale, dtype),
        "b": [jnp.asarray(rng.standard_normal(4) * scale, dtype), None],
        "empty": jnp.zeros((0,), dtype),
    }


def _leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _norm(tree):
    return np.sqrt(sum(np.sum(x**2) for x in _leaves64(tree)))


@pytest.mark.parametrize(("dtype", "rtol"), [(jnp.float32, 1e-6), (jnp.bfloat16, 2**-7)])
def test_output_is_the_gradient_over_its_norm_plus_eps(dtype, rtol):
    for seed, scale in enumerate([1e-4, 1.0, 1e3]):
        grads = _tree(scale, dtype, seed)
        out, _ = NORMALIZE_UPDATE(grads, NORMALIZE.init(None))
        assert jax.tree.structure(out) == jax.tree.structure(grads)
        for o in jax.tree.leaves(out):
            assert o.dtype == dtype
        norm = _norm(grads)
        for o, g in zip(_leaves64(out), _leaves64(grads), strict=True):
            np.testing.assert_allclose(o, g / (norm + EPS), rtol=rtol)
        # unit length, short of it by ε / (‖g‖ + ε), which is visible only for tiny gradients
        assert _norm(out) == pytest.approx(norm / (norm + EPS), rel=rtol)
        assert abs(_norm(out) - 1.0) <= EPS / (norm + EPS) + rtol


def test_zero_gradient_stays_zero():
    grads = {"w": jnp.zeros((3, 2)), "b": [jnp.zeros(4), None], "empty": jnp.zeros((0,))}
    out, _ = NORMALIZE_UPDATE(grads, NORMALIZE.init(None))
    for o in jax.tree.leaves(out):
        np.testing.assert_array_equal(np.asarray(o), np.zeros(o.shape, np.float32))


def test_equals_optax_normalize_by_update_norm(allclose):
    # Optax's arithmetic needs standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        theirs = jax.jit(optax.normalize_by_update_norm(scale_factor=1.0, eps=EPS).update)
    for seed, scale in enumerate([1e-3, 1.0, 50.0]):
        grads = _tree(scale, seed=seed)
        mine, _ = NORMALIZE_UPDATE(grads, NORMALIZE.init(None))
        with jax.numpy_dtype_promotion("standard"):
            reference, _ = theirs(grads, optax.EmptyState())
        allclose(mine, reference, rtol=1e-6)


def test_eps_schedule_is_read_at_each_step():
    tx = normalize_by_global_norm(lambda count: jnp.where(count < 2, 1e-6, 5.0))
    state = tx.init(None)
    grads = jnp.array([3.0, 4.0])
    for step in range(4):
        out, state = tx.update(grads, state)
        eps = 1e-6 if step < 2 else 5.0
        np.testing.assert_allclose(np.asarray(out), np.array([3.0, 4.0]) / (5.0 + eps), rtol=1e-6)
