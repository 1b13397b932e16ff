"""Tests for jaxtricks.tricks.nonfinite: a NaN or Inf gradient becomes a skipped step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import scale_by_adam
from jaxtricks.tricks.clipping import clip_by_global_norm
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.nonfinite import apply_if_finite, skip_nonfinite
from jaxtricks.tricks.optimizers import sgd
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
        assert isinstance(_adam_state(state), optax.ScaleByAdamState)
        assert int(_adam_state(state).count) == 1
        assert not bool(state.last_finite)
        counts.append((int(state.total_notfinite), int(state.notfinite_count)))
    assert counts == [(0, 0), (1, 1), (2, 2), (3, 3)]
    _, state = UPDATE(_grads(2), state, PARAMS)
    assert isinstance(state, optax.ApplyIfFiniteState)
    summary = (int(state.total_notfinite), int(state.notfinite_count), bool(state.last_finite))
    assert summary == (3, 0, True)
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
    assert int(state_bad.total_notfinite) == 2 and int(state_clean.total_notfinite) == 0
    # and the steps did move the parameters
    assert not np.allclose(np.asarray(params_clean["w"]), np.asarray(PARAMS["w"]))


def test_eager_with_none_leaves_and_a_plain_inner_transform():
    tx = skip_nonfinite(scale_by_learning_rate(lambda count: 0.5))
    grads = {"w": jnp.array([1.0, jnp.nan]), "frozen": None}
    state = tx.init(grads)
    updates, state = tx.update(grads, state)
    assert updates["frozen"] is None
    np.testing.assert_array_equal(np.asarray(updates["w"]), [0.0, 0.0])
    assert int(state.inner_state.count) == 0 and int(state.total_notfinite) == 1
    updates, state = tx.update({"w": jnp.array([1.0, 2.0]), "frozen": None}, state)
    np.testing.assert_array_equal(np.asarray(updates["w"]), [-0.5, -1.0])
    assert int(state.inner_state.count) == 1 and int(state.notfinite_count) == 0


def test_skip_nonfinite_never_gives_up():
    tx = skip_nonfinite(sgd(1.0))
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(2))
    for _ in range(20):
        updates, state = update(jnp.array([jnp.nan, 1.0]), state)
        np.testing.assert_array_equal(np.asarray(updates), [0.0, 0.0])
    assert int(state.notfinite_count) == 20


@pytest.mark.parametrize("max_consecutive_errors", [0, 2])
def test_apply_if_finite_gives_up_after_max_consecutive_errors_as_optax(max_consecutive_errors):
    sequence = [1.0, np.nan, np.nan, np.nan, 2.0, np.inf, 3.0]
    ours = apply_if_finite(sgd(0.5, momentum=0.9), max_consecutive_errors)
    theirs = optax.apply_if_finite(optax.sgd(0.5, momentum=0.9), max_consecutive_errors)
    ours_state, theirs_state = ours.init(jnp.zeros(2)), theirs.init(jnp.zeros(2))
    with jax.numpy_dtype_promotion("standard"):  # Optax's arithmetic mixes dtypes
        for value in sequence:
            grads = jnp.array([value, 1.0])
            ours_updates, ours_state = ours.update(grads, ours_state)
            theirs_updates, theirs_state = theirs.update(grads, theirs_state)
            np.testing.assert_array_equal(np.asarray(ours_updates), np.asarray(theirs_updates))
            _assert_trees_equal(ours_state, theirs_state)
    assert int(ours_state.total_notfinite) == 4


def test_apply_if_finite_passes_extra_arguments_to_the_inner_transform():
    seen = {}

    def update(updates, state, params=None, *, loss):
        seen["loss"] = loss
        return updates, state

    inner = optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
    tx = apply_if_finite(inner, 1)
    tx.update(jnp.ones(1), tx.init(jnp.ones(1)), loss=3.0)
    assert seen == {"loss": 3.0}


def test_apply_if_finite_refuses_a_negative_or_fractional_count():
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=r"^max_consecutive_errors must be an integer"):
            apply_if_finite(sgd(0.1), bad)


def test_refuses_an_inner_that_is_not_a_transform():
    with pytest.raises(TypeError, match=r"^inner must be an optax\.GradientTransformation, got"):
        skip_nonfinite(lambda grads: grads)
