"""Weight decay and L2 regularization against overfitting (lesson L5).

Both add ``λ w`` to the update. They differ only in *where* in the chain they stand:

    coupled L2 (add_l2_penalty before the optimizer):   g' = g + λ w, then Adam etc. scale g'
    decoupled (add_decayed_weights after the scaling):  u = adam(g) + λ w, then u ← −η u

Coupled L2 is the gradient of the penalty ``(λ/2)‖w‖²`` added to the loss; an adaptive
optimizer then divides the penalty by its running RMS, so weights with large gradients are
barely decayed. Decoupled weight decay (AdamW, Loshchilov & Hutter 2019,
https://arxiv.org/abs/1711.05101) shrinks every weight by ``η λ`` per step whatever its
gradient. For plain SGD the two coincide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from jaxtricks.tricks.base import stateless_unless_scheduled
from jaxtricks.tricks.checks import check_nonnegative
from jaxtricks.tricks.tree import check_same_structure, like


class WeightDecaySchedule(NamedTuple):
    """State of :func:`add_decayed_weights` with a scheduled λ (the name and field of the
    state Optax's ``add_decayed_weights`` keeps then)."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adds ``λ w`` to the updates (decoupled weight decay when placed after the scaling).

    Math: ``u = g + λ_t w``.

    Args:
      weight_decay: λ ≥ 0, a float, a scalar array or a schedule.
      mask: a pytree of booleans like the params (or a prefix of it), or a function
        ``params -> such a tree``; only leaves marked True are decayed (commonly: kernels
        yes, biases and norms no). Implemented with ``optax.masked``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; it needs ``params`` in ``update``. Its
      state is ``optax.EmptyState()``, or :class:`WeightDecaySchedule` for a scheduled λ
      (inside ``optax.MaskedState`` with a mask), as in Optax.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = add_decayed_weights(0.1)
      >>> w = jnp.array([2.0])
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(w), w)
      >>> round(float(u[0]), 4)
      1.2
    """
    check_nonnegative("weight_decay", weight_decay)

    def decay(updates, params, weight_decay):
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params)"
            )
        check_same_structure("updates", updates, "params", params, none_is_prefix=True)
        return jax.tree.map(
            lambda g, w: None if g is None else g + like(weight_decay, g) * w.astype(g.dtype),
            updates,
            params,
            is_leaf=lambda node: node is None,
        )

    transform = stateless_unless_scheduled(
        decay, {"weight_decay": weight_decay}, count_state=WeightDecaySchedule
    )
    return transform if mask is None else optax.masked(transform, mask)


def add_l2_penalty(
    coefficient: Any = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adds the gradient of the L2 penalty ``(λ/2)‖w‖²`` to the gradient (coupled L2).

    Math: ``g' = g + λ w``. Place it *first* in a chain, before momentum or adaptive
    scaling, so that the penalty is scaled like the loss's gradient. The arithmetic is that
    of :func:`add_decayed_weights`; only the placement differs (see the module docstring).

    Args:
      coefficient: λ ≥ 0, a float or a schedule.
      mask: as in :func:`add_decayed_weights`.

    Returns:
      :func:`add_decayed_weights`'s transform; it needs ``params`` in ``update``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from jaxtricks.tricks.adaptive import scale_by_adam
      >>> tx = optax.chain(add_l2_penalty(1e-4), scale_by_adam())
      >>> state = tx.init(jnp.ones(3))
    """
    check_nonnegative("coefficient", coefficient)
    return add_decayed_weights(coefficient, mask)
