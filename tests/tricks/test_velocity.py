"""Tests for jaxtricks.tricks.velocity: heavy-ball, Nesterov and the lesson's velocity form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.velocity import (
    TraceWithCountState,
    VelocityState,
    scale_by_momentum,
    scale_by_velocity,
    trace,
)

STEPS = 4


def _grads(steps=STEPS, dtype=np.float32):
    """``steps`` small gradient trees, as NumPy arrays of ``dtype``."""
    rng = np.random.default_rng(1)
    return [
        {"a": rng.standard_normal(3).astype(dtype), "b": rng.standard_normal((2, 2)).astype(dtype)}
        for _ in range(steps)
    ]


def _run(tx, grads):
    """The updates of ``tx`` over ``grads``, each step compiled once, and the last state."""
    update = jax.jit(tx.update)
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    updates = []
    for g in grads:
        u, state = update(jax.tree.map(jnp.asarray, g), state)
        updates.append(u)
    return updates, state


def _heavy_ball(grads, gammas, nesterov=False):
    """NumPy momentum in float64: ``t = g + γ t``; ``u = t`` or ``g + γ t``."""
    trace = jax.tree.map(lambda g: np.zeros(g.shape), grads[0])
    out = []
    for g, gamma in zip(grads, gammas, strict=True):
        trace = jax.tree.map(lambda g, t, gamma=gamma: g.astype(np.float64) + gamma * t, g, trace)
        if nesterov:
            out.append(jax.tree.map(lambda g, t, gamma=gamma: g + gamma * t, g, trace))
        else:
            out.append(trace)
    return out


def _as(tree, dtype):
    return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_momentum_matches_numpy_and_optax_trace(nesterov, allclose):
    grads = _grads()
    mine, state = _run(scale_by_momentum(0.9, nesterov=nesterov), grads)
    expected = _heavy_ball(grads, [0.9] * STEPS, nesterov)
    for m, e in zip(mine, expected, strict=True):
        allclose(m, _as(e, np.float32), rtol=1e-6, atol=1e-6)
    # Optax's arithmetic needs standard dtype promotion (it mixes weak and strong types).
    with jax.numpy_dtype_promotion("standard"):
        theirs, _ = _run(optax.trace(decay=0.9, nesterov=nesterov), grads)
    for m, t in zip(mine, theirs, strict=True):
        allclose(m, t, rtol=1e-6)
    assert type(state) is optax.TraceState
    allclose(state.trace, _as(_heavy_ball(grads, [0.9] * STEPS)[-1], np.float32), atol=1e-6)


def test_scale_by_momentum_is_trace_with_a_default():
    grads = _grads()
    mine, _ = _run(scale_by_momentum(nesterov=True), grads)
    theirs, _ = _run(trace(0.9, True), grads)
    for m, t in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(m["a"]), np.asarray(t["a"]))


def test_decay_zero_is_sgd_and_decay_one_sums_every_gradient(allclose):
    grads = _grads()
    sgd, _ = _run(scale_by_momentum(0.0), grads)
    for u, g in zip(sgd, grads, strict=True):
        allclose(u, g, rtol=0)
    motion, _ = _run(scale_by_momentum(1.0), grads)
    for step, u in enumerate(motion):
        total = jax.tree.map(lambda *gs: np.sum(gs, axis=0, dtype=np.float64), *grads[: step + 1])
        allclose(u, _as(total, np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_decay_schedule_is_read_at_each_step(nesterov, allclose):
    # γ = 0.9 for the first two steps, then 0.2: a schedule applied one step late or early
    # gives a different third and fourth update.
    schedule = lambda count: jnp.where(count < 2, 0.9, 0.2)
    grads = _grads()
    mine, state = _run(scale_by_momentum(schedule, nesterov=nesterov), grads)
    assert isinstance(state, TraceWithCountState) and int(state.count) == STEPS
    expected = _heavy_ball(grads, [0.9, 0.9, 0.2, 0.2], nesterov)
    for m, e in zip(mine, expected, strict=True):
        allclose(m, _as(e, np.float32), rtol=1e-6, atol=1e-6)
    shifted = _heavy_ball(grads, [0.9, 0.9, 0.9, 0.2], nesterov)
    assert not np.allclose(mine[2]["a"], shifted[2]["a"], rtol=1e-3)


def _velocity(grads, etas, gammas):
    """The lesson's form by hand: ``v = γ v − η g``."""
    v = jax.tree.map(lambda g: np.zeros(g.shape), grads[0])
    out = []
    for g, eta, gamma in zip(grads, etas, gammas, strict=True):
        v = jax.tree.map(
            lambda g, v, eta=eta, gamma=gamma: gamma * v - eta * g.astype(np.float64), g, v
        )
        out.append(v)
    return out


def test_velocity_is_the_lessons_form_with_a_learning_rate_schedule(allclose):
    # η = 0.1 for steps 0 and 1, then 0.01; γ changes at step 3.
    etas, gammas = [0.1, 0.1, 0.01, 0.01], [0.5, 0.5, 0.5, 0.8]
    tx = scale_by_velocity(
        learning_rate=lambda count: jnp.where(count < 2, 0.1, 0.01),
        momentum=lambda count: jnp.where(count < 3, 0.5, 0.8),
    )
    grads = _grads()
    mine, state = _run(tx, grads)
    expected = _velocity(grads, etas, gammas)
    for m, e in zip(mine, expected, strict=True):
        allclose(m, _as(e, np.float32), rtol=1e-6, atol=1e-8)
    assert isinstance(state, VelocityState)
    allclose(state.velocity, _as(expected[-1], np.float32), rtol=1e-6, atol=1e-8)
    # Heavy-ball followed by −η_t rescales the whole trace by the current η: different.
    heavy = _heavy_ball(grads, gammas)
    assert not np.allclose(mine[3]["a"], -0.01 * heavy[3]["a"], rtol=1e-2)


def test_velocity_with_constant_rates(allclose):
    grads = _grads()
    mine, _ = _run(scale_by_velocity(0.3, 0.7), grads)
    for m, e in zip(mine, _velocity(grads, [0.3] * STEPS, [0.7] * STEPS), strict=True):
        allclose(m, _as(e, np.float32), rtol=1e-6, atol=1e-8)


BF16_CASES = {
    "heavy_ball": (
        lambda dtype: scale_by_momentum(0.9, accumulator_dtype=dtype),
        lambda grads: _heavy_ball(grads, [0.9, 0.9]),
    ),
    "nesterov": (
        lambda dtype: scale_by_momentum(0.9, nesterov=True, accumulator_dtype=dtype),
        lambda grads: _heavy_ball(grads, [0.9, 0.9], nesterov=True),
    ),
    "velocity": (
        lambda dtype: scale_by_velocity(0.1, 0.9, accumulator_dtype=dtype),
        lambda grads: _velocity(grads, [0.1, 0.1], [0.9, 0.9]),
    ),
}


@pytest.mark.parametrize("accumulator_dtype", [None, jnp.float32])
@pytest.mark.parametrize("name", list(BF16_CASES))
def test_bfloat16_gradients_keep_their_dtype_and_the_accumulator_its_own(name, accumulator_dtype):
    build, reference = BF16_CASES[name]
    grads = _grads(2, jnp.bfloat16)
    updates, state = _run(build(accumulator_dtype), grads)
    memory = state.velocity if isinstance(state, VelocityState) else state.trace
    want = accumulator_dtype or jnp.bfloat16
    assert all(leaf.dtype == want for leaf in jax.tree.leaves(memory))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(updates[-1]))
    # a few bfloat16 roundings (8 significant bits) away from the exact value
    expected = reference(grads)[-1]
    for u, e in zip(jax.tree.leaves(updates[-1]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float64), e, rtol=2**-6, atol=1e-3)
