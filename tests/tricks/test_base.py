"""Tests for jaxtricks.tricks.base: stateless transforms, the schedules' step count, zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.base import stateless_unless_scheduled, zeros_like_tree
from jaxtricks.tricks.clipping import clip, clip_by_global_norm, clip_by_norm
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.normalized_gradient import normalize_by_update_norm
from jaxtricks.tricks.weight_decay import WeightDecaySchedule, add_decayed_weights

INT32_MAX = np.iinfo(np.int32).max

# Each stateless transform, built from a number and from a schedule (count -> number).
STATELESS = {
    "clip": clip,
    "clip_by_norm": clip_by_norm,
    "clip_by_global_norm": clip_by_global_norm,
    "normalize_by_update_norm": normalize_by_update_norm,
    "scale_by_learning_rate": scale_by_learning_rate,
    "add_decayed_weights": add_decayed_weights,
}
PARAMS = {"w": jnp.array([0.5, -2.0])}
GRADS = {"w": jnp.array([1.0, 3.0])}


@pytest.mark.parametrize("name", list(STATELESS))
def test_with_a_number_the_state_is_optax_empty_state_and_none_works(name):
    tx = STATELESS[name](0.5)
    state = tx.init(PARAMS)
    assert state == optax.EmptyState()
    with_state, new_state = tx.update(GRADS, state, PARAMS)
    assert new_state == optax.EmptyState()
    # As in Optax, a stateless transform never reads its state.
    without_state, none = tx.update(GRADS, None, PARAMS)
    assert none is None
    np.testing.assert_array_equal(np.asarray(without_state["w"]), np.asarray(with_state["w"]))


@pytest.mark.parametrize("name", list(STATELESS))
def test_with_a_schedule_the_state_counts_steps_and_saturates(name):
    tx = STATELESS[name](lambda count: 0.5)
    state = tx.init(PARAMS)
    expected_type = optax.ScaleByScheduleState
    if name == "add_decayed_weights":
        expected_type = WeightDecaySchedule
    assert type(state) is expected_type
    for expected in (1, 2, 3):
        _, state = tx.update(GRADS, state, PARAMS)
        assert int(state.count) == expected
    # At the largest int32 the counter stays put instead of wrapping to a negative step.
    _, state = tx.update(GRADS, expected_type(count=jnp.asarray(INT32_MAX, jnp.int32)), PARAMS)
    assert state.count.dtype == jnp.int32
    assert int(state.count) == INT32_MAX


def test_stateless_unless_scheduled_reads_each_schedule_at_the_count():
    seen = []

    def update(updates, params, a, b):
        seen.append((float(a), b))
        return updates

    tx = stateless_unless_scheduled(update, {"a": lambda count: 2 * count, "b": "fixed"})
    state = tx.init(None)
    for _ in range(3):
        _, state = tx.update(GRADS, state, unexpected_extra_argument=1)
    assert seen == [(0.0, "fixed"), (2.0, "fixed"), (4.0, "fixed")]


def test_stateless_unless_scheduled_can_check_the_params():
    tx = stateless_unless_scheduled(lambda updates, params: updates, {}, check_params=True)
    assert tx.init({"w": jnp.ones(2, jnp.complex64)}) == optax.EmptyState()
    with pytest.raises(TypeError, match="params must hold floating-point"):
        tx.init({"w": jnp.ones(2, jnp.int32)})


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
