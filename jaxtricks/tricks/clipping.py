"""Gradient clipping: by value, by each leaf's norm, by the global norm (lesson L6).

With a threshold θ (the lesson suggests θ = 1 or θ = 10):

    clip_by_value:        u = clamp(g, −θ, θ)                          elementwise
    clip_by_norm:         u_i = g_i · min(1, θ / ‖g_i‖)                  for each leaf i
    clip_by_global_norm:  u = g if ‖g‖ < θ else g · θ / ‖g‖             ‖g‖ over all leaves

Norm clipping keeps the gradient's direction and bounds its length; value clipping bounds
each coordinate and can change the direction. Norms are accumulated in at least float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks._checks import check_positive, resolve
from jaxtricks.tricks.base import CountState, init_count
from jaxtricks.tricks.tree import global_norm, like


def clip_by_value(max_delta: Any) -> optax.GradientTransformation:
    """Clamps every coordinate of the updates to ``[−θ, θ]``.

    Args:
      max_delta: θ > 0, a float or a schedule.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_value(1.0)
      >>> u, _ = tx.update(jnp.array([-3.0, 0.5, 2.0]), tx.init(None))
      >>> u.tolist()
      [-1.0, 0.5, 1.0]
    """
    check_positive("max_delta", max_delta)

    def update_fn(updates, state, params=None):
        del params
        theta = resolve(max_delta, state.count)
        clipped = jax.tree.map(
            lambda g: jnp.clip(g, -like(theta, g), like(theta, g)), updates
        )
        return clipped, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_count, update_fn)


def clip_by_norm(max_norm: Any) -> optax.GradientTransformation:
    """Rescales each leaf whose own Euclidean norm exceeds θ down to norm θ.

    Math: ``u_i = g_i · min(1, θ / ‖g_i‖)`` for every leaf ``g_i`` separately.

    Args:
      max_norm: θ > 0, a float or a schedule.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])}, tx.init(None))
      >>> [round(x, 4) for x in u["a"].tolist()], u["b"].tolist()
      ([0.6, 0.8], [0.5])
    """
    check_positive("max_norm", max_norm)

    def clip_leaf(g, theta):
        norm = global_norm(g)
        factor = jnp.minimum(1, like(theta, norm) / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        return (g.astype(norm.dtype) * factor).astype(g.dtype)

    def update_fn(updates, state, params=None):
        del params
        theta = resolve(max_norm, state.count)
        clipped = jax.tree.map(lambda g: clip_leaf(g, theta), updates)
        return clipped, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_count, update_fn)


def clip_by_global_norm(max_norm: Any) -> optax.GradientTransformation:
    """Rescales all updates together when their global norm exceeds θ.

    Math: ``u = g`` if ``‖g‖ < θ`` else ``u = (g / ‖g‖) · θ`` with ``‖g‖`` over every leaf
    (Pascanu et al. 2013, https://arxiv.org/abs/1211.5063).

    Args:
      max_norm: θ > 0, a float or a schedule.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = clip_by_global_norm(1.0)
      >>> u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
      >>> round(float(u["a"][0]), 4), round(float(u["b"][0]), 4)
      (0.6, 0.8)
    """
    check_positive("max_norm", max_norm)

    def update_fn(updates, state, params=None):
        del params
        theta = resolve(max_norm, state.count)
        norm = global_norm(updates)
        keep = norm < like(theta, norm)
        # Rescaled in the norm's dtype (float32 at least) and rounded once, as in clip_by_norm:
        # three roundings in bfloat16 or float16 could overshoot θ by more than one unit.
        factor = like(theta, norm) / norm
        clipped = jax.tree.map(
            lambda g: jnp.where(keep, g, (g.astype(norm.dtype) * factor).astype(g.dtype)),
            updates,
        )
        return clipped, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_count, update_fn)
