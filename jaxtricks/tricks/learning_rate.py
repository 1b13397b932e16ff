"""The learning rate: the one place where an update's sign is flipped (lesson L6).

Math: ``u_t = −η_t g_t``, so that ``optax.apply_updates`` performs ``w_t = w_{t-1} − η_t g_t``.
η is a constant or a schedule ``count -> η`` (any jaxtricks or Optax schedule).
"""


import jax
import optax

from jaxtricks.tricks.base import stateless_unless_scheduled
from jaxtricks.tricks.checks import check_nonnegative
from jaxtricks.tricks.tree import check_inexact_leaves, check_same_structure, like


def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    flip_sign: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Multiplies updates by ``−η_t`` (or ``+η_t`` with ``flip_sign=False``), as Optax's.

    Math: ``u_t = −η_t g_t``.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array (any float dtype) or a schedule
        ``count -> η``; ``None`` leaves the updates as they are.
      flip_sign: negate, turning a descent direction into a step (the default).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its state is ``optax.EmptyState()`` for
      a constant η or ``None``, and ``optax.ScaleByScheduleState(count)`` for a schedule.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_learning_rate(0.5)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> u.tolist()
      [-1.0]
    """
    if learning_rate is None:
        return optax.with_extra_args_support(optax.identity())
    check_nonnegative("learning_rate", learning_rate)
    sign = -1 if flip_sign else 1

    def scale(updates, params, learning_rate):
        # Every optimizer ends here, so this is where a gradient that does not match the
        # parameters, or an integer one, is caught for all of them (at trace time only).
        if params is not None:
            check_same_structure("updates", updates, "params", params)
        check_inexact_leaves("updates", updates)
        return jax.tree.map(lambda g: g * like(sign * learning_rate, g), updates)

    return stateless_unless_scheduled(scale, {"learning_rate": learning_rate}, check_params=True)
