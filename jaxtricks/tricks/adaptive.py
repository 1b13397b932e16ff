"""Per-coordinate adaptive scaling: Adagrad, RMSProp and Adam (lesson L6).

The lesson motivates these optimizers by dividing the gradient by its size. Real Adagrad,
RMSProp and Adam divide *each coordinate* by a running root-mean-square of its own past
gradients (the whole-vector version, ``∇L/‖∇L‖``, is :func:`normalize_by_update_norm`):

    Adagrad (Duchi et al. 2011):  s_t = s_{t-1} + |g_t|²
                                  u_t = g_t / sqrt(s_t + ε)
    RMSProp (Hinton 2012):        n_t = ρ n_{t-1} + (1 − ρ) |g_t|²
                                  u_t = g_t / sqrt(n_t + ε)
      centered:                   m_t = ρ m_{t-1} + (1 − ρ) g_t
                                  u_t = g_t / sqrt(n_t − |m_t|² + ε)
    Adam (Kingma & Ba 2015):      m_t = β₁ m_{t-1} + (1 − β₁) g_t
                                  n_t = β₂ n_{t-1} + (1 − β₂) |g_t|²
                                  m̂_t = m_t / (1 − β₁ᵗ),  n̂_t = n_t / (1 − β₂ᵗ)
                                  u_t = m̂_t / (sqrt(n̂_t + ε_root) + ε)

Each function has the name, signature, defaults and state of its Optax counterpart
(``optax.scale_by_rss``, ``scale_by_rms``, ``scale_by_stddev``, ``scale_by_adam``); the
arithmetic is this module's own. Complex parameters work as in Optax: ``|g|²`` is
``g·conj(g)`` and the second moments keep the parameters' (complex) dtype. ε sits inside the
square root for Adagrad and RMSProp by default and outside for Adam; ``eps_in_sqrt=False``
gives PyTorch's ``g / (sqrt(n) + ε)`` for RMSProp. The learning rate is applied afterwards by
:func:`scale_by_learning_rate`.

Every hyperparameter may also be a schedule ``count -> value`` (an extra of ours). Adam's state
always has a step count; for the others a schedule adds one, and the state becomes the
``…WithCountState`` below.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.base import canonical_dtype, zero_count, zeros_like_tree
from jaxtricks.tricks.checks import (
    check_nonnegative,
    check_positive,
    check_range,
    is_schedule,
    resolve,
)
from jaxtricks.tricks.tree import (
    abs_sq,
    check_inexact_leaves,
    check_same_structure,
    like,
    wider_dtype,
)


class ScaleByRssWithCountState(NamedTuple):
    """State of :func:`scale_by_rss` when ``eps`` is a schedule (``optax.ScaleByRssState``
    plus the step count the schedule reads)."""

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    sum_of_squares: optax.Updates  # like params


class ScaleByRmsWithCountState(NamedTuple):
    """State of :func:`scale_by_rms` with ``bias_correction`` or a schedule.

    The name and fields of the state Optax's ``scale_by_rms(bias_correction=True)`` keeps.
    """

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    nu: optax.Updates  # like params; running mean of |g|²


class ScaleByRStdDevWithCountState(NamedTuple):
    """State of :func:`scale_by_stddev` with ``bias_correction`` or a schedule.

    The name and fields of the state Optax's ``scale_by_stddev(bias_correction=True)`` keeps.
    """

    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32
    mu: optax.Updates  # like params; running mean of g
    nu: optax.Updates  # like params; running mean of |g|²


def _moment(g: jax.Array, t: jax.Array, decay: Any, order: int) -> jax.Array:
    """``(1 − decay) g + decay t`` (order 1) or ``(1 − decay) |g|² + decay t`` (order 2).

    Computed in the moment's dtype.
    """
    g = g.astype(t.dtype)
    value = g if order == 1 else abs_sq(g)
    return like(1 - decay, t) * value + like(decay, t) * t


def _debias(moment: jax.Array, decay: Any, count: jax.Array) -> jax.Array:
    """``moment / (1 − decay^count)``.

    The power is taken in the default float dtype (float32, or float64 under x64) whatever
    the moment's dtype, since ``decay^count`` rounds to 1 in bfloat16 and would divide by 0.
    """
    base = jnp.asarray(decay, dtype=jnp.result_type(float))
    correction = 1 - jax.lax.pow(base, count)
    return moment / correction.astype(moment.dtype)


def _real_part(x: jax.Array) -> jax.Array:
    """``x`` for real arrays, ``Re(x)`` for complex ones (whose imaginary part is zero here)."""
    return x.real if jnp.iscomplexobj(x) else x


def _rescale(g: jax.Array, n: jax.Array, eps: Any, eps_in_sqrt: bool) -> jax.Array:
    """``g / sqrt(n + ε)`` or ``g / (sqrt(n) + ε)``, computed in ``n``'s dtype, in ``g``'s."""
    e = like(eps, n)
    factor = jax.lax.rsqrt(n + e) if eps_in_sqrt else 1 / (jnp.sqrt(n) + e)
    return (factor * g.astype(n.dtype)).astype(g.dtype)


def scale_by_rss(
    initial_accumulator_value: Any = 0.1, eps: Any = 1e-7
) -> optax.GradientTransformationExtraArgs:
    """Adagrad's scaling by the root of the summed squared gradients (``optax.scale_by_rss``).

    Math: ``s_t = s_{t-1} + |g_t|²``; ``u_t = g_t / sqrt(s_t + ε)`` (0 where ``s_t = 0``).

    Args:
      initial_accumulator_value: s_0 ≥ 0.
      eps: ε > 0 inside the square root (Optax's placement; PyTorch adds it outside).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ScaleByRssState`` (a :class:`ScaleByRssWithCountState` when ``eps`` is a
      schedule).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_rss(initial_accumulator_value=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [1.0, -1.0]
    """
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_positive("eps", eps)
    scheduled = is_schedule(eps)

    def init_fn(params):
        check_inexact_leaves("params", params)
        sums = jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params)
        if scheduled:
            return ScaleByRssWithCountState(count=zero_count(), sum_of_squares=sums)
        return optax.ScaleByRssState(sum_of_squares=sums)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure("updates", updates, "the Adagrad accumulator", state.sum_of_squares)
        check_inexact_leaves("updates", updates)
        epsilon = resolve(eps, state.count) if scheduled else eps
        sums = jax.tree.map(
            lambda g, s: abs_sq(g.astype(s.dtype)) + s, updates, state.sum_of_squares
        )

        def scale(g, s):
            inverse_root = jnp.where(_real_part(s) > 0, jax.lax.rsqrt(s + like(epsilon, s)), 0)
            return (inverse_root * g.astype(s.dtype)).astype(g.dtype)

        out = jax.tree.map(scale, updates, sums)
        if scheduled:
            count = optax.safe_increment(state.count)
            return out, ScaleByRssWithCountState(count=count, sum_of_squares=sums)
        return out, optax.ScaleByRssState(sum_of_squares=sums)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_stddev(
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Centered RMSProp's scaling by a running standard deviation (``optax.scale_by_stddev``).

    Math: ``m_t = ρ m_{t-1} + (1 − ρ) g_t``, ``n_t = ρ n_{t-1} + (1 − ρ) |g_t|²``,
    ``u_t = g_t / sqrt(n̂_t − |m̂_t|² + ε)``, where the hats are the moments themselves or,
    with ``bias_correction``, the moments divided by ``1 − ρᵗ``. With ``eps_in_sqrt=False``
    the denominator is ``sqrt(·) + ε``.

    Args:
      decay: ρ in [0, 1).
      eps: ε > 0.
      initial_scale: n_0 ≥ 0 (Optax uses 0, TensorFlow 1).
      eps_in_sqrt: put ε inside the square root.
      bias_correction: divide the moments by ``1 − ρᵗ``, as Adam does.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ScaleByRStdDevState`` (a :class:`ScaleByRStdDevWithCountState` with
      ``bias_correction`` or a schedule).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_stddev(decay=0.5, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)  # 2 / sqrt(0.5·4 − (0.5·2)²)
      2.0
    """
    return _rms(decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=True)


def scale_by_rms(
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp's scaling by a running root-mean-square of the gradients (``optax.scale_by_rms``).

    Math: ``n_t = ρ n_{t-1} + (1 − ρ) |g_t|²``; ``u_t = g_t / sqrt(n̂_t + ε)`` with
    ``n̂_t = n_t``, or ``n_t / (1 − ρᵗ)`` with ``bias_correction``. With ``eps_in_sqrt=False``
    the denominator is ``sqrt(n̂_t) + ε`` (PyTorch's placement; with bias correction this is
    Adam with β₁ = 0).

    Args:
      decay: ρ in [0, 1).
      eps: ε > 0.
      initial_scale: n_0 ≥ 0 (Optax uses 0, TensorFlow 1).
      eps_in_sqrt: put ε inside the square root.
      bias_correction: divide the moment by ``1 − ρᵗ``.
      centered: an extra of ours: ``scale_by_stddev`` with the same arguments.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ScaleByRmsState`` (a :class:`ScaleByRmsWithCountState` with ``bias_correction``
      or a schedule; :func:`scale_by_stddev`'s when centered).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_rms(decay=0.0, eps=1e-12)
      >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
      >>> [round(x, 4) for x in u.tolist()]
      [1.0, -1.0]
    """
    return _rms(decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=centered)


def _rms(
    decay: Any,
    eps: Any,
    initial_scale: Any,
    eps_in_sqrt: bool,
    bias_correction: bool,
    *,
    centered: bool,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_rms` (``centered=False``) and :func:`scale_by_stddev` (True)."""
    check_range("decay", decay, 0.0, 1.0, high_open=True)
    check_positive("eps", eps)
    check_nonnegative("initial_scale", initial_scale)
    counted = bias_correction or is_schedule(decay) or is_schedule(eps)

    def state_of(count, mu, nu):
        if centered:
            if counted:
                return ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
            return optax.ScaleByRStdDevState(mu=mu, nu=nu)
        if counted:
            return ScaleByRmsWithCountState(count=count, nu=nu)
        return optax.ScaleByRmsState(nu=nu)

    def init_fn(params):
        check_inexact_leaves("params", params)
        nu = jax.tree.map(lambda p: jnp.full_like(p, initial_scale), params)
        return state_of(zero_count(), zeros_like_tree(params) if centered else None, nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure("updates", updates, "the RMSProp accumulator", state.nu)
        check_inexact_leaves("updates", updates)
        count = optax.safe_increment(state.count) if counted else None
        rho = resolve(decay, state.count) if counted else decay
        epsilon = resolve(eps, state.count) if counted else eps
        nu = jax.tree.map(lambda g, n: _moment(g, n, rho, 2), updates, state.nu)
        nu_hat = jax.tree.map(lambda n: _debias(n, rho, count), nu) if bias_correction else nu
        if centered:
            mu = jax.tree.map(lambda g, m: _moment(g, m, rho, 1), updates, state.mu)
            mu_hat = (
                jax.tree.map(lambda m: _debias(m, rho, count), mu) if bias_correction else mu
            )
            spread = jax.tree.map(lambda m, n: n - abs_sq(m), mu_hat, nu_hat)
        else:
            mu, spread = None, nu_hat
        out = jax.tree.map(lambda g, s: _rescale(g, s, epsilon, eps_in_sqrt), updates, spread)
        return out, state_of(count, mu, nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adam(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adam's bias-corrected ratio of the first moment to the root of the second.

    Math: ``m_t = β₁ m + (1 − β₁) g``, ``n_t = β₂ n + (1 − β₂) |g|²``,
    ``u_t = m̂_t / (sqrt(n̂_t + ε_root) + ε)`` with ``m̂_t = m_t / (1 − β₁ᵗ)`` and
    ``n̂_t = n_t / (1 − β₂ᵗ)`` (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980). With
    ``nesterov`` (NAdam, Dozat 2016, https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ) the
    first moment looks one step ahead:
    ``m̂_t = β₁ m_t / (1 − β₁ᵗ⁺¹) + (1 − β₁) g_t / (1 − β₁ᵗ)``.

    Args:
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε > 0 outside the square root.
      eps_root: ε_root ≥ 0 inside it (keeps meta-gradients finite).
      mu_dtype: dtype of the first moment (e.g. bfloat16 to save memory); ``None`` uses
        the parameters' dtype. Updates always come back in the gradient's dtype.
      nesterov: use Nesterov's look-ahead first moment (NAdam).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      ``optax.ScaleByAdamState(count, mu, nu)``.

    Examples:
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
    mu_dtype = canonical_dtype(mu_dtype)

    def init_fn(params):
        check_inexact_leaves("params", params)
        return optax.ScaleByAdamState(
            count=zero_count(),
            mu=zeros_like_tree(params, mu_dtype),
            nu=zeros_like_tree(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        check_same_structure("updates", updates, "the Adam moments", state.nu)
        check_inexact_leaves("updates", updates)
        beta1 = resolve(b1, state.count)
        beta2 = resolve(b2, state.count)
        epsilon = resolve(eps, state.count)
        epsilon_root = resolve(eps_root, state.count)
        count = optax.safe_increment(state.count)
        # The first moment is updated in the wider of its dtype and the gradient's, so a
        # bfloat16 mu still sees float32 arithmetic, then stored back in mu_dtype.
        mu = jax.tree.map(
            lambda g, m: _moment(g, m.astype(wider_dtype(m.dtype, g.dtype)), beta1, 1),
            updates,
            state.mu,
        )
        nu = jax.tree.map(lambda g, n: _moment(g, n, beta2, 2), updates, state.nu)

        def first(g, m, n):
            if not nesterov:
                return _debias(m, beta1, count).astype(n.dtype)
            ahead = _debias(m, beta1, optax.safe_increment(count)).astype(n.dtype)
            now = _debias(g.astype(n.dtype), beta1, count)
            return like(beta1, n) * ahead + like(1 - beta1, n) * now

        def direction(g, m, n):
            n_hat = _debias(n, beta2, count)
            step = first(g, m, n) / (jnp.sqrt(n_hat + like(epsilon_root, n)) + like(epsilon, n))
            return step.astype(g.dtype)

        out = jax.tree.map(direction, updates, mu, nu)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The lesson's name: what Optax calls the root of the sum of squares is Adagrad's scaling.
scale_by_adagrad = scale_by_rss
