"""Per-coordinate adaptive scaling: Adagrad, RMSProp and Adam (lesson L6).

The lesson motivates these optimizers by dividing the gradient by its size. Real Adagrad,
RMSProp and Adam divide *each coordinate* by a running root-mean-square of its own past
gradients (the whole-vector version, ``∇L/‖∇L‖``, is :func:`normalize_by_global_norm`):

    Adagrad (Duchi et al. 2011):  s_t = s_{t-1} + g_t²
                                  u_t = g_t / sqrt(s_t + ε)
    RMSProp (Hinton 2012):        n_t = ρ n_{t-1} + (1 − ρ) g_t²
                                  u_t = g_t / sqrt(n_t + ε)
      centered:                   m_t = ρ m_{t-1} + (1 − ρ) g_t
                                  u_t = g_t / sqrt(n_t − m_t² + ε)
    Adam (Kingma & Ba 2015):      m_t = β₁ m_{t-1} + (1 − β₁) g_t
                                  n_t = β₂ n_{t-1} + (1 − β₂) g_t²
                                  m̂_t = m_t / (1 − β₁ᵗ),  n̂_t = n_t / (1 − β₂ᵗ)
                                  u_t = m̂_t / (sqrt(n̂_t + ε_root) + ε)

ε placement follows Optax (inside the square root for Adagrad and RMSProp by default,
outside for Adam); ``eps_in_sqrt=False`` gives PyTorch's ``g / (sqrt(n) + ε)`` for RMSProp.
The learning rate is applied afterwards by :func:`scale_by_learning_rate`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks._checks import check_nonnegative, check_positive, check_range, resolve
from jaxtricks.tricks.base import zeros_like_tree
from jaxtricks.tricks.tree import check_float_leaves, check_same_structure, like


class AdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`."""

    count: jax.Array  # shape=(), int32
    sum_of_squares: optax.Updates  # like params


class RmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    count: jax.Array  # shape=(), int32
    mu: optax.Updates | None  # like params, running mean of g; None unless centered
    nu: optax.Updates  # like params; running mean of g²


class AdamState(NamedTuple):
    """State of :func:`scale_by_adam`."""

    count: jax.Array  # shape=(), int32
    mu: optax.Updates  # like params, dtype mu_dtype or the params' dtype
    nu: optax.Updates  # like params


def _moment(g: jax.Array, t: jax.Array, decay: Any, power: int) -> jax.Array:
    """``(1 − decay) g^power + decay t``, computed in the moment's dtype."""
    g = g.astype(t.dtype)
    return like(1 - decay, t) * (g if power == 1 else g * g) + like(decay, t) * t


def _debias(moment: jax.Array, decay: Any, count: jax.Array) -> jax.Array:
    """``moment / (1 − decay^count)``.

    The power is taken in the default float dtype (float32, or float64 under x64) whatever
    the moment's dtype, since ``decay^count`` rounds to 1 in bfloat16 and would divide by 0.
    """
    base = jnp.asarray(decay, dtype=jnp.result_type(float))
    correction = 1 - jax.lax.pow(base, count)
    return moment / correction.astype(moment.dtype)


def _wider(dtype: Any, other: Any) -> Any:
    """The dtype both values promote to, whatever ``jax_numpy_dtype_promotion`` is set to.

    Widening bfloat16 to float32 is the intent here, so strict promotion must not refuse it.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(dtype, other)


def scale_by_adagrad(
    initial_accumulator_value: Any = 0.1, eps: Any = 1e-7
) -> optax.GradientTransformation:
    """Adagrad's per-coordinate scaling by the root of the summed squared gradients.

    Math: ``s_t = s_{t-1} + g_t²``; ``u_t = g_t / sqrt(s_t + ε)`` (0 where ``s_t = 0``).

    Args:
      initial_accumulator_value: s_0 ≥ 0.
      eps: ε > 0 inside the square root (Optax's placement; PyTorch adds it outside).

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`AdagradState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_adagrad(initial_accumulator_value=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [1.0, -1.0]
    """
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_positive("eps", eps)

    def init_fn(params):
        check_float_leaves("params", params)
        return AdagradState(
            count=jnp.zeros((), jnp.int32),
            sum_of_squares=jax.tree.map(
                lambda p: jnp.full_like(p, initial_accumulator_value), params
            ),
        )

    def update_fn(updates, state, params=None):
        del params
        check_same_structure("updates", updates, "the Adagrad accumulator", state.sum_of_squares)
        check_float_leaves("updates", updates)
        epsilon = resolve(eps, state.count)
        sums = jax.tree.map(
            lambda g, s: g.astype(s.dtype) * g.astype(s.dtype) + s, updates, state.sum_of_squares
        )
        out = jax.tree.map(
            lambda g, s: (
                jnp.where(s > 0, jax.lax.rsqrt(s + like(epsilon, s)), 0) * g.astype(s.dtype)
            ).astype(g.dtype),
            updates,
            sums,
        )
        return out, AdagradState(count=optax.safe_increment(state.count), sum_of_squares=sums)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_rms(
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    *,
    centered: bool = False,
    eps_in_sqrt: bool = True,
) -> optax.GradientTransformation:
    """RMSProp's scaling by a running root-mean-square of the gradients.

    Math: ``n_t = ρ n_{t-1} + (1 − ρ) g_t²``; ``u_t = g_t / sqrt(n_t + ε)``. Centered:
    also ``m_t = ρ m_{t-1} + (1 − ρ) g_t`` and ``u_t = g_t / sqrt(n_t − m_t² + ε)``, i.e.
    divide by a running standard deviation. With ``eps_in_sqrt=False`` the denominator is
    ``sqrt(·) + ε`` (PyTorch's placement).

    Args:
      decay: ρ in [0, 1).
      eps: ε > 0.
      initial_scale: n_0 ≥ 0 (Optax uses 0, TensorFlow 1).
      centered: divide by the running standard deviation instead of the RMS.
      eps_in_sqrt: put ε inside the square root.

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`RmsState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_rms(decay=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [1.0, -1.0]
    """
    check_range("decay", decay, 0.0, 1.0, high_open=True)
    check_positive("eps", eps)
    check_nonnegative("initial_scale", initial_scale)

    def init_fn(params):
        check_float_leaves("params", params)
        return RmsState(
            count=jnp.zeros((), jnp.int32),
            mu=zeros_like_tree(params) if centered else None,
            nu=jax.tree.map(lambda p: jnp.full_like(p, initial_scale), params),
        )

    def update_fn(updates, state, params=None):
        del params
        check_same_structure("updates", updates, "the RMSProp accumulator", state.nu)
        check_float_leaves("updates", updates)
        rho = resolve(decay, state.count)
        epsilon = resolve(eps, state.count)
        nu = jax.tree.map(lambda g, n: _moment(g, n, rho, 2), updates, state.nu)
        if centered:
            mu = jax.tree.map(lambda g, m: _moment(g, m, rho, 1), updates, state.mu)
            spread = jax.tree.map(lambda m, n: n - m * m, mu, nu)
        else:
            mu, spread = state.mu, nu

        def scale(g, s):
            e = like(epsilon, s)
            factor = jax.lax.rsqrt(s + e) if eps_in_sqrt else 1 / (jnp.sqrt(s) + e)
            return (factor * g.astype(s.dtype)).astype(g.dtype)

        out = jax.tree.map(scale, updates, spread)
        return out, RmsState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    *,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
    """Adam's bias-corrected ratio of the first moment to the root of the second.

    Math: ``m_t = β₁ m + (1 − β₁) g``, ``n_t = β₂ n + (1 − β₂) g²``,
    ``u_t = m̂_t / (sqrt(n̂_t + ε_root) + ε)`` with ``m̂_t = m_t / (1 − β₁ᵗ)`` and
    ``n̂_t = n_t / (1 − β₂ᵗ)`` (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980).

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0 outside the square root.
      eps_root: ε_root ≥ 0 inside it (keeps meta-gradients finite).
      mu_dtype: dtype of the first moment (e.g. bfloat16 to save memory); ``None`` uses
        the parameters' dtype. Updates always come back in the gradient's dtype.

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`AdamState`.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_adam()
      >>> u, _ = tx.update(jnp.array([0.3, -2.0]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]  # the first step is the sign of g
      [1.0, -1.0]
    """
    check_range("b1", b1, 0.0, 1.0, high_open=True)
    check_range("b2", b2, 0.0, 1.0, high_open=True)
    check_positive("eps", eps)
    check_nonnegative("eps_root", eps_root)

    def init_fn(params):
        check_float_leaves("params", params)
        return AdamState(
            count=jnp.zeros((), jnp.int32),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params),
        )

    def update_fn(updates, state, params=None):
        del params
        check_same_structure("updates", updates, "the Adam moments", state.nu)
        check_float_leaves("updates", updates)
        beta1 = resolve(b1, state.count)
        beta2 = resolve(b2, state.count)
        epsilon = resolve(eps, state.count)
        epsilon_root = resolve(eps_root, state.count)
        count = optax.safe_increment(state.count)
        # The first moment is updated in the wider of its dtype and the gradient's, so a
        # bfloat16 mu still sees float32 arithmetic, then stored back in mu_dtype.
        mu = jax.tree.map(
            lambda g, m: _moment(g, m.astype(_wider(m.dtype, g.dtype)), beta1, 1),
            updates,
            state.mu,
        )
        nu = jax.tree.map(lambda g, n: _moment(g, n, beta2, 2), updates, state.nu)

        def direction(g, m, n):
            m_hat = _debias(m, beta1, count).astype(n.dtype)
            n_hat = _debias(n, beta2, count)
            step = m_hat / (jnp.sqrt(n_hat + like(epsilon_root, n)) + like(epsilon, n))
            return step.astype(g.dtype)

        out = jax.tree.map(direction, updates, mu, nu)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        return out, AdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
