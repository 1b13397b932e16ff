"""The learning rate: the one place where an update's sign is flipped (lesson L6).

Math: ``u_t = −η_t g_t``, so that ``optax.apply_updates`` performs ``w_t = w_{t-1} − η_t g_t``.
η is a constant or a schedule ``count -> η`` (any jaxtricks or Optax schedule).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxtricks.tricks._checks import check_nonnegative, resolve
from jaxtricks.tricks.base import CountState, init_count
from jaxtricks.tricks.tree import check_float_leaves, check_same_structure, like


def scale_by_learning_rate(
    learning_rate: Any, *, flip_sign: bool = True
) -> optax.GradientTransformation:
    """Multiplies updates by ``−η_t`` (or ``+η_t`` with ``flip_sign=False``).

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule ``count -> η``.
      flip_sign: negate, turning a descent direction into a step (the default).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_learning_rate(0.5)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> u.tolist()
      [-1.0]
    """
    check_nonnegative("learning_rate", learning_rate)
    sign = -1 if flip_sign else 1

    def init_fn(params):
        check_float_leaves("params", params)
        return init_count(params)

    def update_fn(updates, state, params=None):
        # Every optimizer ends here, so this is where a gradient that does not match the
        # parameters, or an integer one, is caught for all of them (at trace time only).
        if params is not None:
            check_same_structure("updates", updates, "params", params)
        check_float_leaves("updates", updates)
        eta = resolve(learning_rate, state.count)
        scaled = jax.tree.map(lambda g: g * like(sign * eta, g), updates)
        return scaled, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
