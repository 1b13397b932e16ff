"""The lesson's optimizers, each a chain of the primitive transforms (lesson L6).

    sgd            w ← w − η g                                   scale_by_learning_rate
      momentum=γ     v ← γ v + g,  w ← w − η v                    trace → lr
      nesterov       v ← γ v + g,  w ← w − η (g + γ v)            trace(nesterov) → lr
    momentum       sgd(momentum=γ), or form="lesson":
                     v ← γ v − η g,  w ← w + v                    scale_by_velocity
    nesterov       sgd(momentum=γ, nesterov=True)
    adagrad        w ← w − η g / sqrt(Σ |g|² + ε)                 scale_by_rss → lr
    rmsprop        w ← w − η g / sqrt(n + ε)                      scale_by_rms → lr [→ trace]
    adam           w ← w − η m̂ / (sqrt(n̂) + ε)                    scale_by_adam → lr
    adamw          w ← w − η (m̂ / (sqrt(n̂) + ε) + λ w)            scale_by_adam → decay → lr
    normalized_sgd w ← w − η g / (‖g‖ + ε)                        normalize_by_update_norm → lr

``sgd``, ``adagrad``, ``rmsprop``, ``adam`` and ``adamw`` are Optax's optimizers of the same
names: the same positional order, keywords, defaults, chain of stages and state, so a state
saved from one restores into the other. ``momentum``, ``nesterov`` and ``normalized_sgd`` are
the lesson's names: ``momentum`` and ``nesterov`` are ``sgd`` with momentum (the default
heavy-ball form), except ``momentum(form="lesson")``, which differs from heavy-ball once η
changes. Every learning rate may be a float, a scalar array of any float dtype or a schedule.

The annotations are evaluated (no ``from __future__ import annotations``): tools that read
``learning_rate``'s annotation, as Optax's own tests do, find ``optax.ScalarOrSchedule``.
"""

from collections.abc import Callable
from typing import Any

import optax

from jaxtricks.tricks.adaptive import scale_by_adam, scale_by_rms, scale_by_rss, scale_by_stddev
from jaxtricks.tricks.checks import check_choice, check_range
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.normalized_gradient import normalize_by_update_norm
from jaxtricks.tricks.velocity import scale_by_velocity, trace
from jaxtricks.tricks.weight_decay import add_decayed_weights


def _identity() -> optax.GradientTransformationExtraArgs:
    """The stage Optax puts where an option is off (``optax.identity``'s empty state)."""
    return optax.with_extra_args_support(optax.identity())


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Stochastic gradient descent, with optional heavy-ball or Nesterov momentum.

    Math: ``w ← w − η g``; with momentum γ, ``v ← γ v + g`` and ``w ← w − η v``
    (or ``w ← w − η (g + γ v)`` with ``nesterov``). Sutskever et al. 2013,
    http://proceedings.mlr.press/v28/sutskever13.pdf.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      momentum: γ in [0, 1], or ``None`` for no momentum.
      nesterov: Nesterov's form of the momentum.
      accumulator_dtype: dtype of the velocity; ``None`` uses the parameters' dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain ``(trace or identity,
      scale_by_learning_rate)`` with Optax's state.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> tx = sgd(0.1, momentum=0.9, nesterov=True)
      >>> w = jnp.array([1.0])
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(w))
      >>> round(float(optax.apply_updates(w, u)[0]), 6)
      0.62
    """
    if momentum is None:
        accumulate = _identity()
    else:
        # Checked here so that the error names this argument, not trace's ``decay``.
        check_range("momentum", momentum, 0.0, 1.0)
        accumulate = trace(momentum, nesterov, accumulator_dtype)
    return optax.chain(accumulate, scale_by_learning_rate(learning_rate))


def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any = 0.9,
    *,
    form: str = "heavy_ball",
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum, in heavy-ball form or the lesson's own form.

    Math: ``form="heavy_ball"``: ``v ← γ v + g;  w ← w − η v`` (Optax's and PyTorch's;
    :func:`sgd` with ``momentum=γ``). ``form="lesson"``: ``v ← γ v − η g;  w ← w + v``.
    Equal for constant η; with a schedule the lesson's form keeps each past gradient at the
    learning rate of its own step.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      momentum: γ in [0, 1].
      form: ``"heavy_ball"`` or ``"lesson"``.
      accumulator_dtype: dtype of the velocity; ``None`` uses the parameters' dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = momentum(0.1, 0.9, form="lesson")
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 6)
      -0.1
    """
    check_choice("form", form, ("heavy_ball", "lesson"))
    check_range("momentum", momentum, 0.0, 1.0)
    if form == "lesson":
        return scale_by_velocity(learning_rate, momentum, accumulator_dtype=accumulator_dtype)
    return sgd(learning_rate, momentum, accumulator_dtype=accumulator_dtype)


def nesterov(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any = 0.9,
    *,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with Nesterov momentum: ``v ← γ v + g;  w ← w − η (g + γ v)``.

    :func:`sgd` with ``momentum=γ, nesterov=True``.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      momentum: γ in [0, 1].
      accumulator_dtype: dtype of the velocity.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = nesterov(0.1, 0.5)
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 6)
      -0.15
    """
    check_range("momentum", momentum, 0.0, 1.0)
    return sgd(learning_rate, momentum, nesterov=True, accumulator_dtype=accumulator_dtype)


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: Any = 0.1,
    eps: Any = 1e-7,
) -> optax.GradientTransformationExtraArgs:
    """Adagrad (Duchi et al. 2011): ``s ← s + |g|²;  w ← w − η g / sqrt(s + ε)``.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      initial_accumulator_value: s_0 ≥ 0.
      eps: ε > 0 (inside the root, as in Optax).

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain ``(scale_by_rss,
      scale_by_learning_rate)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = adagrad(1.0, initial_accumulator_value=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([4.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -1.0
    """
    return optax.chain(
        scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate)
    )


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Any | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp: ``n ← ρ n + (1 − ρ) |g|²;  w ← w − η g / sqrt(n + ε)``, optionally centered.

    With ``momentum`` the step ``η g / sqrt(n + ε)`` is accumulated by heavy-ball (or
    Nesterov) momentum after the learning rate, as in Optax.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      decay: ρ in [0, 1).
      eps: ε > 0.
      initial_scale: n_0 ≥ 0.
      eps_in_sqrt: ε inside the root (Optax) or outside (PyTorch).
      centered: divide by the running standard deviation (:func:`scale_by_stddev`).
      momentum: γ in [0, 1], or ``None`` for no momentum.
      nesterov: Nesterov form of the momentum.
      bias_correction: divide the moments by ``1 − ρᵗ``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain ``(scale_by_rms or
      scale_by_stddev, scale_by_learning_rate, trace or identity)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = rmsprop(0.01, momentum=0.9)
      >>> state = tx.init({"w": jnp.zeros(3)})
    """
    scale = scale_by_stddev if centered else scale_by_rms
    if momentum is None:
        accumulate = _identity()
    else:
        check_range("momentum", momentum, 0.0, 1.0)
        accumulate = trace(momentum, nesterov)
    return optax.chain(
        scale(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
        scale_by_learning_rate(learning_rate),
        accumulate,
    )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adam (Kingma & Ba 2015): ``w ← w − η m̂ / (sqrt(n̂ + ε_root) + ε)``.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0.
      eps_root: ε_root ≥ 0.
      mu_dtype: dtype of the first moment.
      nesterov: NAdam's look-ahead first moment (see :func:`scale_by_adam`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain ``(scale_by_adam,
      scale_by_learning_rate)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = adam(0.1)
      >>> u, _ = tx.update(jnp.array([5.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)
      -0.1
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay, ``w ← w − η (m̂/(sqrt(n̂)+ε) + λ w)``.

    Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0.
      eps_root: ε_root ≥ 0.
      mu_dtype: dtype of the first moment.
      weight_decay: λ ≥ 0, a float or a schedule.
      mask: which parameters to decay (see :func:`add_decayed_weights`).
      nesterov: NAdam's look-ahead first moment.

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain ``(scale_by_adam,
      add_decayed_weights, scale_by_learning_rate)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = adamw(0.1, weight_decay=0.0)
      >>> w = jnp.ones(1)
      >>> u, _ = tx.update(jnp.array([5.0]), tx.init(w), w)
      >>> round(float(u[0]), 4)
      -0.1
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def normalized_sgd(
    learning_rate: optax.ScalarOrSchedule, eps: Any = 1e-6
) -> optax.GradientTransformationExtraArgs:
    """Normalized gradient descent, the lesson's ``w ← w − η ∇L / ‖∇L‖``.

    Args:
      learning_rate: η ≥ 0, a float, a scalar array or a schedule (the length of every step).
      eps: ε > 0 added to the norm.

    Returns:
      An ``optax.GradientTransformationExtraArgs``, the chain
      ``(normalize_by_update_norm, scale_by_learning_rate)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = normalized_sgd(0.5, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([30.0, 40.0]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [-0.3, -0.4]
    """
    return optax.chain(normalize_by_update_norm(1.0, eps), scale_by_learning_rate(learning_rate))


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

    Examples:
      >>> tx = get("adam", 1e-3, b1=0.7)
    """
    check_choice("name", name, OPTIMIZERS)
    return OPTIMIZERS[name](learning_rate, **kwargs)
