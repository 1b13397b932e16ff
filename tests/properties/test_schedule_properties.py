"""Properties of every learning-rate schedule, for random hyperparameters and step counts.

Every schedule returns a finite, non-negative float32 scalar (``constant_schedule``, as
Optax's, returns its value as given), the same under ``jit`` and
``vmap`` as called eagerly one count at a time, and is monotone where its docstring says so:
the decays never increase, a warm-up or the rise of a one-cycle never decreases. The lesson's
×0.98-per-epoch decay equals its closed form ``η₀ · 0.98^⌊t / steps_per_epoch⌋``.

Schedules with random hyperparameters come from ``jaxtricks.testing.schedules``, the finite,
scalar, jit and vmap checks from ``jaxtricks.testing.check_schedule``. Curves are evaluated at
the counts ``0 .. COUNTS - 1`` by one ``jax.vmap``; step lengths are drawn below
``COUNTS / 2`` so that each curve shows its end as well as its start.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from per_case import per_case

import jaxtricks as jt
from jaxtricks.testing import SCHEDULE_NAMES, check_schedule, schedules

COUNTS = 128
ALL_COUNTS = jnp.arange(COUNTS)
# A float32 curve may wobble by one rounding where consecutive exact values are closer than
# that: monotone means "never moves the wrong way by more than one float32 unit".
F32_EPS = float(jnp.finfo(jnp.float32).eps)
NAMES = list(SCHEDULE_NAMES)
SCHEDULES = {name: schedules([name], horizon=COUNTS) for name in NAMES}


def curve(schedule):
    """The schedule at every count of ``ALL_COUNTS``, in float64."""
    return np.asarray(jax.vmap(schedule)(ALL_COUNTS), np.float64)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_value_is_a_finite_nonnegative_float32_scalar(name, data):
    schedule = data.draw(SCHEDULES[name]).schedule
    counts = (0, data.draw(st.integers(0, 2**31 - 1)), jnp.int32(COUNTS))
    check_schedule(schedule, counts, checks=["scalar", "finite", "nonnegative"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@per_case
@given(data=st.data())
def test_jit_and_vmap_equal_eager_calls(name, data):
    schedule = data.draw(SCHEDULES[name]).schedule
    counts = data.draw(st.lists(st.integers(0, COUNTS - 1), min_size=1, max_size=4))
    # Cosines near their bottom cancel: roundings are relative to the schedule's scale, and the
    # fused (jitted) cosine is a vectorized approximation whose error depends on the CPU's
    # instructions (8 eps of the peak seen on an AVX-512 Xeon). A fused computation on XLA:CPU
    # also flushes subnormal intermediates to zero, so values below float32's smallest normal
    # number may come out as 0 there and not eagerly: 16 (eps · scale + tiny).
    check_schedule(
        schedule, [jnp.int32(c) for c in counts], scale=float(curve(schedule).max()),
        checks=["jit", "vmap"], ulps=16,
    )


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
