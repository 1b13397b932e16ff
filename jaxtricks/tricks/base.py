"""The few pieces every jaxtricks transform shares.

Transforms are ``optax.GradientTransformation`` objects and use Optax's own types; this module
only holds the step counter that lets any hyperparameter be a schedule ``count -> value``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class CountState(NamedTuple):
    """State of a transform whose only memory is the step count (for schedules)."""

    count: jax.Array  # shape=(), int32, steps taken; saturates instead of overflowing


def init_count(params: Any = None) -> CountState:
    """A :class:`CountState` at step 0; ``params`` is accepted and ignored."""
    del params
    return CountState(count=jnp.zeros((), jnp.int32))


def zeros_like_tree(params: Any, dtype: Any | None = None) -> Any:
    """Zeros shaped like ``params``, in ``dtype`` or each leaf's own dtype."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype or p.dtype), params)
