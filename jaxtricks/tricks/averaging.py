"""Averages of the parameters along training: EMA, Polyak and SWA (lesson L5, model averaging).

The parameters θ_1, θ_2, ... are handed to ``update`` one at a time (after every step, or
after every epoch) and the average is read with ``averaged``. With weights a_t ≥ 0 every
average here is a normalized weighted sum, kept as a running update

    θ̄_t = θ̄_{t−1} + w_t (θ_t − θ̄_{t−1}),

which is θ_t exactly for w_t = 1, and θ̄_{t−1} exactly for w_t = 0 or θ_t = θ̄_{t−1}.

- EMA of the parameters, debiased (``ema_params(d)``): θ̄_t = Σ_k d^{t−k} θ_k / Σ_k d^{t−k}
  (k = 1..t), the bias-corrected exponential moving average. With S_t = 1 + d·S_{t−1},
  S_0 = 0, the running weight is w_t = 1/S_t: the first update gives θ_1, d = 0 gives θ_t,
  d = 1 gives the uniform mean, and there is no division by 1 − d^t to lose precision.
- EMA without debiasing (``debias=False``): w_t = 1 − d, started at θ̄_0 = the params
  given to ``init``, so d = 1 keeps them and d = 0 gives θ_t.
- Polyak–Ruppert averaging (``polyak_params()``; Polyak & Juditsky, 1992): the uniform mean
  θ̄_t = (1/t) Σ_k θ_k, w_t = 1/t.
- Stochastic weight averaging (``swa_params(start, every)``; Izmailov et al., 2018): the
  uniform mean of the θ_t with t ≥ start and (t − start) divisible by ``every``; before the
  first of them θ̄ follows θ_t, so evaluating the average before the window is evaluating θ.

Why a standalone accumulator and not an Optax wrapper around the optimizer: the average is
not part of the optimization (nothing reads it to compute an update), so keeping it out of the
optimizer state leaves the optimizer, its checkpoints and its sharding unchanged, lets one
average follow any training loop at any cadence (per step or per epoch) and makes the average
a value the caller holds, not a leaf to dig out of a nested ``opt_state``. (``optax.ema``
averages the *updates*, not the parameters.)

Averaged weights need fresh batch-norm statistics before evaluation; see
:func:`jaxtricks.training.averaging.recompute_batch_stats`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.checks import check_int, check_range, resolve
from jaxtricks.tricks.tree import check_inexact_leaves, check_same_structure


class EmaParamsState(NamedTuple):
    """State of :func:`ema_params`."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    # Updates seen, saturating (for decay schedules).
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    weight_sum: jax.Array  # shape=(), float32; S_t = 1 + d_t S_{t-1} (used when debiasing)
    average: Any  # like params, same dtypes: θ̄_t (init's params before any update)


class SwaParamsState(NamedTuple):
    """State of :func:`swa_params` and :func:`polyak_params`."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32; updates seen, saturating
    num_averaged: jax.Array  # shape=(), int32; parameters taken into the average
    average: Any  # like params, same dtypes: θ̄_t (the latest θ before the window opens)


class ParamAveraging(NamedTuple):
    """A pure parameter average: ``init(params)``, ``update(state, params)``, ``averaged``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any], Any]
    averaged: Callable[[Any], Any]  # state -> the averaged params


def _averaged(state: EmaParamsState | SwaParamsState) -> Any:
    return state.average


def _blend(average: Any, params: Any, weight: jax.Array) -> Any:
    """θ̄ + w (θ − θ̄), leaf by leaf in the average's dtype; exactly θ when w = 1."""
    check_same_structure("params", params, "the average", average)
    check_inexact_leaves("params", params)

    # This form keeps θ̄ exactly when θ = θ̄ (a constant trajectory) or w = 0; the select
    # makes w = 1 exact too, where θ̄ + (θ − θ̄) can round away from θ.
    def blend(a, p):
        p = p.astype(a.dtype)
        w = weight.astype(a.dtype)
        return jnp.where(weight == 1, p, a + w * (p - a))

    return jax.tree.map(blend, average, params)


def ema_params(decay: Any, *, debias: bool = True) -> ParamAveraging:
    """An exponential moving average of the parameters themselves.

    Math: debiased, ``θ̄_t = Σ_k d^{t−k} θ_k / Σ_k d^{t−k}``, i.e. ``θ̄_t = (1 − 1/S_t) θ̄_{t−1} +
    θ_t / S_t`` with ``S_t = 1 + d S_{t−1}``; otherwise ``θ̄_t = d θ̄_{t−1} + (1 − d) θ_t``
    from θ̄_0 = the params given to ``init``.

    Args:
      decay: d in [0, 1], a float or a schedule ``count -> d`` of the update count.
      debias: correct the bias towards the initial value (a warm-up: the early averages are
        means of the few parameters seen so far rather than mostly θ̄_0).

    Returns:
      A :class:`ParamAveraging` whose state is an :class:`EmaParamsState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> ema = ema_params(0.5)
      >>> state = ema.init(jnp.zeros(1))
      >>> state = ema.update(state, jnp.ones(1))
      >>> state = ema.update(state, jnp.full(1, 4.0))
      >>> ema.averaged(state).tolist()  # (0.5·1 + 4) / 1.5
      [3.0]
    """
    check_range("decay", decay, 0.0, 1.0)
    if not isinstance(debias, bool):
        raise ValueError(f"debias must be a bool, got {debias!r}")

    def init_fn(params):
        check_inexact_leaves("params", params)
        return EmaParamsState(
            count=jnp.zeros((), jnp.int32),
            weight_sum=jnp.zeros((), jnp.float32),
            average=params,
        )

    def update_fn(state, params):
        d = jnp.asarray(resolve(decay, state.count)).astype(jnp.float32)
        weight_sum = 1 + d * state.weight_sum
        weight = 1 / weight_sum if debias else 1 - d
        return EmaParamsState(
            count=optax.safe_increment(state.count),
            weight_sum=weight_sum,
            average=_blend(state.average, params, weight),
        )

    return ParamAveraging(init_fn, update_fn, _averaged)


def swa_params(start: int = 1, every: int = 1) -> ParamAveraging:
    """Stochastic weight averaging: the uniform mean of the parameters in a window.

    Math: with t = 1, 2, ... the update count, θ_t enters the average when ``t ≥ start`` and
    ``(t − start) mod every = 0``; ``θ̄ = (1/n) Σ θ_t`` over the n that entered. Until the
    first enters, θ̄ is the latest θ_t (or init's params before any update).

    Args:
      start: the first update that enters the average, an integer >= 1 (an epoch number when
        updated once per epoch).
      every: the spacing of the updates that enter, an integer >= 1 (the cycle length of a
        cyclic learning rate, or 1).

    Returns:
      A :class:`ParamAveraging` whose state is a :class:`SwaParamsState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> swa = swa_params(start=2, every=2)
      >>> state = swa.init(jnp.zeros(1))
      >>> for value in [10.0, 1.0, 20.0, 3.0]:  # updates 2 and 4 enter
      ...     state = swa.update(state, jnp.full(1, value))
      >>> swa.averaged(state).tolist(), int(state.num_averaged)
      ([2.0], 2)
    """
    start = check_int("start", start, 1)
    every = check_int("every", every, 1)

    def init_fn(params):
        check_inexact_leaves("params", params)
        return SwaParamsState(
            count=jnp.zeros((), jnp.int32),
            num_averaged=jnp.zeros((), jnp.int32),
            average=params,
        )

    def update_fn(state, params):
        t = optax.safe_increment(state.count)
        enters = (t >= start) & (jnp.remainder(t - start, every) == 0)
        num_averaged = jnp.where(
            enters, optax.safe_increment(state.num_averaged), state.num_averaged
        )
        entered = jnp.maximum(num_averaged, 1).astype(jnp.float32)
        # Before the window opens the average tracks the parameters (weight 1).
        weight = jnp.where(enters | (num_averaged == 0), 1 / entered, 0.0)
        return SwaParamsState(
            count=t,
            num_averaged=num_averaged,
            average=_blend(state.average, params, weight),
        )

    return ParamAveraging(init_fn, update_fn, _averaged)


def polyak_params() -> ParamAveraging:
    """Polyak–Ruppert averaging: the uniform mean of every parameter handed to ``update``.

    Math: ``θ̄_t = (1/t) Σ_{k=1..t} θ_k``, kept as ``θ̄_t = θ̄_{t−1} + (θ_t − θ̄_{t−1}) / t``.
    The same as ``swa_params(start=1, every=1)``.

    Returns:
      A :class:`ParamAveraging` whose state is a :class:`SwaParamsState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> polyak = polyak_params()
      >>> state = polyak.init(jnp.zeros(1))
      >>> for value in [1.0, 2.0, 6.0]:
      ...     state = polyak.update(state, jnp.full(1, value))
      >>> polyak.averaged(state).tolist()
      [3.0]
    """
    return swa_params(start=1, every=1)
