"""Soft targets against overfitting (lesson L5): label smoothing and mixup.

Both train a classifier on targets that are distributions over the C classes instead of
one-hot vectors e_y, so the network is never pushed towards infinite logits.

**Label smoothing** (Szegedy et al., 2016) mixes each one-hot target with the uniform
distribution,

    p = (1 − α) e_y + α / C,

here through ``optax.smooth_labels`` and ``optax.losses.softmax_cross_entropy``
(:func:`smoothed_cross_entropy`, a loss for ``fit``'s ``loss_fn``).

**Mixup** (Zhang et al., 2018) trains on convex combinations of pairs of examples and of their
targets: with λ ~ Beta(α, α) drawn once per batch and π a random permutation of the batch,

    x̃_i = λ x_i + (1 − λ) x_π(i),      p̃_i = λ e_{y_i} + (1 − λ) e_{y_π(i)}.

:func:`mixup` is a batch transform ``(key, (x, y)) -> (x̃, p̃)`` for ``fit``'s
``batch_transform``; the default loss and accuracy of :mod:`jaxtricks.training.steps` take its
soft targets (the accuracy against their argmax).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> x, y = jnp.eye(4), jnp.arange(4)
    >>> mixed_x, targets = mixup(0.4, num_classes=4)(jax.random.key(0), (x, y))
    >>> targets.shape, bool(jnp.allclose(targets.sum(axis=1), 1.0))
    ((4, 4), True)
    >>> loss = smoothed_cross_entropy(0.1)(jnp.zeros((1, 4)), jnp.array([2]))
    >>> loss.round(4)
    Array([1.3863], dtype=float32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks.tricks.checks import check_int, check_range

__all__ = ["mixup", "smoothed_cross_entropy"]


def _check_number(name: str, value: Any) -> None:
    """Raises ``ValueError`` unless ``value`` is a Python or NumPy real number (a constant:
    these hyperparameters are fixed for the run, and the functions are cached by them)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")


def _one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    """Integer labels ``(B,)`` as float32 one-hot targets ``(B, C)``; float targets as they are
    (as float32)."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)


def smoothed_cross_entropy(alpha: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Softmax cross-entropy against targets smoothed by ``alpha``, one loss per example.

    ``ℓ_i = −Σ_c p_ic log softmax(z_i)_c`` with ``p_i = (1 − α) t_i + α / C``, where ``t_i`` is
    the one-hot vector of an integer label or a soft target as given (mixup's). Logits are
    upcast to float32 first.

    Args:
        alpha: the smoothing α in [0, 1]; 0 is the plain cross-entropy.

    Returns:
        ``loss_fn(logits, labels) -> (B,)`` float32 losses, for logits ``(B, C)`` and integer
        labels ``(B,)`` or soft targets ``(B, C)``. Equal ``alpha`` gives the same function,
        so compiled training steps built with it are reused.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss_fn = smoothed_cross_entropy(0.1)
        >>> confident = jnp.array([[20.0, 0.0, 0.0]])
        >>> bool(loss_fn(confident, jnp.array([0]))[0] > smoothed_cross_entropy(0.0)(
        ...     confident, jnp.array([0]))[0])
        True

    References:
        Szegedy et al., 2016, Rethinking the Inception Architecture for Computer Vision.
    """
    _check_number("alpha", alpha)
    check_range("alpha", alpha, 0.0, 1.0)
    return _smoothed_cross_entropy(float(alpha))


@functools.cache
def _smoothed_cross_entropy(alpha: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
        targets = optax.smooth_labels(_one_hot(labels, logits.shape[-1]), alpha)
        return optax.losses.softmax_cross_entropy(logits.astype(jnp.float32), targets)

    loss_fn.__name__ = f"smoothed_cross_entropy(alpha={alpha:g})"
    return loss_fn


def mixup(alpha: float, num_classes: int) -> Callable[[jax.Array, tuple[Any, Any]],
                                                       tuple[Any, jax.Array]]:
    """The mixup batch transform: convex combinations of pairs of examples and their targets.

    With λ ~ Beta(α, α) (one draw per batch) and π a random permutation of the B examples,
    ``x̃ = λ x + (1 − λ) x[π]`` for every leaf of x (all floating) and
    ``p̃ = λ t + (1 − λ) t[π]`` for the targets t (one-hot vectors of integer labels, or soft
    targets as given), each row of p̃ summing to 1.

    Args:
        alpha: α > 0 of the Beta distribution; small α keeps λ near 0 or 1 (little mixing),
            α = 1 draws λ uniformly. Zhang et al. use 0.1–0.4 on ImageNet, 1 on CIFAR-10.
        num_classes: C, the length of the targets made from integer labels.

    Returns:
        ``transform(key, (x, y)) -> (x̃, p̃)`` with p̃ float32 of shape ``(B, C)``; pass it as
        ``fit(..., batch_transform=mixup(...))``. Equal arguments give the same function.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x, y = jnp.array([[0.0], [1.0]]), jnp.array([0, 1])
        >>> mixed_x, targets = mixup(1.0, num_classes=2)(jax.random.key(3), (x, y))
        >>> bool(jnp.allclose(mixed_x[:, 0], targets[:, 1]))  # x is the class here
        True

    References:
        Zhang, Cisse, Dauphin and Lopez-Paz, 2018, mixup: Beyond Empirical Risk Minimization.
    """
    _check_number("alpha", alpha)
    check_range("alpha", alpha, 0.0, None, low_open=True)
    check_int("num_classes", num_classes, 1)
    return _mixup(float(alpha), int(num_classes))


@functools.cache
def _mixup(alpha: float, num_classes: int):
    def transform(key: jax.Array, batch: tuple[Any, Any]) -> tuple[Any, jax.Array]:
        x, y = batch
        size = jax.tree.leaves(x)[0].shape[0]
        weight_key, order_key = jax.random.split(key)
        weight = jax.random.beta(weight_key, alpha, alpha)
        order = jax.random.permutation(order_key, size)

        def mix(leaf: jax.Array) -> jax.Array:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"mixup mixes floating inputs and targets, got an array of dtype {leaf.dtype}"
                )
            w = weight.astype(leaf.dtype)
            return w * leaf + (1 - w) * leaf[order]

        return jax.tree.map(mix, x), mix(_one_hot(y, num_classes))

    transform.__name__ = f"mixup(alpha={alpha:g}, num_classes={num_classes})"
    return transform
