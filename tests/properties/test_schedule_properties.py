"""Properties of every learning-rate schedule, for random hyperparameters and step counts.

Every schedule returns a finite, non-negative float32 scalar (``constant_schedule``, as
Optax's, returns its value as given), the same under ``jit`` and
``vmap`` as called eagerly one count at a time, and is monotone where its docstring says so:
the decays never increase, a warm-up or the rise of a one-cycle never decreases. The lesson's
×0.98-per-epoch decay equals its closed form ``η₀ · 0.98^⌊t / steps_per_epoch⌋``.

Curves are evaluated at the counts ``0 .. COUNTS - 1`` by one ``jax.vmap``; step lengths are
drawn below ``COUNTS / 2`` so that each curve shows its end as well as its start.
"""

import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxtricks as jt

COUNTS = 128
ALL_COUNTS = jnp.arange(COUNTS)
STEPS = st.integers(1, COUNTS // 2)
# Schedules compute in float32. No hyperparameter is subnormal there: XLA on CPU flushes
# such numbers to zero in some programs and not in others, so jit and eager would disagree
# about a value that is no learning rate anyway.
VALUES = st.floats(0.0, 10.0, width=32, allow_subnormal=False)
FRACTIONS = st.floats(0.0, 1.0, width=32, allow_subnormal=False)
# A float32 curve may wobble by one rounding where consecutive exact values are closer than
# that: monotone means "never moves the wrong way by more than one float32 unit".
F32_EPS = float(jnp.finfo(jnp.float32).eps)


class Case(typing.NamedTuple):
    """A schedule, non-decreasing on counts ``[0, peak]`` and non-increasing from ``peak`` on.

    ``top`` is the value its docstring promises at ``peak``, where it promises one.
    ``call`` shows how it was built, for Hypothesis' report of a failing example.
    """

    schedule: typing.Callable
    peak: int
    top: float | None
    call: str

    def __repr__(self):
        return f"Case({self.call}, peak={self.peak}, top={self.top})"


def case(factory, *args, peak=0, top=None, **kwargs):
    """A :class:`Case` for ``factory(*args, **kwargs)``."""
    arguments = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    call = f"{factory.__name__}({', '.join(arguments)})"
    return Case(factory(*args, **kwargs), peak, top, call)


@st.composite
def exponential_decays(draw):
    begin = draw(st.integers(0, COUNTS // 2))
    staircase = draw(st.booleans())
    if draw(st.booleans()):
        return case(
            jt.exponential_decay, draw(VALUES), draw(STEPS), draw(st.floats(0.01, 1.0)),
            transition_begin=begin, staircase=staircase,
            end_value=draw(st.one_of(st.none(), VALUES)),
        )
    # A growth overflows float32 unless bounded: its end_value is not optional here.
    return case(
        jt.exponential_decay, draw(st.floats(0.01, 10.0)), draw(STEPS), draw(st.floats(1.0, 2.0)),
        transition_begin=begin, staircase=staircase, end_value=draw(VALUES),
        peak=COUNTS,
    )


@st.composite
def warmup_cosines(draw):
    peak_value = draw(VALUES)
    below_peak = st.floats(0.0, peak_value, width=32, allow_subnormal=False)
    warmup = draw(st.integers(1, COUNTS // 2 - 1))
    return case(
        jt.warmup_cosine, draw(below_peak), peak_value, warmup,
        draw(st.integers(warmup + 1, COUNTS // 2)), draw(below_peak),
        peak=warmup, top=peak_value,
    )


@st.composite
def one_cycles(draw):
    steps = draw(st.integers(2, COUNTS // 2))
    rise = draw(st.integers(1, steps - 1))
    peak_value = draw(VALUES)
    return case(
        jt.one_cycle, steps, peak_value,
        (rise + 0.5) / steps,  # pct_start: the rise is ⌊pct_start · steps⌋ steps long
        draw(st.floats(1.0, 100.0)), draw(st.floats(1.0, 1e4)),
        peak=rise, top=peak_value,
    )


SCHEDULES = {
    "constant": st.builds(lambda v: case(jt.constant, jnp.float32(v)), VALUES),
    "exponential_decay": exponential_decays(),
    "per_epoch_decay": st.builds(
        lambda v, n, f: case(jt.per_epoch_decay, v, n, f), VALUES, STEPS, st.floats(0.01, 1.0)
    ),
    "step_decay": st.builds(
        lambda v, n, g: case(jt.step_decay, v, n, g), VALUES, STEPS, st.floats(0.01, 1.0)
    ),
    "cosine_decay": st.builds(
        lambda v, n, a, p: case(jt.cosine_decay, v, n, a, p),
        VALUES, STEPS, FRACTIONS, st.floats(0.1, 4.0),
    ),
    "warmup_cosine": warmup_cosines(),
    "piecewise_constant": st.builds(
        lambda v, pieces: case(jt.piecewise_constant, v, pieces),
        VALUES, st.dictionaries(st.integers(0, COUNTS), FRACTIONS, max_size=4),
    ),
    "one_cycle": one_cycles(),
}
NAMES = sorted(SCHEDULES)


def curve(schedule):
    """The schedule at every count of ``ALL_COUNTS``, in float64."""
    return np.asarray(jax.vmap(schedule)(ALL_COUNTS), np.float64)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_value_is_a_finite_nonnegative_float32_scalar(name, data):
    schedule = data.draw(SCHEDULES[name]).schedule
    for count in (0, data.draw(st.integers(0, 2**31 - 1)), jnp.int32(COUNTS)):
        value = schedule(count)
        chex.assert_shape(value, ())
        chex.assert_type(value, jnp.float32)
        chex.assert_tree_all_finite(value)
        assert value >= 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_jit_and_vmap_equal_eager_calls(name, data):
    schedule = data.draw(SCHEDULES[name]).schedule
    counts = data.draw(st.lists(st.integers(0, COUNTS - 1), min_size=1, max_size=4))
    values = curve(schedule)
    # Cosines near their bottom cancel: roundings are relative to the schedule's scale, and the
    # fused (jitted) cosine is a vectorized approximation whose error depends on the CPU's
    # instructions (8 eps of the peak seen on an AVX-512 Xeon). A fused computation on XLA:CPU
    # also flushes subnormal intermediates to zero, so values below float32's smallest normal
    # number may come out as 0 there and not eagerly.
    tol = max(16 * F32_EPS * values.max(), float(jnp.finfo(jnp.float32).tiny))
    jitted = jax.jit(schedule)
    for count in counts:
        eager = schedule(jnp.int32(count))
        chex.assert_trees_all_close(jitted(jnp.int32(count)), eager, rtol=0, atol=tol)
        chex.assert_trees_all_close(values[count], np.float64(eager), rtol=0, atol=tol)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_rises_to_its_peak_and_never_rises_after(name, data):
    case = data.draw(SCHEDULES[name])
    values = curve(case.schedule)
    steps = np.diff(values)
    slack = F32_EPS * np.maximum(values[:-1], values[1:])
    rising, falling = steps[: case.peak], steps[case.peak :]
    assert np.all(rising >= -slack[: case.peak]), values
    assert np.all(falling <= slack[case.peak :]), values
    if case.top is not None:
        assert values[case.peak] == pytest.approx(case.top, rel=4 * F32_EPS)


@given(
    init_value=st.floats(1e-6, 10.0),
    steps_per_epoch=st.integers(1, 5000),
    epoch=st.integers(0, 2000),
    data=st.data(),
)
def test_per_epoch_decay_is_the_closed_form(init_value, steps_per_epoch, epoch, data):
    count = epoch * steps_per_epoch + data.draw(st.integers(0, steps_per_epoch - 1))
    value = float(jt.per_epoch_decay(init_value, steps_per_epoch)(count))
    expected = init_value * 0.98 ** (count // steps_per_epoch)
    # float32 holds 0.98 to a relative 2⁻²⁴ and its power multiplies that error by the epoch.
    assert value == pytest.approx(expected, rel=2**-24 * (8 + 2 * epoch))
