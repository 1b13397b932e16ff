"""Gradient clipping: by value, by each leaf's norm, by the global norm (lesson L6).

With a threshold θ (the lesson suggests θ = 1 or θ = 10):

    clip_by_value:        u = clamp(g, −θ, θ)                          elementwise
    clip_by_norm:         u_i = g_i · min(1, θ / ‖g_i‖)                  for each leaf i
    clip_by_global_norm:  u = g if ‖g‖ < θ else g · θ / ‖g‖             ‖g‖ over all leaves

Norm clipping keeps the gradient's direction and bounds its length; value clipping bounds
each coordinate and can change the direction. Norms are accumulated in at least float32.

``clip`` (Optax's name; ``clip_by_value`` is the same function) and ``clip_by_global_norm``
have Optax's signature and stateless state; a schedule as threshold (an extra of ours) adds a
step count. ``clip_by_norm`` clips each leaf on its own, which Optax has no transform for.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.base import stateless_unless_scheduled
from jaxtricks.tricks.checks import check_positive
from jaxtricks.tricks.tree import global_norm, like, wider_dtype


def _rescaled(g: jax.Array, factor: jax.Array) -> jax.Array:
    """``g · factor`` for a real scalar ``factor``, computed in at least the factor's precision.

    Rounded once: three roundings in bfloat16 or float16 could overshoot θ by more than one
    unit in the last place.
    """
    wide = wider_dtype(g.dtype, factor.dtype)
    return (g.astype(wide) * factor.astype(wide)).astype(g.dtype)


def clip(max_delta: Any) -> optax.GradientTransformationExtraArgs:
    """Clamps every coordinate of the updates to ``[−θ, θ]`` (Optax's ``clip``).

    Math: ``u = clamp(g, −θ, θ)`` elementwise.

    Args:
      max_delta: θ > 0, a float, a scalar array or a schedule.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is ``optax.EmptyState()``, or
      ``optax.ScaleByScheduleState(count)`` when θ is a schedule.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = clip(1.0)
      >>> u, _ = tx.update(jnp.array([-3.0, 0.5, 2.0]), tx.init(None))
      >>> u.tolist()
      [-1.0, 0.5, 1.0]
    """
    check_positive("max_delta", max_delta)

    def clamp(updates, params, max_delta):
        del params
        return jax.tree.map(
            lambda g: jnp.clip(g, -like(max_delta, g), like(max_delta, g)), updates
        )

    return stateless_unless_scheduled(clamp, {"max_delta": max_delta})


# The lesson's name: value clipping, as opposed to norm clipping.
clip_by_value = clip


def clip_by_norm(max_norm: Any) -> optax.GradientTransformationExtraArgs:
    """Rescales each leaf whose own Euclidean norm exceeds θ down to norm θ.

    Math: ``u_i = g_i · min(1, θ / ‖g_i‖)`` for every leaf ``g_i`` separately.

    Args:
      max_norm: θ > 0, a float, a scalar array or a schedule.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is ``optax.EmptyState()``, or
      ``optax.ScaleByScheduleState(count)`` when θ is a schedule.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])}, tx.init(None))
      >>> [round(x, 4) for x in u["a"].tolist()], u["b"].tolist()
      ([0.6, 0.8], [0.5])
    """
    check_positive("max_norm", max_norm)

    def clip_leaf(g, theta):
        norm = global_norm(g, at_least_float32=True)
        factor = jnp.minimum(1, like(theta, norm) / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        return _rescaled(g, factor)

    def clip_leaves(updates, params, max_norm):
        del params
        return jax.tree.map(lambda g: clip_leaf(g, max_norm), updates)

    return stateless_unless_scheduled(clip_leaves, {"max_norm": max_norm})


def clip_by_global_norm(max_norm: Any) -> optax.GradientTransformationExtraArgs:
    """Rescales all updates together when their global norm exceeds θ.

    Math: ``u = g`` if ``‖g‖ < θ`` else ``u = (g / ‖g‖) · θ`` with ``‖g‖`` over every leaf
    (Pascanu et al. 2013, https://arxiv.org/abs/1211.5063).

    Args:
      max_norm: θ > 0, a float, a scalar array or a schedule.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is ``optax.EmptyState()``, or
      ``optax.ScaleByScheduleState(count)`` when θ is a schedule.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_global_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> round(float(u["a"][0]), 4), round(float(u["b"][0]), 4)
      (0.6, 0.8)
    """
    check_positive("max_norm", max_norm)

    def clip_all(updates, params, max_norm):
        del params
        norm = global_norm(updates, at_least_float32=True)
        keep = norm < like(max_norm, norm)
        factor = like(max_norm, norm) / norm
        return jax.tree.map(lambda g: jnp.where(keep, g, _rescaled(g, factor)), updates)

    return stateless_unless_scheduled(clip_all, {"max_norm": max_norm})
