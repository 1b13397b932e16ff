"""The lesson's optimizers, each a chain of the primitive transforms (lesson L6).

    sgd            w ← w − η g                                   scale_by_learning_rate
    momentum       v ← γ v + g,  w ← w − η v                      scale_by_momentum → lr
      form="lesson"  v ← γ v − η g,  w ← w + v                    scale_by_velocity
    nesterov       v ← γ v + g,  w ← w − η (g + γ v)              scale_by_momentum(nesterov) → lr
    adagrad        w ← w − η g / sqrt(Σ g² + ε)                   scale_by_adagrad → lr
    rmsprop        w ← w − η g / sqrt(n + ε)                      scale_by_rms [→ momentum] → lr
    adam           w ← w − η m̂ / (sqrt(n̂) + ε)                    scale_by_adam → lr
    adamw          w ← w − η (m̂ / (sqrt(n̂) + ε) + λ w)            scale_by_adam → decay → lr
    normalized_sgd w ← w − η g / (‖g‖ + ε)                        normalize_by_global_norm → lr

Each equals its Optax counterpart (``optax.sgd``, ``optax.sgd(momentum=…)``,
``optax.sgd(nesterov=True)``, ``optax.adagrad``, ``optax.rmsprop``, ``optax.adam``,
``optax.adamw``, ``optax.normalize_by_update_norm`` + ``optax.sgd``) with the same settings,
except ``momentum(form="lesson")``, which differs from heavy-ball once η changes. Every
learning rate may be a float or a schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from jaxtricks.tricks._checks import check_choice, check_range
from jaxtricks.tricks.adaptive import scale_by_adagrad, scale_by_adam, scale_by_rms
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.normalized_gradient import normalize_by_global_norm
from jaxtricks.tricks.velocity import scale_by_momentum, scale_by_velocity
from jaxtricks.tricks.weight_decay import add_decayed_weights


def sgd(learning_rate: Any) -> optax.GradientTransformation:
    """Stochastic gradient descent: ``w ← w − η g``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = sgd(0.1)
      >>> w = jnp.array([1.0])
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(w))
      >>> round(float(optax.apply_updates(w, u)[0]), 6)
      0.8
    """
    return scale_by_learning_rate(learning_rate)


def momentum(
    learning_rate: Any,
    momentum: Any = 0.9,
    *,
    form: str = "heavy_ball",
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """SGD with momentum, in heavy-ball form or the lesson's own form.

    Math: ``form="heavy_ball"``: ``v ← γ v + g;  w ← w − η v`` (Optax's and PyTorch's).
    ``form="lesson"``: ``v ← γ v − η g;  w ← w + v``. Equal for constant η; with a schedule
    the lesson's form keeps each past gradient at the learning rate of its own step.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      momentum: γ in [0, 1].
      form: ``"heavy_ball"`` or ``"lesson"``.
      accumulator_dtype: dtype of the velocity; ``None`` uses the parameters' dtype.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = momentum(0.1, 0.9, form="lesson")
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 6)
      -0.1
    """
    check_choice("form", form, ("heavy_ball", "lesson"))
    # Checked here so that the error names this argument, not scale_by_momentum's ``decay``.
    check_range("momentum", momentum, 0.0, 1.0)
    if form == "lesson":
        return scale_by_velocity(learning_rate, momentum, accumulator_dtype=accumulator_dtype)
    return optax.chain(
        scale_by_momentum(momentum, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


def nesterov(
    learning_rate: Any, momentum: Any = 0.9, *, accumulator_dtype: Any | None = None
) -> optax.GradientTransformation:
    """SGD with Nesterov momentum: ``v ← γ v + g;  w ← w − η (g + γ v)``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      momentum: γ in [0, 1].
      accumulator_dtype: dtype of the velocity.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = nesterov(0.1, 0.5)
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 6)
      -0.15
    """
    check_range("momentum", momentum, 0.0, 1.0)
    return optax.chain(
        scale_by_momentum(momentum, nesterov=True, accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adagrad(
    learning_rate: Any, initial_accumulator_value: Any = 0.1, eps: Any = 1e-7
) -> optax.GradientTransformation:
    """Adagrad (Duchi et al. 2011): ``s ← s + g²;  w ← w − η g / sqrt(s + ε)``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      initial_accumulator_value: s_0 ≥ 0.
      eps: ε > 0 (inside the root, as in Optax).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = adagrad(1.0, initial_accumulator_value=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([4.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -1.0
    """
    return optax.chain(
        scale_by_adagrad(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate)
    )


def rmsprop(
    learning_rate: Any,
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    *,
    centered: bool = False,
    eps_in_sqrt: bool = True,
    momentum: Any | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """RMSProp: ``n ← ρ n + (1 − ρ) g²;  w ← w − η g / sqrt(n + ε)``, optionally centered.

    With ``momentum`` the scaled gradient is accumulated by heavy-ball (or Nesterov)
    momentum before the learning rate, as in Optax and PyTorch.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      decay: ρ in [0, 1).
      eps: ε > 0.
      initial_scale: n_0 ≥ 0.
      centered: divide by the running standard deviation.
      eps_in_sqrt: ε inside the root (Optax) or outside (PyTorch).
      momentum: γ in [0, 1], or ``None`` for no momentum.
      nesterov: Nesterov form of the momentum.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = rmsprop(0.01)
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    stages = [
        scale_by_rms(decay, eps, initial_scale, centered=centered, eps_in_sqrt=eps_in_sqrt)
    ]
    if momentum is not None:
        check_range("momentum", momentum, 0.0, 1.0)
        stages.append(scale_by_momentum(momentum, nesterov=nesterov))
    return optax.chain(*stages, scale_by_learning_rate(learning_rate))


def adam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    *,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015): ``w ← w − η m̂ / (sqrt(n̂ + ε_root) + ε)``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0.
      eps_root: ε_root ≥ 0.
      mu_dtype: dtype of the first moment.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = adam(0.1)
      >>> u, _ = tx.update(jnp.array([5.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.1
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    weight_decay: Any = 1e-4,
    *,
    mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """AdamW: Adam with decoupled weight decay, ``w ← w − η (m̂/(sqrt(n̂)+ε) + λ w)``.

    Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101.

    Args:
      learning_rate: η ≥ 0, a float or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0.
      eps_root: ε_root ≥ 0.
      weight_decay: λ ≥ 0.
      mask: which parameters to decay (see :func:`add_decayed_weights`).
      mu_dtype: dtype of the first moment.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = adamw(0.1, weight_decay=0.0)
      >>> w = jnp.ones(1)
      >>> u, _ = tx.update(jnp.array([5.0]), tx.init(w), w)
      >>> round(float(u[0]), 4)
      -0.1
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def normalized_sgd(learning_rate: Any, eps: Any = 1e-6) -> optax.GradientTransformation:
    """Normalized gradient descent, the lesson's ``w ← w − η ∇L / ‖∇L‖``.

    Args:
      learning_rate: η ≥ 0, a float or a schedule (the length of every step).
      eps: ε > 0 added to the norm.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = normalized_sgd(0.5, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([30.0, 40.0]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [-0.3, -0.4]
    """
    return optax.chain(normalize_by_global_norm(eps), scale_by_learning_rate(learning_rate))


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "normalized_sgd": normalized_sgd,
}


def get(name: str, learning_rate: Any, **kwargs: Any) -> optax.GradientTransformation:
    """The optimizer called ``name`` (see :data:`OPTIMIZERS`), built with ``kwargs``.

    Example:
      >>> tx = get("adam", 1e-3, b1=0.7)
    """
    check_choice("name", name, OPTIMIZERS)
    return OPTIMIZERS[name](learning_rate, **kwargs)
