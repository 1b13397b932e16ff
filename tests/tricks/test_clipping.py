"""Tests for jaxtricks.tricks.clipping: by value, by each leaf's norm, by the global norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.clipping import clip_by_global_norm, clip_by_norm, clip_by_value

DTYPES = [jnp.float32, jnp.bfloat16]
# bfloat16 keeps 8 significant bits: results are exact to a relative 2⁻⁸ of the largest value.
RTOL = {jnp.float32: 1e-6, jnp.bfloat16: 2**-7}


def _tree(scale, dtype=jnp.float32, seed=0):
    """A small pytree of mixed shapes (with a zero-size and a None leaf), entries ~ ``scale``."""
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((3, 2)) * scale, dtype),
        "b": jnp.asarray(rng.standard_normal(4) * scale, dtype),
        "s": jnp.asarray(rng.standard_normal(()) * scale, dtype),
        "empty": jnp.zeros((0, 2), dtype),
        "frozen": None,
    }


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _norm(tree):
    return np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(_np(tree))))


def _apply(tx, grads, steps=1):
    state = tx.init(grads)
    for _ in range(steps):
        out, state = tx.update(grads, state)
    return out


# --- clip_by_value ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_value_bounds_every_coordinate_and_equals_numpy_clip(dtype):
    grads = _tree(3.0, dtype)
    out = jax.jit(_apply, static_argnums=0)(clip_by_value(1.5), grads)
    for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True):
        assert o.dtype == dtype and o.shape == g.shape
        assert np.all(np.abs(np.asarray(o, np.float64)) <= 1.5)
        np.testing.assert_array_equal(
            np.asarray(o, np.float64), np.clip(np.asarray(g, np.float64), -1.5, 1.5)
        )
    assert out["frozen"] is None
    # with entries ~ 3, both ends were hit and something was left inside
    flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(out)])
    assert np.any(flat == 1.5) and np.any(flat == -1.5) and np.any(np.abs(flat) < 1.5)


def test_clip_by_value_threshold_schedule_is_read_at_each_step():
    tx = clip_by_value(lambda count: jnp.where(count < 2, 1.0, 0.25))
    state = tx.init(None)
    grads = jnp.array([-3.0, 0.5, 2.0])
    for bound in (1.0, 1.0, 0.25, 0.25):
        out, state = tx.update(grads, state)
        np.testing.assert_array_equal(np.asarray(out), np.clip([-3.0, 0.5, 2.0], -bound, bound))


# --- clip_by_norm -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_norm_bounds_each_leaf_and_leaves_small_leaves_alone(dtype):
    grads = {
        "big": jnp.asarray([3.0, -4.0], dtype),  # norm 5
        "small": jnp.asarray([[0.3, 0.4]], dtype),  # norm 0.5
        "zero": jnp.zeros(3, dtype),
        "empty": jnp.zeros((0,), dtype),
        "frozen": None,
    }
    out = jax.jit(_apply, static_argnums=0)(clip_by_norm(2.0), grads)
    for leaf in jax.tree.leaves(out):
        assert leaf.dtype == dtype
    # 5 > 2: rescaled to norm 2, same direction; the others are returned bit for bit.
    np.testing.assert_allclose(np.asarray(out["big"], np.float64), [1.2, -1.6], rtol=RTOL[dtype])
    np.testing.assert_array_equal(np.asarray(out["small"]), np.asarray(grads["small"]))
    np.testing.assert_array_equal(np.asarray(out["zero"]), np.zeros(3, dtype))
    assert out["empty"].shape == (0,)
    assert out["frozen"] is None


def test_clip_by_norm_on_random_leaves_equals_numpy():
    grads = _tree(1.0)
    out = _apply(clip_by_norm(1.2), grads)
    for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(_np(grads)), strict=True):
        norm = np.sqrt(np.sum(g**2))
        expected = g * min(1.0, 1.2 / norm) if norm > 0 else g
        np.testing.assert_allclose(np.asarray(o, np.float64), expected, rtol=1e-6)
        assert np.sqrt(np.sum(np.asarray(o, np.float64) ** 2)) <= 1.2 * (1 + 1e-6)


# --- clip_by_global_norm ------------------------------------------------------------------


# One compiled update per dtype, shared by the tests below.
GLOBAL_CLIP = clip_by_global_norm(1.0)
GLOBAL_CLIP_UPDATE = jax.jit(GLOBAL_CLIP.update)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_global_norm_bounds_the_norm_and_keeps_direction(dtype):
    state = GLOBAL_CLIP.init(None)
    for seed, scale in enumerate([1e-3, 0.3, 1.0, 30.0, 1e4]):
        grads = _tree(scale, dtype, seed)
        out, _ = GLOBAL_CLIP_UPDATE(grads, state)
        for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True):
            assert o.dtype == g.dtype and o.shape == g.shape
        norm = _norm(grads)
        # Never above the threshold, up to the rounding of the dtype's last bit.
        assert _norm(out) <= 1.0 * (1 + RTOL[dtype])
        factor = min(1.0, 1.0 / norm)
        for o, g in zip(jax.tree.leaves(_np(out)), jax.tree.leaves(_np(grads)), strict=True):
            # the same direction: a positive multiple of the gradient
            np.testing.assert_allclose(o, g * factor, rtol=RTOL[dtype], atol=0)
        if norm < 1.0:
            for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True):
                np.testing.assert_array_equal(np.asarray(o), np.asarray(g))
        else:
            assert _norm(out) == pytest.approx(1.0, rel=RTOL[dtype])


def test_clip_by_global_norm_equals_optax(allclose):
    # Optax's arithmetic needs standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        theirs = jax.jit(optax.clip_by_global_norm(1.0).update)
    for scale in (5.0, 0.05):  # above and below the threshold
        grads = {"a": _tree(scale), "b": _tree(scale / 10, seed=1)}
        mine, _ = GLOBAL_CLIP_UPDATE(grads, GLOBAL_CLIP.init(None))
        with jax.numpy_dtype_promotion("standard"):
            reference, _ = theirs(grads, optax.EmptyState())
        allclose(mine, reference, rtol=1e-6)


def test_clip_by_global_norm_threshold_schedule_is_read_at_each_step():
    tx = clip_by_global_norm(lambda count: jnp.where(count < 2, 10.0, 1.0))
    state = tx.init(None)
    grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # norm 5
    for step in range(4):
        out, state = tx.update(grads, state)
        expected = [3.0, 4.0] if step < 2 else [0.6, 0.8]
        np.testing.assert_allclose(
            [float(out["a"][0]), float(out["b"][0])], expected, rtol=1e-6, err_msg=f"{step}"
        )
