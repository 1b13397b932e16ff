"""The few pieces every jaxtricks transform shares.

Transforms are ``optax.GradientTransformationExtraArgs`` objects and use Optax's own types and
state NamedTuples. Where a transform shares its name with Optax, its state is laid out like
Optax's for the same settings: ``optax.EmptyState()`` for a transform Optax keeps stateless.
A hyperparameter that is a schedule ``count -> value`` (an extra of ours wherever Optax only
takes a number) needs a step counter; only then does a stateless transform keep one, as an
``optax.ScaleByScheduleState(count)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.checks import is_schedule, resolve
from jaxtricks.tricks.tree import check_inexact_leaves


def zeros_like_tree(params: Any, dtype: Any | None = None) -> Any:
    """Zeros shaped like ``params``, in ``dtype`` or each leaf's own dtype."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype or p.dtype), params)


def canonical_dtype(dtype: Any | None) -> Any | None:
    """``dtype`` as JAX will store it (float64 is float32 without x64), or None for None."""
    return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def zero_count() -> jax.Array:
    """A step counter at 0: shape (), int32."""
    return jnp.zeros((), jnp.int32)


def stateless_unless_scheduled(
    update: Callable[..., Any],
    hyperparameters: dict[str, Any],
    *,
    count_state: type[NamedTuple] = optax.ScaleByScheduleState,
    check_params: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """A transform with no state of its own, unless one of its hyperparameters is a schedule.

    ``update(updates, params, **values)`` computes the new updates from the hyperparameters'
    values at this step. With only numbers (or arrays, or tracers) the state is
    ``optax.EmptyState()``, as for Optax's stateless transforms, and ``update`` may be called
    with any state, ``None`` included. With a schedule among them the state is
    ``count_state(count)``, the count of steps taken, at which every schedule is read.
    Extra keyword arguments of ``update`` (Optax's ``GradientTransformationExtraArgs``) are
    accepted and ignored. With ``check_params``, ``init`` refuses parameters that are not
    real or complex floating-point arrays.
    """
    scheduled = any(is_schedule(value) for value in hyperparameters.values())

    def init_fn(params):
        if check_params:
            check_inexact_leaves("params", params)
        return count_state(count=zero_count()) if scheduled else optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if not scheduled:
            return update(updates, params, **hyperparameters), state
        values = {name: resolve(value, state.count) for name, value in hyperparameters.items()}
        new_state = count_state(count=optax.safe_increment(state.count))
        return update(updates, params, **values), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
