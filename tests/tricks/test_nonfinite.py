"""Tests for jaxtricks.tricks.nonfinite: a NaN or Inf gradient becomes a skipped step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import AdamState, scale_by_adam
from jaxtricks.tricks.clipping import clip_by_global_norm
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.nonfinite import SkipNonfiniteState, skip_nonfinite
from jaxtricks.tricks.weight_decay import add_decayed_weights

# A whole AdamW-like chain inside, so that params are passed through and every stage has
# state (the moments and the counters that schedules read).
TX = skip_nonfinite(
    optax.chain(
        clip_by_global_norm(1.0),
        scale_by_adam(),
        add_decayed_weights(0.01),
        scale_by_learning_rate(0.1),
    )
)
UPDATE = jax.jit(TX.update)  # one compile, shared by every test below

PARAMS = {"w": jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]), "b": jnp.array([0.1, 0.2])}


def _grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), PARAMS)


def _poison(grads, value):
    return {**grads, "w": grads["w"].at[1, 2].set(value)}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _adam_state(state):
    return state.inner_state[1]


def test_a_bad_gradient_gives_a_zero_update_and_leaves_the_inner_state_untouched():
    state = TX.init(PARAMS)
    _, state = UPDATE(_grads(0), state, PARAMS)
    before = state.inner_state
    counts = [(0, 0)]
    for bad in (np.nan, np.inf, -np.inf):
        updates, state = UPDATE(_poison(_grads(1), bad), state, PARAMS)
        for u in jax.tree.leaves(updates):
            np.testing.assert_array_equal(np.asarray(u), np.zeros(u.shape, np.float32))
        # bit for bit: Adam's moments and every counter, so schedules do not advance either
        _assert_trees_equal(state.inner_state, before)
        assert isinstance(_adam_state(state), AdamState)
        assert int(_adam_state(state).count) == 1
        assert not bool(state.last_finite)
        counts.append((int(state.skipped), int(state.consecutive)))
    assert counts == [(0, 0), (1, 1), (2, 2), (3, 3)]
    _, state = UPDATE(_grads(2), state, PARAMS)
    assert isinstance(state, SkipNonfiniteState)
    assert (int(state.skipped), int(state.consecutive), bool(state.last_finite)) == (3, 0, True)
    assert int(_adam_state(state).count) == 2


def test_training_goes_on_as_if_the_bad_steps_never_happened():
    clean = [_grads(s) for s in range(4)]
    with_bad = [clean[0], _poison(clean[1], np.nan), clean[1], _poison(clean[2], np.inf)]
    with_bad += [clean[2], clean[3]]

    def train(sequence):
        params, state, finite_steps = PARAMS, TX.init(PARAMS), []
        for grads in sequence:
            updates, state = UPDATE(grads, state, params)
            params = optax.apply_updates(params, updates)
            if bool(state.last_finite):
                finite_steps.append((updates, state.inner_state))
        return params, finite_steps, state

    params_clean, steps_clean, state_clean = train(clean)
    params_bad, steps_bad, state_bad = train(with_bad)
    assert len(steps_bad) == len(steps_clean) == 4
    for (u_clean, s_clean), (u_bad, s_bad) in zip(steps_clean, steps_bad, strict=True):
        _assert_trees_equal(u_bad, u_clean)
        _assert_trees_equal(s_bad, s_clean)
    _assert_trees_equal(params_bad, params_clean)
    assert int(state_bad.skipped) == 2 and int(state_clean.skipped) == 0
    # and the steps did move the parameters
    assert not np.allclose(np.asarray(params_clean["w"]), np.asarray(PARAMS["w"]))


def test_eager_with_none_leaves_and_a_plain_inner_transform():
    tx = skip_nonfinite(scale_by_learning_rate(0.5))
    grads = {"w": jnp.array([1.0, jnp.nan]), "frozen": None}
    state = tx.init(grads)
    updates, state = tx.update(grads, state)
    assert updates["frozen"] is None
    np.testing.assert_array_equal(np.asarray(updates["w"]), [0.0, 0.0])
    assert int(state.inner_state.count) == 0 and int(state.skipped) == 1
    updates, state = tx.update({"w": jnp.array([1.0, 2.0]), "frozen": None}, state)
    np.testing.assert_array_equal(np.asarray(updates["w"]), [-0.5, -1.0])
    assert int(state.inner_state.count) == 1 and int(state.consecutive) == 0


def test_refuses_an_inner_that_is_not_a_transform():
    with pytest.raises(TypeError, match=r"^inner must be an optax\.GradientTransformation, got"):
        skip_nonfinite(lambda grads: grads)
