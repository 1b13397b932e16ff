"""The lesson's normalized gradient, ``∇L / ‖∇L‖`` (lesson L6).

Math: ``u = g / (‖g‖ + ε)`` with ``‖g‖ = sqrt(Σ g²)`` over every leaf together, so the update
has unit length (up to ε) and only the gradient's direction matters. Chained with a learning
rate this is normalized gradient descent, ``w ← w − η ∇L / ‖∇L‖``: the step length is η
whatever the gradient's size, which is what the lesson describes when it introduces Adagrad,
RMSProp and Adam (those scale each coordinate instead; see :mod:`jaxtricks.tricks.adaptive`).

Optax calls the transform ``normalize_by_update_norm`` and adds a factor ``s`` (``u = s g /
(‖g‖ + ε)``); :func:`normalize_by_global_norm` is the lesson's name for it with ``s = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

from jaxtricks.tricks.base import stateless_unless_scheduled
from jaxtricks.tricks.checks import check_positive, check_range
from jaxtricks.tricks.tree import global_norm, like, wider_dtype


def normalize_by_update_norm(
    scale_factor: Any = 1.0, eps: Any = 1e-6
) -> optax.GradientTransformationExtraArgs:
    """Divides the updates by their global norm plus ε, times a factor (Optax's transform).

    Math: ``u = g / ((‖g‖ + ε) / s)`` with ``‖g‖`` over every leaf and ``s = scale_factor``.

    Args:
      scale_factor: s, a finite non-zero number (negative flips the sign: a descent step),
        or a schedule.
      eps: ε > 0, keeps a zero gradient at zero instead of dividing by zero.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is ``optax.EmptyState()``, or
      ``optax.ScaleByScheduleState(count)`` when a hyperparameter is a schedule.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = normalize_by_update_norm(scale_factor=-2.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(None))
      >>> [round(x, 4) for x in u.tolist()]
      [-1.2, -1.6]
    """
    check_range("scale_factor", scale_factor, -math.inf, math.inf, low_open=True, high_open=True)
    if not (callable(scale_factor) or isinstance(scale_factor, jax.core.Tracer)) and (
        scale_factor == 0
    ):
        raise ValueError(f"scale_factor must be non-zero, got {scale_factor!r}")
    check_positive("eps", eps)

    def normalize(updates, params, scale_factor, eps):
        del params
        norm = global_norm(updates, at_least_float32=True)
        denominator = (norm + like(eps, norm)) / like(scale_factor, norm)
        # Divided in the norm's dtype (float32 at least) and rounded once: cast to float16,
        # the default ε is subnormal, XLA flushes it to zero and a zero gradient gives 0 / 0.
        return jax.tree.map(lambda g: _divided(g, denominator), updates)

    return stateless_unless_scheduled(normalize, {"scale_factor": scale_factor, "eps": eps})


def _divided(g: jax.Array, denominator: jax.Array) -> jax.Array:
    """``g / denominator`` in at least the denominator's precision, in ``g``'s dtype."""
    wide = wider_dtype(g.dtype, denominator.dtype)
    return (g.astype(wide) / denominator.astype(wide)).astype(g.dtype)


def normalize_by_global_norm(eps: Any = 1e-6) -> optax.GradientTransformationExtraArgs:
    """The lesson's ``∇L / ‖∇L‖``: :func:`normalize_by_update_norm` with ``scale_factor=1``.

    Math: ``u = g / (‖g‖ + ε)``.

    Args:
      eps: ε > 0, keeps a zero gradient at zero instead of dividing by zero.

    Returns:
      :func:`normalize_by_update_norm`'s transform.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = normalize_by_global_norm(eps=1e-12)
      >>> u, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(None))
      >>> [round(x, 4) for x in u.tolist()]
      [0.6, 0.8]
    """
    return normalize_by_update_norm(1.0, eps)
