"""The lesson's normalized gradient, ``∇L / ‖∇L‖`` (lesson L6).

Math: ``u = g / (‖g‖ + ε)`` with ``‖g‖ = sqrt(Σ g²)`` over every leaf together, so the update
has unit length (up to ε) and only the gradient's direction matters. Chained with a learning
rate this is normalized gradient descent, ``w ← w − η ∇L / ‖∇L‖``: the step length is η
whatever the gradient's size, which is what the lesson describes when it introduces Adagrad,
RMSProp and Adam (those scale each coordinate instead; see :mod:`jaxtricks.tricks.adaptive`).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxtricks.tricks._checks import check_positive, resolve
from jaxtricks.tricks.base import CountState, init_count
from jaxtricks.tricks.tree import global_norm, like


def normalize_by_global_norm(eps: Any = 1e-6) -> optax.GradientTransformation:
    """Divides the updates by their global norm plus ε.

    Args:
      eps: ε > 0, keeps a zero gradient at zero instead of dividing by zero.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = normalize_by_global_norm(eps=1e-12)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(None))
      >>> [round(x, 4) for x in u.tolist()]
      [0.6, 0.8]
    """
    check_positive("eps", eps)

    def update_fn(updates, state, params=None):
        del params
        norm = global_norm(updates)
        denominator = norm + like(resolve(eps, state.count), norm)
        # Divided in the norm's dtype (float32 at least) and rounded once: cast to float16,
        # the default ε is subnormal, XLA flushes it to zero and a zero gradient gives 0 / 0.
        normalized = jax.tree.map(
            lambda g: (g.astype(denominator.dtype) / denominator).astype(g.dtype), updates
        )
        return normalized, CountState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_count, update_fn)
