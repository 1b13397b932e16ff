"""Batch normalization in training with a hand-written gradient and fast per-channel sums.

For an input ``x`` whose last axis holds the C channels, with n values per channel (all other
axes), training-mode batch norm (Ioffe & Szegedy, 2015) computes, per channel,

    μ = Σx / n,   σ² = max(Σx² / n − μ², 0),   s = (σ² + ε)^(-1/2),
    x̂ = (x − μ) s,   y = γ x̂ + β,

and returns μ and σ² as well, for the running averages. For cotangents g of y, g_μ of μ and
g_σ² of σ² (the last two are zero when the statistics only feed the running averages), the
gradients are

    ∂β = Σ g,   ∂γ = Σ g x̂,
    ∂x = γ s (g − ∂β / n − x̂ ∂γ / n) + g_μ / n + 2 g_σ² (x − μ) / n.

:func:`batch_norm_train` carries these in a ``jax.custom_vjp``, so a training step takes two
passes over x forward and two backward. The plain sums (Σx, Σg) are taken on
``x.reshape(-1, k·C)`` (k positions of one example side by side) before folding the k groups:
XLA on the CPU sums a (rows, C) array over its rows far more slowly than a wider one. Grouping
positions within one example keeps the leading axis the batch axis, so a batch sharded across
devices stays sharded. The sums of products (Σx², Σg x̂) are a ones vector of length N times
the product viewed as N rows, then the positions are folded: XLA:CPU fuses a product into a
reduction as a loop that reindexes every element. docs/benchmarks.md has the timings of each
form and of the whole path against Flax's.

:class:`BatchNorm` is ``flax.linen.BatchNorm`` with this training path, same parameters
(``scale``, ``bias``), same ``batch_stats`` (``mean``, ``var``) and same running-average
update; everything else (evaluation with the running averages, masks, ``axis_name``, other
axes or dtypes) is Flax's own code.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtricks.backend import speed_paths

__all__ = ["BatchNorm", "batch_norm_train"]

# Sum over rows of this many values at least: far faster than rows of 32 on XLA:CPU.
_MIN_ROW = 256


def _channel_sum(x: jax.Array) -> jax.Array:
    """``Σ`` over every axis but the last, as sums over rows of k·C values, then over k."""
    channels = x.shape[-1]
    per_example = math.prod(x.shape[1:-1]) if x.ndim > 2 else 1
    groups = 1
    for k in range(1, per_example + 1):
        if per_example % k == 0:
            groups = k
            if k * channels >= _MIN_ROW:
                break
    rows = x.reshape(-1, groups * channels)
    return jnp.sum(jnp.sum(rows, axis=0).reshape(groups, channels), axis=0)


def _channel_sum_of_products(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Σ a·b`` over every axis but the last: a ones vector times the product with one row per
    example, then the positions folded."""
    rows = (a * b).reshape(a.shape[0], -1)
    per_position = jnp.ones(a.shape[:1], a.dtype) @ rows
    return jnp.sum(per_position.reshape(-1, a.shape[-1]), axis=0)


def _statistics(x, epsilon):
    n = x.size // x.shape[-1]
    mean = _channel_sum(x) / n
    var = jnp.maximum(_channel_sum_of_products(x, x) / n - mean * mean, 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    return mean, var, inv


def _along_channels(v: jax.Array, ndim: int) -> jax.Array:
    """A ``(C,)`` vector shaped ``(1, ..., 1, C)`` to broadcast against a rank-``ndim`` x."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _normalize(x, scale, bias, mean, inv):
    def c(v):
        return _along_channels(v, x.ndim)

    return (x - c(mean)) * c(inv * scale) + c(bias)


def _batch_norm_forward(x, scale, bias, epsilon):
    mean, var, inv = _statistics(x, epsilon)
    return (_normalize(x, scale, bias, mean, inv), mean, var), (x, scale, mean, inv, epsilon)


@jax.custom_vjp
def _batch_norm(x, scale, bias, epsilon):
    return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_backward(residuals, cotangents):
    x, scale, mean, inv, epsilon = residuals
    g, g_mean, g_var = cotangents
    n = x.size // x.shape[-1]

    def c(v):
        return _along_channels(v, x.ndim)

    centered = x - c(mean)
    x_hat = centered * c(inv)
    bias_grad = _channel_sum(g)
    scale_grad = _channel_sum_of_products(g, x_hat)
    x_grad = c(scale * inv) * (g - c(bias_grad / n) - x_hat * c(scale_grad / n))
    x_grad = x_grad + c(g_mean / n) + c((2.0 / n) * g_var) * centered
    return x_grad, scale_grad, bias_grad, jnp.zeros_like(epsilon)


_batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)


def batch_norm_train(
        x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = 1e-5
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm of ``x`` over all axes but the last: ``(y, μ, σ²)``.

    Args:
        x: a float32 array ``(N, ..., C)``.
        scale: γ, float32 ``(C,)``.
        bias: β, float32 ``(C,)``.
        epsilon: ε > 0 in ``(σ² + ε)^(-1/2)``.

    Returns:
        ``y`` of the shape of ``x`` and the batch mean and (biased) variance, each ``(C,)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
        >>> y, mean, var = batch_norm_train(x, jnp.ones(2), jnp.zeros(2))
        >>> mean, var
        (Array([ 2., 20.], dtype=float32), Array([  1., 100.], dtype=float32))
        >>> jnp.round(y, 3)
        Array([[-1., -1.],
               [ 1.,  1.]], dtype=float32)
    """
    for name, value in (("x", x), ("scale", scale), ("bias", bias)):
        if jnp.result_type(value) != jnp.float32:
            raise ValueError(f"{name} must be float32, got {jnp.result_type(value)}")
    if jnp.ndim(x) < 2 or jnp.shape(scale) != jnp.shape(x)[-1:] or jnp.shape(bias) != jnp.shape(
        scale
    ):
        raise ValueError(
            "batch_norm_train expects x of shape (N, ..., C) and scale and bias of shape (C,), "
            f"got {jnp.shape(x)}, {jnp.shape(scale)} and {jnp.shape(bias)}"
        )
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    return _batch_norm(x, scale, bias, jnp.asarray(epsilon, jnp.float32))


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` whose training path can be :func:`batch_norm_train`.

    It takes that path where the backend's speed paths say so (on the CPU;
    :func:`jaxtricks.backend.speed_paths`) or ``custom_gradient=True`` asks for it, for
    float32 inputs normalized over all axes but the last, with scale and bias, float32
    parameters and no mask or ``axis_name``; otherwise, and in evaluation, it is
    ``flax.linen.BatchNorm``. Both paths compute the same normalization and running averages,
    up to float rounding. Parameters and ``batch_stats`` have Flax's names and shapes, so
    checkpoints and code written for Flax's layer carry over. The scale and bias are used in
    ``param_dtype`` whatever dtype they are handed in: a mixed-precision policy casts every
    parameter to its 16-bit compute dtype, and batch norm keeps computing in float32.

    Attributes:
        custom_gradient: take the hand-written path (True), Flax's (False), or the backend's
            choice (None).
    """

    custom_gradient: bool | None = None

    @nn.nowrap
    def param(self, name: str, init_fn: Any, *init_args: Any, unbox: bool = True,
              **init_kwargs: Any) -> Any:
        """``flax.linen.Module.param``, the value cast to ``param_dtype`` (the gradient flows
        back through the cast to the dtype the parameter came in)."""
        value = super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        return jnp.asarray(value, self.param_dtype)

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: Any = None) -> jax.Array:
        """Normalizes ``x``; see ``flax.linen.BatchNorm.__call__``."""
        use_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        custom = self.custom_gradient
        if custom is None:
            custom = speed_paths().batch_norm_custom_gradient
        fast = (
            custom
            and not use_average
            and mask is None
            and self.axis_name is None
            and self.axis in (-1, jnp.ndim(x) - 1)
            and self.use_scale
            and self.use_bias
            and self.use_fast_variance
            and jnp.ndim(x) >= 2
            and jnp.result_type(x) == jnp.float32
            and self.param_dtype == jnp.float32
            and (self.dtype is None or self.dtype == jnp.float32)
        )
        if not fast:
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
