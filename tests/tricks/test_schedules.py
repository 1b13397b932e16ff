"""Tests for jaxtricks.tricks.schedules: agreement with Optax, shapes, dtypes, validation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks import schedules as sch

# Every count up to past the end of every schedule below, and the last count an int32 holds
# (Optax's counters saturate there).
COUNTS = np.concatenate([np.arange(121), [2**31 - 1]]).astype(np.int32)

# (id, jaxtricks schedule, Optax counterpart).
CASES = [
    ("constant", lambda: sch.constant_schedule(0.3), lambda: optax.constant_schedule(0.3)),
    (
        "exponential",
        lambda: sch.exponential_decay(0.1, 7, 0.5),
        lambda: optax.exponential_decay(0.1, 7, 0.5),
    ),
    (
        "exponential_staircase_begin_end",
        lambda: sch.exponential_decay(0.1, 7, 0.5, 3, True, 0.01),
        lambda: optax.exponential_decay(0.1, 7, 0.5, 3, True, 0.01),
    ),
    (
        "exponential_growth_capped",
        lambda: sch.exponential_decay(0.1, 4, 1.5, end_value=2.0),
        lambda: optax.exponential_decay(0.1, 4, 1.5, end_value=2.0),
    ),
    (
        "exponential_fractional_steps",
        lambda: sch.exponential_decay(1.0, 2.5, 0.5),
        lambda: optax.exponential_decay(1.0, 2.5, 0.5),
    ),
    (
        "per_epoch",
        lambda: sch.per_epoch_decay(0.1, 10),
        lambda: optax.exponential_decay(0.1, 10, 0.98, staircase=True),
    ),
    (
        "step",
        lambda: sch.step_decay(1.0, 15, 0.5),
        lambda: optax.exponential_decay(1.0, 15, 0.5, staircase=True),
    ),
    (
        "cosine",
        lambda: sch.cosine_decay_schedule(0.1, 40),
        lambda: optax.cosine_decay_schedule(0.1, 40),
    ),
    (
        "cosine_alpha_exponent",
        lambda: sch.cosine_decay_schedule(0.1, 40, alpha=0.1, exponent=2.0),
        lambda: optax.cosine_decay_schedule(0.1, 40, 0.1, 2.0),
    ),
    (
        "cosine_negative",
        lambda: sch.cosine_decay_schedule(-0.5, 30, alpha=1.5),
        lambda: optax.cosine_decay_schedule(-0.5, 30, 1.5),
    ),
    (
        "warmup_cosine",
        lambda: sch.warmup_cosine_decay_schedule(0.01, 1.0, 10, 50, end_value=0.1),
        lambda: optax.warmup_cosine_decay_schedule(0.01, 1.0, 10, 50, 0.1),
    ),
    (
        "warmup_cosine_exponent_negative_end",
        lambda: sch.warmup_cosine_decay_schedule(0.2, 1.2, 40, 100, -3.0, 2.0),
        lambda: optax.warmup_cosine_decay_schedule(0.2, 1.2, 40, 100, -3.0, 2.0),
    ),
    (
        "warmup_cosine_without_warmup",
        lambda: sch.warmup_cosine_decay_schedule(0.0, 1.0, 0, 50),
        lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 0, 50),
    ),
    (
        "warmup_cosine_zero_peak",
        lambda: sch.warmup_cosine_decay_schedule(0.2, 0.0, 50, 100, -3.0, 2.0),
        lambda: optax.warmup_cosine_decay_schedule(0.2, 0.0, 50, 100, -3.0, 2.0),
    ),
    (
        "piecewise_constant",
        lambda: sch.piecewise_constant_schedule(1.0, {25: 0.5, 10: 0.1, 5: 2.0}),
        lambda: optax.piecewise_constant_schedule(1.0, {25: 0.5, 10: 0.1, 5: 2.0}),
    ),
    (
        "piecewise_constant_negative",
        lambda: sch.piecewise_constant_schedule(-0.1, {3: 2.0, 6: 0.5}),
        lambda: optax.piecewise_constant_schedule(-0.1, {3: 2.0, 6: 0.5}),
    ),
    (
        "piecewise_constant_fractional_boundary",
        lambda: sch.piecewise_constant_schedule(1.0, {2.5: 0.5, 7: 0.1}),
        lambda: optax.piecewise_constant_schedule(1.0, {2.5: 0.5, 7: 0.1}),
    ),
    (
        "one_cycle",
        lambda: sch.cosine_onecycle_schedule(50, 1.0),
        lambda: optax.cosine_onecycle_schedule(50, 1.0),
    ),
    (
        "one_cycle_options",
        lambda: sch.cosine_onecycle_schedule(60, 0.5, 0.45, 5.0, 100.0),
        lambda: optax.cosine_onecycle_schedule(60, 0.5, 0.45, 5.0, 100.0),
    ),
    (
        "one_cycle_without_rise",
        lambda: sch.cosine_onecycle_schedule(40, 1.0, 0.0),
        lambda: optax.cosine_onecycle_schedule(40, 1.0, 0.0),
    ),
    (
        "one_cycle_almost_all_rise",
        lambda: sch.cosine_onecycle_schedule(40, 1.0, 0.99),
        lambda: optax.cosine_onecycle_schedule(40, 1.0, 0.99),
    ),
    (
        "join",
        lambda: sch.join_schedules(
            [sch.constant_schedule(1.0), sch.cosine_decay_schedule(1.0, 20)], [10]
        ),
        lambda: optax.join_schedules(
            [optax.constant_schedule(1.0), optax.cosine_decay_schedule(1.0, 20)], [10]
        ),
    ),
]
# The schedules that return float32 arrays (constant_schedule returns its value as given).
FLOAT32_CASES = [case for case in CASES if case[0] != "constant"]
IDS = [case[0] for case in CASES]


def _values(schedule, counts=COUNTS):
    """The schedule at every count, as float32 numpy."""
    # Optax's schedules rely on implicit promotion, which the suite otherwise forbids.
    with jax.numpy_dtype_promotion("standard"):
        values = jax.vmap(schedule)(jnp.asarray(counts, dtype=jnp.int32))
    return np.asarray(values, dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "make", "make_reference"), CASES, ids=IDS)
def test_matches_optax(name, make, make_reference):
    ours = _values(make())
    reference = _values(make_reference())
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(
    ("name", "make", "make_reference"), FLOAT32_CASES, ids=[case[0] for case in FLOAT32_CASES]
)
def test_float32_scalar_eager_and_under_jit(name, make, make_reference):
    del make_reference
    schedule = make()
    jitted = jax.jit(schedule)
    for count in (0, 7, 33, 200):
        eager = schedule(count)
        traced = jitted(jnp.asarray(count, dtype=jnp.int32))
        for value in (eager, traced):
            assert isinstance(value, jax.Array), name
            assert value.shape == (), name
            assert value.dtype == jnp.float32, name
        np.testing.assert_allclose(traced, eager, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(("name", "make", "make_reference"), CASES, ids=IDS)
def test_drives_optax_sgd(name, make, make_reference):
    del make_reference
    schedule = make()
    tx = optax.sgd(learning_rate=schedule)
    grads = jnp.array([0.5, -1.0, 2.0])
    params = jnp.array([1.0, 2.0, 3.0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    expected = np.asarray(params)
    for step in range(12):
        updates, state = update(grads, state)
        params = optax.apply_updates(params, updates)
        expected = expected - np.float32(schedule(step)) * np.asarray(grads)
    np.testing.assert_allclose(params, expected, rtol=1e-6, err_msg=name)


def test_constant_schedule_returns_its_value_as_given():
    for value in (0.1, 3, jnp.asarray(0.5, jnp.bfloat16)):
        assert sch.constant_schedule(value)(7) is value


def test_the_lessons_names_are_optaxs_schedules():
    assert sch.constant is sch.constant_schedule
    assert sch.cosine_decay is sch.cosine_decay_schedule
    assert sch.join is sch.join_schedules
    assert sch.one_cycle is sch.cosine_onecycle_schedule
    assert sch.piecewise_constant is sch.piecewise_constant_schedule
    assert sch.warmup_cosine is sch.warmup_cosine_decay_schedule


def test_cosine_decay_takes_more_steps_than_an_int32_holds():
    schedule = jax.jit(sch.cosine_decay_schedule(1000.0, 10**10))
    np.testing.assert_allclose(float(schedule(10**9)), 1000 * (1 + np.cos(0.1 * np.pi)) / 2)


def test_per_epoch_decay_is_the_lessons_closed_form():
    steps_per_epoch, epochs, init = 7, 40, 0.5
    counts = np.arange(steps_per_epoch * epochs)
    values = _values(sch.per_epoch_decay(init, steps_per_epoch), counts)
    by_epoch = values.reshape(epochs, steps_per_epoch)
    # A staircase: every step of an epoch has exactly the epoch's value.
    np.testing.assert_array_equal(by_epoch, np.repeat(by_epoch[:, :1], steps_per_epoch, axis=1))
    closed_form = init * 0.98 ** np.arange(epochs, dtype=np.float64)
    np.testing.assert_allclose(by_epoch[:, 0], closed_form, rtol=1e-6)
    assert np.all(np.diff(values) <= 0)
    assert np.all(np.diff(by_epoch[:, 0]) < 0)


def test_per_epoch_and_step_decay_are_staircase_exponential_decay():
    counts = np.arange(100)
    np.testing.assert_array_equal(
        _values(sch.per_epoch_decay(0.3, 9, factor=0.9), counts),
        _values(sch.exponential_decay(0.3, 9, 0.9, staircase=True), counts),
    )
    np.testing.assert_array_equal(
        _values(sch.step_decay(0.3, 9, gamma=0.1), counts),
        _values(sch.exponential_decay(0.3, 9, 0.1, staircase=True), counts),
    )


def test_step_decay_closed_form():
    counts = np.arange(100)
    values = _values(sch.step_decay(2.0, 30, gamma=0.1), counts)
    np.testing.assert_allclose(values, 2.0 * 0.1 ** (counts // 30), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sch.per_epoch_decay(1.0, 3),
        lambda: sch.step_decay(1.0, 10, 0.5),
        lambda: sch.exponential_decay(1.0, 5, 0.9, transition_begin=4),
        lambda: sch.cosine_decay(1.0, 50),
        lambda: sch.cosine_decay(1.0, 50, alpha=0.2, exponent=0.5),
    ],
    ids=["per_epoch", "step", "exponential", "cosine", "cosine_alpha_exponent"],
)
def test_decays_are_monotone_non_increasing(make):
    values = _values(make())
    assert values[0] == 1.0
    assert np.all(np.diff(values) <= 0)
    assert values[-1] < values[0]


def test_cosine_decay_end_points():
    values = _values(sch.cosine_decay(0.4, 30, alpha=0.25))
    np.testing.assert_allclose(values[0], 0.4, rtol=1e-6)
    np.testing.assert_allclose(values[15], 0.4 * (0.25 + 0.75 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(values[30:], 0.1, rtol=1e-6)


def test_warmup_cosine_rises_to_peak_then_falls():
    init, peak, end, warmup, total = 0.01, 1.0, 0.05, 10, 50
    values = _values(sch.warmup_cosine(init, peak, warmup, total, end_value=end))
    np.testing.assert_allclose(values[0], init, rtol=1e-6)
    assert np.all(np.diff(values[: warmup + 1]) > 0)
    np.testing.assert_allclose(values[warmup], peak, rtol=1e-6)
    assert np.argmax(values) == warmup
    assert np.all(np.diff(values[warmup:]) <= 0)
    assert np.all(np.diff(values[warmup:total + 1]) < 0)
    np.testing.assert_allclose(values[total:], end, rtol=1e-6)


@pytest.mark.parametrize(("transition_steps", "pct_start"), [(50, 0.3), (100, 0.25), (7, 0.5)])
def test_one_cycle_peaks_at_pct_start(transition_steps, pct_start):
    peak, div, final_div = 2.0, 20.0, 50.0
    schedule = sch.one_cycle(transition_steps, peak, pct_start, div, final_div)
    values = _values(schedule)
    rise = int(pct_start * transition_steps)
    assert np.argmax(values) == rise
    np.testing.assert_allclose(values[rise], peak, rtol=1e-6)
    np.testing.assert_allclose(values[0], peak / div, rtol=1e-6)
    np.testing.assert_allclose(values[transition_steps:], peak / div / final_div, rtol=1e-5)
    assert np.all(np.diff(values[: rise + 1]) > 0)
    assert np.all(np.diff(values[rise:]) <= 0)


def test_piecewise_constant_scales_multiply():
    values = _values(sch.piecewise_constant(2.0, {20: 0.1, 10: 0.5}), np.arange(30))
    expected = np.where(np.arange(30) >= 10, 0.5, 1.0) * np.where(np.arange(30) >= 20, 0.1, 1.0)
    np.testing.assert_allclose(values, 2.0 * expected, rtol=1e-6)


def test_join_restarts_each_schedule_at_its_boundary():
    schedule = sch.join([sch.constant(3.0), sch.step_decay(1.0, 2, 0.5), sch.constant(0.0)], [4, 9])
    values = _values(schedule, np.arange(12))
    expected = [3.0] * 4 + [1.0, 1.0, 0.5, 0.5, 0.25] + [0.0] * 3
    np.testing.assert_array_equal(values, np.asarray(expected, dtype=np.float32))


# Arguments Optax turns into a constant or meaningless schedule without a word (each a row
# of docs/optax_parity.md), and the lesson's own schedules' checks.
INVALID = [
    ("decay_rate", lambda: sch.exponential_decay(0.1, 5, 0.0)),
    ("decay_rate", lambda: sch.exponential_decay(0.1, 5, -0.5)),
    ("decay_rate", lambda: sch.exponential_decay(0.1, 5, float("nan"))),
    ("transition_steps", lambda: sch.exponential_decay(0.1, 0, 0.5)),
    ("transition_steps", lambda: sch.exponential_decay(0.1, -1, 0.5)),
    ("transition_steps", lambda: sch.exponential_decay(0.1, True, 0.5)),
    ("transition_begin", lambda: sch.exponential_decay(0.1, 5, 0.5, transition_begin=-1)),
    ("steps_per_epoch", lambda: sch.per_epoch_decay(0.1, 0)),
    ("steps_per_epoch", lambda: sch.per_epoch_decay(0.1, 10.0)),
    ("factor", lambda: sch.per_epoch_decay(0.1, 10, factor=0.0)),
    ("factor", lambda: sch.per_epoch_decay(0.1, 10, factor=1.5)),
    ("step_size", lambda: sch.step_decay(0.1, 0)),
    ("gamma", lambda: sch.step_decay(0.1, 10, gamma=0.0)),
    ("gamma", lambda: sch.step_decay(0.1, 10, gamma=2.0)),
    ("decay_steps", lambda: sch.cosine_decay_schedule(0.1, 0)),
    ("warmup_steps", lambda: sch.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10)),
    ("decay_steps", lambda: sch.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10)),
    ("boundaries_and_scales", lambda: sch.piecewise_constant_schedule(1.0, {10: -0.5})),
    ("transition_steps", lambda: sch.cosine_onecycle_schedule(0, 1.0)),
    ("pct_start", lambda: sch.cosine_onecycle_schedule(100, 1.0, pct_start=-0.1)),
    ("pct_start", lambda: sch.cosine_onecycle_schedule(100, 1.0, pct_start=1.0)),
    ("div_factor", lambda: sch.cosine_onecycle_schedule(100, 1.0, div_factor=0.0)),
    ("final_div_factor", lambda: sch.cosine_onecycle_schedule(100, 1.0, final_div_factor=0.0)),
    ("schedules", lambda: sch.join_schedules([], [])),
    ("boundaries", lambda: sch.join_schedules([sch.constant(1.0), sch.constant(0.5)], [])),
    ("boundaries", lambda: sch.join_schedules([sch.constant(1.0)] * 3, [5, 4])),
    ("boundaries", lambda: sch.join_schedules([sch.constant(1.0)] * 2, [-1])),
]


@pytest.mark.parametrize(("argument", "build"), INVALID)
def test_invalid_arguments_raise_value_error_naming_them(argument, build):
    with pytest.raises(ValueError, match=rf"^{re.escape(argument)}\b"):
        build()


def test_join_refuses_a_non_callable():
    with pytest.raises(TypeError, match=r"schedules\[1\]"):
        sch.join_schedules([sch.constant(1.0), 0.5], [3])
