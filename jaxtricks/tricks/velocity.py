"""Momentum's velocity: heavy-ball, Nesterov, and the lesson's own form (lesson L6).

Heavy-ball momentum keeps a trace of past gradients and outputs it,

    v_t = g_t + γ v_{t-1},        u_t = v_t                (heavy-ball)
    v_t = g_t + γ v_{t-1},        u_t = g_t + γ v_t        (Nesterov, Sutskever et al. 2013)

and the learning rate is applied afterwards (``u ← −η u``), so ``w_t = w_{t-1} − η_t v_t``.

The lesson writes momentum with the learning rate inside the velocity,

    v_t = γ v_{t-1} − η_t g_t,    w_t = w_{t-1} + v_t.

With a constant η both are the same algorithm (the lesson's ``v`` is ``−η`` times the
heavy-ball trace). Once η changes they differ: the lesson's velocity remembers each past
gradient scaled by the learning rate *of its own step*, heavy-ball rescales the whole trace
by the *current* learning rate. ``scale_by_velocity`` implements the lesson's form;
``trace`` is Optax's heavy-ball transform (name, arguments, state), ``scale_by_momentum`` the
lesson's name for it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from jaxtricks.tricks.base import canonical_dtype, zero_count, zeros_like_tree
from jaxtricks.tricks.checks import check_nonnegative, check_range, is_schedule, resolve
from jaxtricks.tricks.tree import check_inexact_leaves, check_same_structure, like


class TraceWithCountState(NamedTuple):
    """State of :func:`trace` when ``decay`` is a schedule (``optax.TraceState`` plus the step
    count the schedule reads)."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    trace: optax.Updates  # like params, dtype accumulator_dtype or the params' dtype


class VelocityState(NamedTuple):
    """State of :func:`scale_by_velocity`."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32, steps taken (for schedules)
    velocity: optax.Updates  # like params, the lesson's v (already includes −η)


def trace(
    decay: Any,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Heavy-ball or Nesterov momentum on the gradients, learning rate not included.

    Optax's ``trace``. Math: ``v_t = g_t + γ v_{t-1}``; returns ``v_t`` (heavy-ball) or
    ``g_t + γ v_t`` (Nesterov, Sutskever et al. 2013). Chain with
    :func:`scale_by_learning_rate` to take a step.

    Args:
      decay: γ in [0, 1]; 0 is plain SGD, 1 is pure motion. A float, a scalar array or a
        schedule.
      nesterov: use Nesterov's look-ahead form.
      accumulator_dtype: dtype of the trace; ``None`` uses each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.TraceState(trace)`` (a :class:`TraceWithCountState` when ``decay`` is a
      schedule).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = trace(0.5)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.ones(2), state)
      >>> u, state = tx.update(jnp.ones(2), state)
      >>> u.tolist()
      [1.5, 1.5]
    """
    check_range("decay", decay, 0.0, 1.0)
    accumulator_dtype = canonical_dtype(accumulator_dtype)
    scheduled = is_schedule(decay)

    def init_fn(params):
        check_inexact_leaves("params", params)
        velocity = zeros_like_tree(params, accumulator_dtype)
        if scheduled:
            return TraceWithCountState(count=zero_count(), trace=velocity)
        return optax.TraceState(trace=velocity)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure("updates", updates, "the momentum trace", state.trace)
        check_inexact_leaves("updates", updates)
        gamma = resolve(decay, state.count) if scheduled else decay
        new_trace = jax.tree.map(
            lambda g, t: g.astype(t.dtype) + like(gamma, t) * t, updates, state.trace
        )
        if nesterov:
            out = jax.tree.map(
                lambda g, t: (g.astype(t.dtype) + like(gamma, t) * t).astype(g.dtype),
                updates,
                new_trace,
            )
        else:
            out = jax.tree.map(lambda g, t: t.astype(g.dtype), updates, new_trace)
        if scheduled:
            return out, TraceWithCountState(
                count=optax.safe_increment(state.count), trace=new_trace
            )
        return out, optax.TraceState(trace=new_trace)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_momentum(
    decay: Any = 0.9,
    *,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The lesson's name for :func:`trace`, with a default momentum of 0.9.

    Math: ``v_t = g_t + γ v_{t-1}``; returns ``v_t`` (heavy-ball) or ``g_t + γ v_t``
    (Nesterov).

    Args:
      decay: γ in [0, 1], a float or a schedule.
      nesterov: use Nesterov's look-ahead form.
      accumulator_dtype: dtype of the trace; ``None`` uses each parameter's dtype.

    Returns:
      :func:`trace`'s transform.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_momentum(0.5, nesterov=True)
      >>> u, _ = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
      >>> u.tolist()
      [1.5]
    """
    return trace(decay, nesterov, accumulator_dtype)


def scale_by_velocity(
    learning_rate: Any,
    momentum: Any = 0.9,
    *,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The lesson's momentum, with the learning rate inside the velocity.

    Math: ``v_t = γ v_{t-1} − η_t g_t``; returns ``v_t``, so that
    ``optax.apply_updates`` performs ``w_t = w_{t-1} + v_t``. The sign flip is included:
    do not chain :func:`scale_by_learning_rate` after it.

    With constant η this equals heavy-ball momentum followed by ``−η``; with a schedule
    it does not (see the module docstring).

    Args:
      learning_rate: η ≥ 0, a float or a schedule ``count -> η``.
      momentum: γ in [0, 1], a float or a schedule.
      accumulator_dtype: dtype of the velocity; ``None`` uses each parameter's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`VelocityState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_velocity(learning_rate=0.1, momentum=0.5)
      >>> state = tx.init(jnp.zeros(1))
      >>> v, state = tx.update(jnp.ones(1), state)
      >>> v, state = tx.update(jnp.ones(1), state)
      >>> round(float(v[0]), 6)
      -0.15
    """
    check_nonnegative("learning_rate", learning_rate)
    check_range("momentum", momentum, 0.0, 1.0)
    accumulator_dtype = canonical_dtype(accumulator_dtype)

    def init_fn(params):
        check_inexact_leaves("params", params)
        return VelocityState(
            count=zero_count(), velocity=zeros_like_tree(params, accumulator_dtype)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure("updates", updates, "the velocity", state.velocity)
        check_inexact_leaves("updates", updates)
        eta = resolve(learning_rate, state.count)
        gamma = resolve(momentum, state.count)
        velocity = jax.tree.map(
            lambda g, v: like(gamma, v) * v - like(eta, v) * g.astype(v.dtype),
            updates,
            state.velocity,
        )
        out = jax.tree.map(lambda g, v: v.astype(g.dtype), updates, velocity)
        return out, VelocityState(count=optax.safe_increment(state.count), velocity=velocity)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
