"""Learning-rate schedules: large steps early for speed, small steps later to fine-tune (L6).

A schedule maps the optimizer's step counter to a value, ``count -> η_count``. Every factory
here checks its hyperparameters once, when it is called, and returns a pure function of
``count`` (an integer scalar, possibly traced under ``jit``), usable wherever Optax takes a
schedule, e.g. ``optax.sgd(learning_rate=schedule)``.

The lesson's rule, "multiply η by 0.98 after each epoch", is :func:`per_epoch_decay`,

    η_count = η_0 · 0.98^⌊count / steps_per_epoch⌋,

a staircase case of the exponential decay η_0 · r^((count − begin) / T). The family, with
c(t, T) = ½(1 + cos(π · min(t, T) / T)) falling from 1 at t = 0 to 0 from t = T on:

    constant_schedule             η_0
    exponential_decay             η_0 · r^(max(count − begin, 0) / T)  (floored if staircase)
    per_epoch_decay               η_0 · f^⌊count / steps_per_epoch⌋
    step_decay                    η_0 · γ^⌊count / step_size⌋           (PyTorch's ``StepLR``)
    cosine_decay_schedule         η_0 · ((1 − α) · c(count, T)^p + α)   (Loshchilov & Hutter 2017)
    warmup_cosine_decay_schedule  linear η_0 → η_peak over W steps, then cosine η_peak → η_end
    piecewise_constant_schedule   η_0 · ∏ {s_i : b_i ≤ count}
    cosine_onecycle_schedule      cosine η_peak/d → η_peak, then cosine η_peak → η_peak/(d·d_f)
                                  (Smith & Topin 2017)
    join_schedules                one schedule after another, each counting from its start

The Optax-named ones have Optax's signatures (``exponential_decay(init_value,
transition_steps, decay_rate, ...)``), defaults and values; the arithmetic is this module's
own, in float32 (``constant_schedule`` returns its value as given, as Optax's does). The
lesson's names are the same functions: ``constant``, ``cosine_decay``, ``warmup_cosine``,
``piecewise_constant``, ``one_cycle`` and ``join``. Where Optax quietly turns a bad argument
into a constant or meaningless schedule (a non-positive number of steps, a zero decay rate),
these raise ``ValueError`` naming the argument; docs/optax_parity.md lists each case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxtricks.tricks.checks import (
    check_callable,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
)

Schedule = Callable[[ArrayLike], jax.Array]


def _f32(value: ArrayLike) -> jax.Array:
    return jnp.asarray(value).astype(jnp.float32)


def _cosine_factor(count: ArrayLike, steps: float) -> jax.Array:
    """½(1 + cos(π t / T)) for t = count clipped to [0, T]: 1 at the start, 0 from T on."""
    # Float32 holds every count up to 2**24 exactly and the clip makes larger ones harmless.
    t = jnp.clip(jnp.asarray(count).astype(jnp.float32), 0, steps)
    return 0.5 * (1 + jnp.cos(jnp.pi * t / steps))


def constant_schedule(value: ArrayLike) -> Callable[[ArrayLike], ArrayLike]:
    """The same value at every step (Optax's ``constant_schedule``).

    Math: ``η_count = value``.

    Args:
      value: the value, returned as given (a number or an array of any dtype).

    Returns:
      A schedule ``count -> value``.

    Examples:
      >>> schedule = constant_schedule(0.1)
      >>> print(schedule(0), schedule(10_000))
      0.1 0.1
    """

    def schedule(count: ArrayLike) -> ArrayLike:
        del count
        return value

    return schedule


def exponential_decay(
        init_value: ArrayLike,
        transition_steps: float,
        decay_rate: ArrayLike,
        transition_begin: float = 0,
        staircase: bool = False,
        end_value: ArrayLike | None = None,
) -> Schedule:
    """Exponential decay: the value is multiplied by ``decay_rate`` every ``transition_steps``.

    Math: with ``e = max(count − transition_begin, 0) / transition_steps`` (floored when
    ``staircase``), ``η_count = init_value · decay_rate^e``, then bounded below by
    ``end_value`` when ``decay_rate < 1`` (above when ``decay_rate > 1``).

    Args:
      init_value: the value up to ``transition_begin``.
      transition_steps: T > 0, the steps over which the value changes by ``decay_rate``.
      decay_rate: r > 0 (< 1 decays, > 1 grows).
      transition_begin: ≥ 0, steps to hold ``init_value`` before decaying.
      staircase: decay in jumps, once every ``transition_steps``, instead of smoothly.
      end_value: optional bound where the decay stops.

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = exponential_decay(1.0, 10, 0.5, staircase=True)
      >>> print(schedule(9), schedule(10), schedule(25))
      1.0 0.5 0.25
    """
    check_positive("transition_steps", transition_steps)
    check_positive("decay_rate", decay_rate)
    check_nonnegative("transition_begin", transition_begin)
    if end_value is not None:
        # check_positive refused complex values above.
        assert not isinstance(decay_rate, complex)
        bound = jnp.maximum if decay_rate < 1 else jnp.minimum
    integral = all(isinstance(n, int) for n in (transition_steps, transition_begin))

    def schedule(count: ArrayLike) -> jax.Array:
        if integral:
            # Floor division of the integer count: a float quotient can round up to the next
            # step for large counts.
            elapsed = jnp.maximum(jnp.asarray(count) - transition_begin, 0)
            steps = elapsed // transition_steps if staircase else _f32(elapsed) / transition_steps
        else:
            elapsed = jnp.maximum(_f32(count) - transition_begin, 0)
            steps = elapsed / transition_steps
            steps = jnp.floor(steps) if staircase else steps
        value = _f32(init_value) * jnp.power(_f32(decay_rate), _f32(steps))
        if end_value is not None:
            value = bound(value, _f32(end_value))
        return value

    return schedule


def per_epoch_decay(
        init_value: ArrayLike, steps_per_epoch: int, factor: ArrayLike = 0.98
) -> Schedule:
    """The lesson's decay: multiply the learning rate by ``factor`` after each epoch.

    Math: in epoch ``e = count // steps_per_epoch`` the value is ``η_e = η_0 · factor^e``
    (``η_0 · 0.98^e`` by default), constant within the epoch: a staircase
    :func:`exponential_decay` with ``transition_steps = steps_per_epoch``.

    Args:
      init_value: η_0, the value during the first epoch.
      steps_per_epoch: integer >= 1, optimizer steps (minibatches) per epoch.
      factor: multiplier per epoch, in (0, 1].

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = per_epoch_decay(0.1, steps_per_epoch=100)
      >>> print(f"{schedule(99):.6f} {schedule(100):.6f} {schedule(250):.6f}")
      0.100000 0.098000 0.096040
    """
    check_range("factor", factor, 0.0, 1.0, low_open=True)
    steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
    return exponential_decay(init_value, steps_per_epoch, factor, staircase=True)


def step_decay(init_value: ArrayLike, step_size: int, gamma: ArrayLike = 0.1) -> Schedule:
    """Step decay (PyTorch's ``StepLR``): multiply by ``gamma`` every ``step_size`` steps.

    Math: ``η_count = init_value · gamma^⌊count / step_size⌋``, a staircase
    :func:`exponential_decay`.

    Args:
      init_value: the value for the first ``step_size`` steps.
      step_size: integer >= 1, steps between drops.
      gamma: multiplier per drop, in (0, 1].

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = step_decay(1.0, step_size=30, gamma=0.5)
      >>> print(schedule(29), schedule(30), schedule(60))
      1.0 0.5 0.25
    """
    check_range("gamma", gamma, 0.0, 1.0, low_open=True)
    step_size = check_int("step_size", step_size, 1)
    return exponential_decay(init_value, step_size, gamma, staircase=True)


def cosine_decay_schedule(
        init_value: ArrayLike,
        decay_steps: float,
        alpha: ArrayLike = 0.0,
        exponent: ArrayLike = 1.0,
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha · init_value`` over ``decay_steps``.

    Math: ``η_count = init_value · ((1 − α) · c^p + α)`` with
    ``c = ½(1 + cos(π · min(count, T) / T))``, ``T = decay_steps``, ``p = exponent``;
    constant at ``α · init_value`` from step ``T`` on. Loshchilov & Hutter, "SGDR:
    Stochastic Gradient Descent with Warm Restarts", ICLR 2017.

    Args:
      init_value: the value at step 0.
      decay_steps: T > 0, the length of the decay.
      alpha: the final value as a fraction of ``init_value``.
      exponent: p; larger values decay faster early on.

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
      >>> print(f"{schedule(0):.2f} {schedule(50):.2f} {schedule(100):.2f} {schedule(500):.2f}")
      1.00 0.55 0.10 0.10
    """
    # A float: a Python int beyond int32 (1e10 steps) would overflow as a JAX integer.
    decay_steps = float(check_positive("decay_steps", decay_steps))

    def schedule(count: ArrayLike) -> jax.Array:
        alpha32 = _f32(alpha)
        decayed = (1 - alpha32) * _cosine_factor(count, decay_steps) ** _f32(exponent) + alpha32
        return _f32(init_value) * decayed

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules`` one after another, switching at the step ``boundaries``.

    Math: for ``b_{i−1} <= count < b_i`` (with ``b_{−1} = 0``) the value is
    ``schedules[i](count − b_{i−1})``: each schedule counts from its own start.

    Args:
      schedules: the schedules, in order.
      boundaries: ``len(schedules) − 1`` non-decreasing integers >= 0, the steps at which
        the next schedule takes over.

    Returns:
      A schedule ``count -> value``.

    Examples:
      >>> schedule = join_schedules([constant_schedule(1.0), exponential_decay(1.0, 1, 0.5)], [10])
      >>> print(schedule(9), schedule(10), schedule(12))
      1.0 1.0 0.25
    """
    schedules = tuple(check_callable(f"schedules[{i}]", s) for i, s in enumerate(schedules))
    boundaries = tuple(boundaries)
    if not schedules:
        raise ValueError("schedules must hold at least one schedule, got none")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must hold len(schedules) - 1 = {len(schedules) - 1} steps, "
            f"got {len(boundaries)}: {boundaries!r}"
        )
    previous = 0
    for i, boundary in enumerate(boundaries):
        why = f" (non-decreasing, from {previous})" if i else ""
        previous = check_int(f"boundaries[{i}]", boundary, previous, why=why)

    def schedule(count: ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
        value = schedules[0](count)
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(count < boundary, value, later(count - boundary))
        return value

    return schedule


def warmup_cosine_decay_schedule(
        init_value: ArrayLike,
        peak_value: ArrayLike,
        warmup_steps: int,
        decay_steps: int,
        end_value: ArrayLike = 0.0,
        exponent: ArrayLike = 1.0,
) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    Math: ``η_count = init_value + (peak_value − init_value) · count / W`` for
    ``count < W = warmup_steps``, then :func:`cosine_decay_schedule` from ``peak_value`` to
    ``end_value`` (``α = end_value / peak_value``, 0 for a zero peak) with ``exponent`` over
    the remaining ``decay_steps − W`` steps. As in Optax, ``decay_steps`` is the length of the
    whole schedule, warm-up included.

    Args:
      init_value: the value at step 0.
      peak_value: the value reached at step ``warmup_steps``.
      warmup_steps: integer >= 0, the length of the warm-up.
      decay_steps: integer > ``warmup_steps``, the length of warm-up plus decay.
      end_value: the value from step ``decay_steps`` on.
      exponent: the cosine's exponent p (see :func:`cosine_decay_schedule`).

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
      >>> print(f"{schedule(5):.2f} {schedule(10):.2f} {schedule(60):.2f} {schedule(110):.2f}")
      0.50 1.00 0.50 0.00
    """
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    decay_steps = check_int(
        "decay_steps",
        decay_steps,
        warmup_steps + 1,
        why=" (warmup_steps + 1: it counts the warm-up)",
    )
    alpha = 0.0 if peak_value == 0 else end_value / peak_value

    def warmup(count: ArrayLike) -> jax.Array:
        remaining = 1 - jnp.clip(_f32(count) / max(warmup_steps, 1), 0, 1)
        return _f32(peak_value) + (_f32(init_value) - _f32(peak_value)) * remaining

    return join_schedules(
        [warmup, cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)],
        [warmup_steps],
    )


def piecewise_constant_schedule(
        init_value: ArrayLike, boundaries_and_scales: Mapping[int, ArrayLike] | None = None
) -> Schedule:
    """Constant pieces: at each boundary step the value is multiplied by that boundary's scale.

    Math: ``η_count = init_value · ∏ {s_i : b_i <= count}`` for the pairs
    ``(b_i, s_i)`` of ``boundaries_and_scales``.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: ``{boundary: scale}`` with scales >= 0. The scales multiply:
        ``{100: 0.1, 200: 0.1}`` gives 0.01 · η from step 200.

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = piecewise_constant_schedule(1.0, {100: 0.5, 200: 0.5})
      >>> print(schedule(99), schedule(100), schedule(200))
      1.0 0.5 0.25
    """
    pieces = []
    for boundary, scale in dict(boundaries_and_scales or {}).items():
        check_range("boundaries_and_scales boundary", boundary)
        pieces.append((boundary, check_nonnegative(f"boundaries_and_scales[{boundary}]", scale)))
    pieces.sort(key=lambda piece: piece[0])

    def schedule(count: ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
        value = _f32(init_value)
        for boundary, scale in pieces:
            # A fractional boundary is compared in float32: an integer count and a float
            # have no implicit promotion under strict dtype rules.
            at = count if isinstance(boundary, int) else _f32(count)
            value = jnp.where(at >= boundary, value * _f32(scale), value)
        return value

    return schedule


def cosine_onecycle_schedule(
        transition_steps: int,
        peak_value: ArrayLike,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle schedule: a cosine rise to ``peak_value``, then a cosine fall far below.

    Math: with ``S = ⌊pct_start · transition_steps⌋``, ``η_0 = peak_value / div_factor`` and
    ``η_end = η_0 / final_div_factor``, the value rises from ``η_0`` to ``peak_value`` on
    a half cosine over steps [0, S], falls on a half cosine to ``η_end`` over
    [S, transition_steps] and stays there. Smith & Topin, "Super-Convergence: Very Fast
    Training of Neural Networks Using Large Learning Rates", 2017.

    Args:
      transition_steps: integer >= 1, the length of the cycle.
      peak_value: the largest value, reached at step S.
      pct_start: the fraction of the cycle spent rising, in [0, 1).
      div_factor: ``peak_value / div_factor`` is the starting value; > 0.
      final_div_factor: the final value is the starting value divided by this; > 0.

    Returns:
      A schedule ``count -> value`` returning a float32 scalar array.

    Examples:
      >>> schedule = cosine_onecycle_schedule(100, peak_value=1.0, pct_start=0.25, div_factor=10.0)
      >>> print(f"{schedule(0):.2f} {schedule(25):.2f} {schedule(100):.6f}")
      0.10 1.00 0.000010
    """
    transition_steps = check_int("transition_steps", transition_steps, 1)
    # At 1 Optax's two boundaries coincide and its schedule never reaches the peak.
    check_range("pct_start", pct_start, 0.0, 1.0, high_open=True)
    check_positive("div_factor", div_factor)
    check_positive("final_div_factor", final_div_factor)
    rise = int(pct_start * transition_steps)
    start = peak_value / div_factor
    end = start / final_div_factor

    def half_cosine(count, first, last, begin, steps):
        factor = _cosine_factor(_f32(count) - begin, max(steps, 1))
        return _f32(last) + (_f32(first) - _f32(last)) * factor

    def schedule(count: ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
        rising = half_cosine(count, start, peak_value, 0, rise)
        falling = half_cosine(count, peak_value, end, rise, transition_steps - rise)
        return jnp.where(count < rise, rising, falling)

    return schedule


# The lesson's names for the same schedules.
constant = constant_schedule
cosine_decay = cosine_decay_schedule
join = join_schedules
one_cycle = cosine_onecycle_schedule
piecewise_constant = piecewise_constant_schedule
warmup_cosine = warmup_cosine_decay_schedule
