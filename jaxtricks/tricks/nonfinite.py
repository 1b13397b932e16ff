"""Skipping steps whose gradient is not finite.

A single NaN or Inf in a gradient poisons Adam's moments and every parameter it touches.
``skip_nonfinite(inner)`` looks at the incoming gradient first:

    if every g is finite:  (u, s') = inner.update(g, s);  skipped' = skipped
    else:                   u = 0;   s' = s;   skipped' = skipped + 1

so a bad step leaves the parameters (a zero update) and the inner state (moments, counters,
schedules) exactly as they were, and counts the skip. Training goes on with the next batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.tree import all_finite


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`."""

    inner_state: Any  # the wrapped transform's state, untouched on skipped steps
    skipped: jax.Array  # shape=(), int32, total steps skipped
    consecutive: jax.Array  # shape=(), int32, skips since the last finite step
    last_finite: jax.Array  # shape=(), bool, whether the last gradient was finite


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wraps ``inner`` so that a gradient holding a NaN or Inf becomes a skipped step.

    Math: ``u = inner(g)`` when ``g`` is finite everywhere, else ``u = 0`` with the inner
    state unchanged; ``skipped`` counts the skipped steps.

    Args:
      inner: any ``optax.GradientTransformation`` (a whole optimizer chain, typically).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`SkipNonfiniteState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> tx = skip_nonfinite(optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([1.0, jnp.nan]), state)
      >>> u.tolist(), int(state.skipped)
      ([0.0, 0.0], 1)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"inner must be an optax.GradientTransformation, got {type(inner).__name__}"
        )

    def init_fn(params):
        return SkipNonfiniteState(
            inner_state=inner.init(params),
            skipped=jnp.zeros((), jnp.int32),
            consecutive=jnp.zeros((), jnp.int32),
            last_finite=jnp.asarray(True),
        )

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        new_updates = jax.tree.map(
            lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates
        )
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_inner, state.inner_state
        )
        return new_updates, SkipNonfiniteState(
            inner_state=inner_state,
            skipped=jnp.where(finite, state.skipped, optax.safe_increment(state.skipped)),
            consecutive=jnp.where(finite, 0, optax.safe_increment(state.consecutive)),
            last_finite=finite,
        )

    return optax.GradientTransformation(init_fn, update_fn)
