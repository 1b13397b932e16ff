"""Tests for jaxtricks.tricks.plateau: the scale drops after patience, cooldown, min scale.

The epoch-level machinery (``epoch_plateau``, ``scale_by_plateau``, ``update_plateau``) and
Optax's per-call transform (``reduce_on_plateau``), the latter step by step against
``optax.contrib.reduce_on_plateau``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.plateau import (
    PlateauState,
    epoch_plateau,
    plateau_states,
    reduce_on_plateau,
    scale_by_plateau,
    update_plateau,
)


def scales(plateau, metrics):
    """The scale after each observed metric."""
    state, out = plateau.init(), []
    for metric in metrics:
        state = plateau.update(state, metric)
        out.append(float(state.scale))
    return out


def reference(metrics, factor, patience, mode="min", min_delta=0.0, cooldown=0, min_scale=0.0):
    """A plain-Python rendering of the rule, in float32 like the state."""
    sign = 1 if mode == "min" else -1
    scale, best, wait, cooldown_left, out = np.float32(1), sign * np.inf, 0, 0, []
    for metric in metrics:
        improved = sign * metric < sign * best - min_delta
        if improved:
            best = metric
        wait = 0 if improved or cooldown_left > 0 else wait + 1
        cooldown_left = max(cooldown_left - 1, 0)
        if wait >= patience:
            scale = max(scale * np.float32(factor), np.float32(min_scale))
            wait, cooldown_left = 0, cooldown
        out.append(float(scale))
    return out


def test_scale_drops_by_factor_after_patience_epochs_without_improvement():
    flat = [1.0] * 7
    # Epoch 1 improves on +inf; epochs 2-4 do not: drop at 4, again at 7.
    assert scales(epoch_plateau(factor=0.5, patience=3), flat) == [
        1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25,
    ]  # fmt: skip


def test_improvement_restarts_the_count():
    # Every other epoch improves, so two in a row never fail until the last two.
    losses = [1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.7, 0.75, 0.8]
    assert scales(epoch_plateau(factor=0.5, patience=2), losses) == [1.0] * 8 + [0.5]
    assert reference(losses, 0.5, 2) == [1.0] * 8 + [0.5]


def test_cooldown_ignores_epochs_after_a_reduction():
    flat = [1.0] * 8
    # Patience 1 drops at every non-improving epoch; cooldown 2 skips two after each drop.
    got = scales(epoch_plateau(factor=0.5, patience=1, cooldown=2), flat)
    assert got == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert got == reference(flat, 0.5, 1, cooldown=2)
    assert scales(epoch_plateau(factor=0.5, patience=1), flat[:4]) == [1.0, 0.5, 0.25, 0.125]


def test_scale_never_goes_below_min_scale():
    got = scales(epoch_plateau(factor=0.1, patience=1, min_scale=0.005), [1.0] * 5)
    tenth = np.float32(0.1)
    assert got == [1.0, tenth, tenth * tenth, np.float32(0.005), np.float32(0.005)]
    assert got == reference([1.0] * 5, 0.1, 1, min_scale=0.005)


def test_max_mode_and_min_delta():
    accuracies = [0.5, 0.6, 0.605, 0.61, 0.7, 0.7]
    plateau = epoch_plateau(factor=0.5, patience=2, mode="max", min_delta=0.02)
    got = scales(plateau, accuracies)
    # 0.605 and 0.61 are within 0.02 of 0.6: drop at epoch 4; 0.7 improves.
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert got == reference(accuracies, 0.5, 2, mode="max", min_delta=0.02)


def test_jit_and_scan_match_the_reference():
    metrics = np.asarray([3.0, 2.0, 2.5, 2.4, 2.2, 1.0, 1.5, 1.6, 1.7, 1.8, 1.9], np.float32)
    plateau = epoch_plateau(factor=0.3, patience=2, cooldown=1, min_scale=0.05)
    expected = reference(metrics.tolist(), 0.3, 2, cooldown=1, min_scale=0.05)
    update = jax.jit(plateau.update)
    state, jitted = plateau.init(), []
    for metric in metrics:
        state = update(state, metric)
        jitted.append(float(state.scale))
    assert jitted == expected

    def body(state, metric):
        state = plateau.update(state, metric)
        return state, state.scale

    _, scanned = jax.lax.scan(body, plateau.init(), metrics)
    assert scanned.tolist() == expected


def test_scale_by_plateau_multiplies_the_updates_by_the_scale():
    plateau = epoch_plateau(factor=0.25, patience=1)
    tx = optax.chain(optax.sgd(0.1), scale_by_plateau(plateau))
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2, jnp.bfloat16)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    opt_state = tx.init(params)
    before, _ = tx.update(grads, opt_state)
    for metric in (1.0, 1.0):  # one improvement, then a plateau: scale 0.25
        opt_state = update_plateau(opt_state, plateau, metric)
    (state,) = plateau_states(opt_state)
    assert float(state.scale) == 0.25
    after, new_state = jax.jit(tx.update)(grads, opt_state)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), 0.25 * np.asarray(b, np.float32))
    # The transform itself never moves the scale; only update_plateau does.
    assert float(plateau_states(new_state)[0].scale) == 0.25


def test_update_plateau_leaves_the_rest_of_the_state_alone():
    plateau = epoch_plateau()
    tx = optax.chain(optax.trace(0.9), optax.scale(-0.1), scale_by_plateau(plateau))
    opt_state = tx.init(jnp.ones(3))
    _, opt_state = tx.update(jnp.ones(3), opt_state)
    updated = update_plateau(opt_state, plateau, 0.5)
    assert updated[0].trace is opt_state[0].trace
    assert isinstance(updated[2], PlateauState)
    assert int(updated[2].count) == 1 and float(updated[2].best_metric) == 0.5


def test_update_plateau_needs_a_plateau_state():
    with pytest.raises(ValueError, match="scale_by_plateau"):
        update_plateau(optax.sgd(0.1).init(jnp.ones(2)), epoch_plateau(), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"factor": 1.0}, "factor"),
        ({"factor": 0.0}, "factor"),
        ({"patience": 0}, "patience"),
        ({"mode": "down"}, "mode"),
        ({"min_delta": -1.0}, "min_delta"),
        ({"cooldown": -1}, "cooldown"),
        ({"min_scale": 1.5}, "min_scale"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        epoch_plateau(**kwargs)


def test_scale_by_plateau_needs_a_plateau():
    with pytest.raises(ValueError, match="plateau"):
        scale_by_plateau(0.5)


# --- Optax's reduce_on_plateau ------------------------------------------------------------

ROP_CASES = {
    "defaults": {},
    "patience_cooldown_min_scale": {
        "factor": 0.5, "patience": 2, "cooldown": 2, "min_scale": 0.1, "rtol": 0.0, "atol": 0.01,
    },
    "accumulation": {"factor": 0.5, "patience": 1, "accumulation_size": 3, "rtol": 0.05},
}


@pytest.mark.parametrize("case", list(ROP_CASES))
def test_reduce_on_plateau_follows_optax_step_by_step(case):
    kwargs = ROP_CASES[case]
    rng = np.random.default_rng(0)
    # A loss that falls, then stalls with noise: improvements, plateaus and reductions.
    values = np.concatenate([np.linspace(2.0, 1.0, 10), 1.0 + 0.01 * rng.standard_normal(40)])
    if case == "defaults":
        values = np.concatenate([values, np.ones(30)])
    ours, theirs = reduce_on_plateau(**kwargs), optax.contrib.reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(3)}
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    assert type(ours_state) is type(theirs_state) is optax.contrib.ReduceLROnPlateauState
    update, reference_update = jax.jit(ours.update), jax.jit(theirs.update)
    scales = set()
    for value in values.astype(np.float32):
        ours_updates, ours_state = update(params, ours_state, value=value)
        with jax.numpy_dtype_promotion("standard"):  # Optax's arithmetic mixes dtypes
            theirs_updates, theirs_state = reference_update(params, theirs_state, value=value)
        for mine, reference in zip(ours_state, theirs_state, strict=True):
            assert mine.dtype == reference.dtype
            np.testing.assert_allclose(np.asarray(mine), np.asarray(reference), rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(ours_updates["w"]), np.asarray(theirs_updates["w"]), rtol=1e-6
        )
        scales.add(float(ours_state.scale))
    assert len(scales) > 1, "the sequence should make the scale drop"


def test_reduce_on_plateau_needs_the_value():
    tx = reduce_on_plateau()
    with pytest.raises(TypeError, match="value"):
        tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"factor": 1.0}, "factor"),
        ({"patience": 0}, "patience"),
        ({"patience": 2.5}, "patience"),
        ({"rtol": -0.1}, "rtol"),
        ({"rtol": 1.5}, "rtol"),
        ({"atol": -1.0}, "atol"),
        ({"rtol": 0.0, "atol": 0.0}, "rtol and atol"),
        ({"cooldown": -1}, "cooldown"),
        ({"accumulation_size": 0}, "accumulation_size"),
        ({"min_scale": 1.5}, "min_scale"),
    ],
)
def test_reduce_on_plateau_refuses_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        reduce_on_plateau(**kwargs)


def test_reduce_on_plateau_takes_optax_dtypes_for_a_mixed_tree_under_strict_promotion():
    # The suite runs with strict promotion, where ordering float32 and bfloat16 is refused.
    params = {"w": jnp.ones(2), "b": jnp.ones(2, jnp.bfloat16)}
    tx = reduce_on_plateau(patience=1)
    state = tx.init(params)
    assert (state.scale.dtype, state.best_value.dtype) == (jnp.bfloat16, jnp.float32)
    updates, state = tx.update(params, state, params, value=1.0)
    assert updates["b"].dtype == jnp.bfloat16 and float(state.best_value) == 1.0
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.contrib.reduce_on_plateau(patience=1).init(params)
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(lambda x: x.dtype, theirs)


def test_reduce_on_plateau_accepts_integer_arrays_for_its_counts():
    # optax.inject_hyperparams passes every numeric argument as an array
    tx = reduce_on_plateau(patience=jnp.asarray(2), cooldown=np.int64(1))
    assert int(tx.init({"w": jnp.ones(1)}).count) == 0
