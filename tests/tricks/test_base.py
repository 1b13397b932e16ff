"""Tests for jaxtricks.tricks.base: the step counter and zero-filled state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks.base import CountState, init_count, zeros_like_tree
from jaxtricks.tricks.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.normalized_gradient import normalize_by_global_norm
from jaxtricks.tricks.weight_decay import add_decayed_weights

INT32_MAX = np.iinfo(np.int32).max

COUNT_TRANSFORMS = {
    "clip_by_value": lambda: clip_by_value(1.0),
    "clip_by_norm": lambda: clip_by_norm(1.0),
    "clip_by_global_norm": lambda: clip_by_global_norm(1.0),
    "normalize_by_global_norm": lambda: normalize_by_global_norm(),
    "scale_by_learning_rate": lambda: scale_by_learning_rate(0.1),
    "add_decayed_weights": lambda: add_decayed_weights(0.1),
}


@pytest.mark.parametrize("params", [None, jnp.ones(3), {"a": jnp.ones((2, 2)), "b": None}])
def test_init_count_starts_at_zero_whatever_the_params(params):
    state = init_count(params)
    assert isinstance(state, CountState)
    assert state.count.shape == ()
    assert state.count.dtype == jnp.int32
    assert int(state.count) == 0


@pytest.mark.parametrize("name", list(COUNT_TRANSFORMS))
def test_count_state_transforms_count_steps_and_saturate(name):
    tx = COUNT_TRANSFORMS[name]()
    params = {"w": jnp.array([0.5, -2.0])}
    grads = {"w": jnp.array([1.0, 3.0])}
    state = tx.init(params)
    for expected in (1, 2, 3):
        _, state = tx.update(grads, state, params)
        assert int(state.count) == expected
    # At the largest int32 the counter stays put instead of wrapping to a negative step.
    _, state = tx.update(grads, CountState(count=jnp.asarray(INT32_MAX, jnp.int32)), params)
    assert state.count.dtype == jnp.int32
    assert int(state.count) == INT32_MAX


def test_zeros_like_tree_keeps_structure_shapes_and_each_leaf_dtype():
    params = {
        "kernel": jnp.ones((2, 3), jnp.float32),
        "scale": jnp.ones((), jnp.bfloat16),
        "half": [jnp.ones((4,), jnp.float16)],
        "empty": jnp.ones((0, 5)),
        "frozen": None,
    }
    zeros = zeros_like_tree(params)
    assert jax.tree.structure(zeros) == jax.tree.structure(params)
    for z, p in zip(jax.tree.leaves(zeros), jax.tree.leaves(params), strict=True):
        assert z.shape == p.shape
        assert z.dtype == p.dtype
        assert not np.any(np.asarray(z, np.float32))
    assert zeros["frozen"] is None


def test_zeros_like_tree_with_dtype_overrides_every_leaf():
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones((2, 2), jnp.float32)}
    zeros = zeros_like_tree(params, jnp.float32)
    assert [z.dtype for z in jax.tree.leaves(zeros)] == [jnp.float32, jnp.float32]
    zeros = zeros_like_tree(params, jnp.bfloat16)
    assert [z.dtype for z in jax.tree.leaves(zeros)] == [jnp.bfloat16, jnp.bfloat16]
