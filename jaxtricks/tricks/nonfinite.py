"""Skipping steps whose gradient is not finite.

A single NaN or Inf in a gradient poisons Adam's moments and every parameter it touches.
``apply_if_finite(inner, max_consecutive_errors)`` (Optax's name, signature and state) looks at
the incoming gradient first; with ``c`` the number of non-finite gradients in a row:

    if every g is finite or c > max_consecutive_errors:   (u, s') = inner.update(g, s)
    else:                                                  u = 0;   s' = s

so a bad step leaves the parameters (a zero update) and the inner state (moments, counters,
schedules) exactly as they were, and training goes on with the next batch; after more than
``max_consecutive_errors`` bad steps in a row it gives up and applies them.
``skip_nonfinite(inner)`` is the lesson's trick: the same, never giving up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks.tricks.checks import check_int
from jaxtricks.tricks.tree import all_finite

_NEVER = int(np.iinfo(np.int32).max)


def apply_if_finite(
    inner: optax.GradientTransformation, max_consecutive_errors: int
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that a gradient holding a NaN or Inf becomes a skipped step.

    Math: ``u = inner(g)`` when ``g`` is finite everywhere or more than
    ``max_consecutive_errors`` non-finite gradients came in a row, else ``u = 0`` with the
    inner state unchanged.

    Args:
      inner: any ``optax.GradientTransformation`` (a whole optimizer chain, typically);
        extra arguments of ``update`` are passed on to it.
      max_consecutive_errors: the non-finite gradients in a row that are skipped, an integer
        ≥ 0; the next one is applied.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ApplyIfFiniteState(notfinite_count, last_finite, total_notfinite,
      inner_state)``: non-finite gradients in a row, whether the last one was finite, all
      non-finite gradients so far, and the inner state.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> tx = apply_if_finite(optax.sgd(0.1), max_consecutive_errors=2)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> u.tolist(), int(state.total_notfinite)
      ([0.0, 0.0], 1)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )
    max_consecutive_errors = check_int("max_consecutive_errors", max_consecutive_errors, 0)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros((), jnp.int32),
            last_finite=jnp.asarray(True),
            total_notfinite=jnp.zeros((), jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        in_a_row = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
        apply = finite | (in_a_row > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        new_updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(apply, new, old), new_inner, state.inner_state
        )
        return new_updates, optax.ApplyIfFiniteState(
            notfinite_count=in_a_row,
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, optax.safe_increment(state.total_notfinite)
            ),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """The lesson's trick: every step whose gradient holds a NaN or Inf is skipped.

    :func:`apply_if_finite` that never gives up: its count of non-finite gradients in a row
    saturates at the largest int32, which never exceeds ``max_consecutive_errors``.

    Args:
      inner: any ``optax.GradientTransformation``.

    Returns:
      :func:`apply_if_finite`'s transform; ``state.total_notfinite`` counts the skipped steps.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> tx = skip_nonfinite(optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> u.tolist(), int(state.total_notfinite)
      ([0.0, 0.0], 1)
    """
    return apply_if_finite(inner, _NEVER)
