"""Weight initializers that keep signals in range through deep networks (lesson point L2).

A layer computes ``y_j = sum_i W_ij x_i`` over ``fan_in`` inputs. With independent zero-mean
weights of variance ``Var(W)`` and inputs of variance ``Var(x)``,

    Var(y) = fan_in * Var(W) * Var(x),

so ``Var(W) = 1 / fan_in`` keeps the forward signal's spread (LeCun), ``Var(W) = 1 / fan_out``
does the same for the backward gradients, ``Var(W) = 2 / (fan_in + fan_out)`` compromises between
the two (Glorot & Bengio, 2010), and ``Var(W) = 2 / ((1 + a²) fan_in)`` makes up for a (leaky)
ReLU with negative slope ``a`` discarding part of the signal (He et al., 2015). All of them are
:func:`variance_scaling`, ``Var(W) = scale / fan``, with one of three distributions:

* ``"normal"``: ``N(0, σ²)`` with ``σ² = scale / fan``;
* ``"truncated_normal"``: ``N(0, s²)`` cut at ``±2s``, where ``s = σ / c`` and
  ``c² = 1 - 4φ(2) / erf(√2) ≈ 0.7737`` is the variance of a standard normal cut at ``±2``;
  the cut-off draw therefore still has variance ``σ²``;
* ``"uniform"``: ``U[-L, L)`` with ``L = √(3σ²)``, since ``U[-L, L)`` has variance ``L² / 3``.

Fans follow ``jax.nn.initializers``: a dense kernel is ``(in, out)``; a convolution kernel is
``(*spatial, in, out)`` and every axis other than ``in_axis``, ``out_axis`` and ``batch_axis``
is receptive field, so ``fan_in = in * receptive`` and ``fan_out = out * receptive``.

Decision: the named normal initializers (:func:`lecun_normal`, :func:`glorot_normal`,
:func:`he_normal` and :func:`gaussian`) draw from the plain normal ``N(0, σ²)``, as the lesson
and PyTorch's ``xavier_normal_`` and ``kaiming_normal_`` do. ``jax.nn.initializers``' normal ones
draw from the truncated normal instead; pass ``distribution="truncated_normal"`` for that.

Every factory returns ``init(key, shape, dtype) -> Array`` with the signature of
``jax.nn.initializers``, so it drops into ``flax.linen.Dense(kernel_init=...)``. ``shape`` and
``dtype`` are static, so ``init`` works under ``jit``. The draw is computed in float32 (float64
for a float64 ``dtype``) and cast to ``dtype``, so bfloat16 and float16 get correctly rounded
samples; float64 needs ``jax_enable_x64``, without it JAX warns and returns float32 as everywhere.
Integer and complex dtypes are refused. Draws are compiled once per shape, dtype and distribution
and shared by all initializers, the scale being a run-time argument.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxtricks.tricks._checks import check_choice, check_positive, check_range

__all__ = [
    "NAMES",
    "gaussian",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "orthogonal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
]

Initializer = Callable[..., jax.Array]
Axes = int | Sequence[int]

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")

_CUT = 2.0
# N(0, 1) restricted to [-a, a] has variance 1 - 2·a·φ(a) / (2Φ(a) - 1), and 2Φ(a) - 1 = erf(a/√2).
_CUT_STD = math.sqrt(
    1.0
    - 2.0 * _CUT * math.exp(-(_CUT**2) / 2) / math.sqrt(2 * math.pi) / math.erf(_CUT / math.sqrt(2))
)


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    """The dtype as ``np.dtype``; ``ValueError`` unless it is a real floating dtype."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or not jnp.issubdtype(checked, jnp.floating):
        raise ValueError(
            "dtype must be a real floating dtype (float16, bfloat16, float32 or float64), "
            f"got {dtype!r}"
        )
    return checked


def _check_axes(name: str, axes: Axes) -> tuple[int, ...]:
    """``axes`` as a tuple of ints; ``ValueError`` unless it is an int or a sequence of ints."""
    try:
        if isinstance(axes, Sequence) and not isinstance(axes, str):
            return tuple(operator.index(axis) for axis in axes)
        return (operator.index(axes),)
    except TypeError:
        raise ValueError(f"{name} must be an int or a sequence of ints, got {axes!r}") from None


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints."""
    try:
        checked = tuple(operator.index(size) for size in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of ints, got {shape!r}") from None
    if any(size < 0 for size in checked):
        raise ValueError(f"shape must have non-negative sizes, got {checked}")
    return checked


def _normalize_axes(name: str, axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Axes counted from the front; ``ValueError`` naming the shape when one does not exist."""
    rank = len(shape)
    for axis in axes:
        if not -rank <= axis < rank:
            raise ValueError(
                f"shape {shape} has rank {rank}, so {name}={axis} does not exist; fans are "
                "defined for kernels of rank >= 2 such as (in, out) or (*spatial, in, out), "
                "or for explicit in_axis/out_axis/batch_axis"
            )
    return tuple(axis % rank for axis in axes)


def _fans(
        shape: tuple[int, ...],
        in_axis: tuple[int, ...] = (-2,),
        out_axis: tuple[int, ...] = (-1,),
        batch_axis: tuple[int, ...] = (),
) -> tuple[int, int]:
    """``(fan_in, fan_out)``: the in or out sizes times the receptive field (all other axes)."""
    ins = _normalize_axes("in_axis", in_axis, shape)
    outs = _normalize_axes("out_axis", out_axis, shape)
    batches = _normalize_axes("batch_axis", batch_axis, shape)
    named = ins + outs + batches
    if len(set(named)) != len(named):
        raise ValueError(
            f"in_axis={in_axis}, out_axis={out_axis} and batch_axis={batch_axis} must name "
            f"distinct axes of shape {shape}"
        )
    receptive = math.prod(size for axis, size in enumerate(shape) if axis not in named)
    fan_in = math.prod(shape[axis] for axis in ins) * receptive
    fan_out = math.prod(shape[axis] for axis in outs) * receptive
    return fan_in, fan_out


def _resolve_dtype(dtype: DTypeLike | None, default: np.dtype) -> np.dtype:
    """The factory's ``default`` for None, else the checked ``dtype``."""
    return default if dtype is None else _check_dtype(dtype)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64, float32 otherwise: narrow dtypes get a float32 draw rounded once."""
    return np.dtype(np.float64 if jnp.finfo(dtype).bits > 32 else np.float32)


# The draws are compiled once per shape, dtype and distribution and shared by every initializer,
# with the scale as a traced argument: called eagerly (as Flax's ``init`` usually is), a network
# whose layers repeat a shape compiles once, not once per operation and initializer.
@functools.partial(jax.jit, static_argnames=("shape", "dtype", "distribution"))
def _draw(
        key: jax.Array, factor: jax.Array, *, shape: tuple[int, ...], dtype: np.dtype,
        distribution: str,
) -> jax.Array:
    """``factor`` times a raw draw: ``N(0, 1)``, ``N(0, 1)`` cut at ±2, or ``U[-1, 1)``."""
    compute = _compute_dtype(dtype)
    # A flat draw holds the same values in the same (row-major) order as a draw of ``shape`` and
    # compiles several times faster on CPU.
    flat = (math.prod(shape),)
    if distribution == "normal":
        raw = jax.random.normal(key, flat, compute)
    elif distribution == "truncated_normal":
        raw = jax.random.truncated_normal(key, -_CUT, _CUT, flat, compute)
    else:
        raw = jax.random.uniform(key, flat, compute, -1.0, 1.0)
    return (raw.reshape(shape) * factor.astype(compute)).astype(dtype)


# The standard deviations of the raw draws of ``_draw``; U[-1, 1) has variance 1/3.
_RAW_STD = {"normal": 1.0, "truncated_normal": _CUT_STD, "uniform": 1.0 / math.sqrt(3.0)}


def variance_scaling(
        scale: float,
        mode: str,
        distribution: str,
        *,
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """Zero-mean weights of variance ``scale / fan``.

    ``σ² = scale / n`` where ``n`` is ``fan_in``, ``fan_out`` or ``(fan_in + fan_out) / 2``
    for ``mode`` ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``. ``distribution`` is
    ``"normal"`` (``N(0, σ²)``), ``"truncated_normal"`` (cut at two of its standard deviations
    and widened so that the variance is still ``σ²``) or ``"uniform"`` (``U[-√(3σ²), √(3σ²))``).
    ``fan_in = in * receptive`` and ``fan_out = out * receptive``, where ``receptive`` is the
    product of the sizes of the axes that are not ``in_axis``, ``out_axis`` or ``batch_axis``.

    Args:
        scale: the variance times the fan, > 0.
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"normal"``, ``"truncated_normal"`` or ``"uniform"``.
        in_axis: the input axis or axes of the kernel.
        out_axis: the output axis or axes of the kernel.
        batch_axis: axes of independent kernels stacked together, left out of both fans.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``. It raises ``ValueError`` naming the shape
        when an axis does not exist in it, e.g. for a rank-1 shape with the default axes.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> init = initializers.variance_scaling(2.0, "fan_in", "uniform")
        >>> w = init(jax.random.key(0), (3, 3, 32, 64))  # fan_in = 3 * 3 * 32 = 288
        >>> bool(abs(w).max() < (3 * 2.0 / 288) ** 0.5)
        True
    """
    scale = float(check_positive("scale", scale))
    check_choice("mode", mode, MODES)
    check_choice("distribution", distribution, DISTRIBUTIONS)
    in_axes = _check_axes("in_axis", in_axis)
    out_axes = _check_axes("out_axis", out_axis)
    batch_axes = _check_axes("batch_axis", batch_axis)
    default_dtype = _check_dtype(dtype)

    def init(
            key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = default_dtype
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, default_dtype)
        shape = _check_shape(shape)
        fan_in, fan_out = _fans(shape, in_axes, out_axes, batch_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        if fan == 0:
            # A zero fan only comes with a zero-size axis: there is nothing to draw.
            return jnp.zeros(shape, dtype)
        factor = math.sqrt(scale / fan) / _RAW_STD[distribution]
        return _draw(key, factor, shape=shape, dtype=dtype, distribution=distribution)

    return init


def lecun_normal(
        *,
        distribution: str = "normal",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """LeCun normal: ``N(0, 1 / fan_in)``, which keeps the forward signal's variance.

    ``variance_scaling(1.0, "fan_in", "normal")``. Plain normal, unlike
    ``jax.nn.initializers.lecun_normal`` which is truncated: pass
    ``distribution="truncated_normal"`` for JAX's behaviour.

    Args:
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.lecun_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * 784 - 1.0) < 0.02)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(1.0, "fan_in", distribution, **options)


def lecun_uniform(
        *,
        distribution: str = "uniform",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """LeCun uniform: ``U[-√(3 / fan_in), √(3 / fan_in))``, of variance ``1 / fan_in``.

    ``variance_scaling(1.0, "fan_in", "uniform")``, as ``jax.nn.initializers.lecun_uniform``.

    Args:
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.lecun_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (3 / 784) ** 0.5)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(1.0, "fan_in", distribution, **options)


def glorot_normal(
        *,
        distribution: str = "normal",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """Glorot (Xavier) normal: ``N(0, 2 / (fan_in + fan_out))``.

    ``variance_scaling(1.0, "fan_avg", "normal")``: the variance that keeps signals in range in
    both the forward and the backward pass (Glorot & Bengio, 2010). Plain normal, as PyTorch's
    ``xavier_normal_``, unlike ``jax.nn.initializers.glorot_normal`` which is truncated: pass
    ``distribution="truncated_normal"`` for JAX's behaviour. ``xavier_normal`` is this function.

    Args:
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.glorot_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * (784 + 512) / 2 - 1.0) < 0.02)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(1.0, "fan_avg", distribution, **options)


def glorot_uniform(
        *,
        distribution: str = "uniform",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """Glorot (Xavier) uniform: ``U[-L, L)`` with ``L = √(6 / (fan_in + fan_out))``.

    ``variance_scaling(1.0, "fan_avg", "uniform")``, of variance ``2 / (fan_in + fan_out)``, as
    ``jax.nn.initializers.glorot_uniform`` and PyTorch's ``xavier_uniform_``.
    ``xavier_uniform`` is this function.

    Args:
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.glorot_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (6 / (784 + 512)) ** 0.5)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(1.0, "fan_avg", distribution, **options)


def _leaky_relu_scale(negative_slope: float) -> float:
    """``2 / (1 + a²)``: ReLU keeps half the second moment, a leaky ReLU ``(1 + a²) / 2``."""
    a = float(check_range("negative_slope", negative_slope, -math.inf, math.inf, low_open=True,
                          high_open=True))
    return 2.0 / (1.0 + a * a)


def he_normal(
        *,
        negative_slope: float = 0.0,
        distribution: str = "normal",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """He (Kaiming) normal: ``N(0, 2 / ((1 + a²) fan_in))`` for a (leaky) ReLU of slope ``a``.

    ``variance_scaling(2 / (1 + a²), "fan_in", "normal")`` (He et al., 2015). Plain normal, as
    PyTorch's ``kaiming_normal_``, unlike ``jax.nn.initializers.he_normal`` which is truncated:
    pass ``distribution="truncated_normal"`` for JAX's behaviour. ``kaiming_normal`` is this
    function.

    Args:
        negative_slope: the leaky ReLU's slope ``a`` for negative inputs; 0 for ReLU.
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.he_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * 784 / 2 - 1.0) < 0.02)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(_leaky_relu_scale(negative_slope), "fan_in", distribution, **options)


def he_uniform(
        *,
        negative_slope: float = 0.0,
        distribution: str = "uniform",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """He (Kaiming) uniform: ``U[-L, L)`` with ``L = √(6 / ((1 + a²) fan_in))``.

    ``variance_scaling(2 / (1 + a²), "fan_in", "uniform")``, of variance
    ``2 / ((1 + a²) fan_in)``, as ``jax.nn.initializers.he_uniform`` (for ``a = 0``) and
    PyTorch's ``kaiming_uniform_``. ``kaiming_uniform`` is this function.

    Args:
        negative_slope: the leaky ReLU's slope ``a`` for negative inputs; 0 for ReLU.
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.he_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (6 / 784) ** 0.5)
        True
    """
    options = dict(in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis, dtype=dtype)
    return variance_scaling(_leaky_relu_scale(negative_slope), "fan_in", distribution, **options)


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def gaussian(
        *,
        distribution: str = "normal",
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike = jnp.float32,
) -> Initializer:
    """The lesson's ``gaussian``: ``N(0, 1 / fan_in)``, the same as :func:`lecun_normal`.

    ``Var(y) = fan_in · (1 / fan_in) · Var(x) = Var(x)``, so inputs of mean 0 and standard
    deviation 1 give outputs of mean 0 and standard deviation 1. Plain normal, like
    :func:`lecun_normal`; ``distribution="truncated_normal"`` gives JAX's truncated draw.

    Args:
        distribution: see :func:`variance_scaling`.
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> key = jax.random.key(0)
        >>> w = initializers.gaussian()(key, (256, 10))
        >>> bool((w == initializers.lecun_normal()(key, (256, 10))).all())
        True
    """
    return lecun_normal(
        distribution=distribution,
        in_axis=in_axis,
        out_axis=out_axis,
        batch_axis=batch_axis,
        dtype=dtype,
    )


def normal(stddev: float = 1.0, *, dtype: DTypeLike = jnp.float32) -> Initializer:
    """``N(0, stddev²)`` whatever the fans; the default N(0, 1) is the lesson's bad choice.

    With ``N(0, 1)`` weights, ``Var(y) = fan_in · Var(x)``: the spread grows with the number of
    inputs and leaves the range where activations are non-linear. Any shape is accepted.

    Args:
        stddev: the standard deviation, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.normal(0.1)(jax.random.key(0), (784, 512))
        >>> bool(abs(w.std() - 0.1) < 0.001)
        True
    """
    stddev = float(check_positive("stddev", stddev))
    default_dtype = _check_dtype(dtype)

    def init(
            key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = default_dtype
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, default_dtype)
        return _draw(key, stddev, shape=_check_shape(shape), dtype=dtype, distribution="normal")

    return init


def uniform(scale: float = 0.05, *, dtype: DTypeLike = jnp.float32) -> Initializer:
    """``U[-scale, scale)`` whatever the fans: the lesson's ``uniform``, of variance ``scale² / 3``.

    Symmetric around 0, unlike ``jax.nn.initializers.uniform(scale)``, which draws from
    ``U[0, scale)`` and so has mean ``scale / 2``. In bfloat16 and float16 rounding may land a
    sample on ``±scale`` itself. Any shape is accepted.

    Args:
        scale: the half-width of the interval, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.uniform(0.05)(jax.random.key(0), (784, 512))
        >>> bool(w.min() >= -0.05), bool(w.max() < 0.05), bool(w.min() < 0)
        (True, True, True)
    """
    scale = float(check_positive("scale", scale))
    default_dtype = _check_dtype(dtype)

    def init(
            key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = default_dtype
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, default_dtype)
        # The largest raw value is 1 - 2⁻²² (1 - 2⁻⁵¹ in float64), and its product with the
        # scale rounds to below the scale, so the support is half-open as documented.
        return _draw(key, scale, shape=_check_shape(shape), dtype=dtype, distribution="uniform")

    return init


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "column_axis"))
def _orthogonal(
        key: jax.Array, gain: jax.Array, *, shape: tuple[int, ...], dtype: np.dtype,
        column_axis: int,
) -> jax.Array:
    """``gain`` times a Haar orthogonal ``rows × cols`` matrix laid out as ``shape``."""
    compute = _compute_dtype(dtype)
    cols = shape[column_axis]
    others = shape[:column_axis] + shape[column_axis + 1:]
    rows = math.prod(others)
    tall = (max(rows, cols), min(rows, cols))
    q, r = jnp.linalg.qr(jax.random.normal(key, (math.prod(tall),), compute).reshape(tall))
    # QR leaves the signs of diag(R) to the algorithm; making them positive makes Q Haar.
    q = jnp.where(jnp.diagonal(r)[None, :] < 0, -q, q)
    if rows < cols:
        q = q.T
    w = jnp.moveaxis(q.reshape(*others, cols), -1, column_axis)
    return (w * gain.astype(compute)).astype(dtype)


def orthogonal(
        gain: float = 1.0, *, column_axis: int = -1, dtype: DTypeLike = jnp.float32
) -> Initializer:
    """``gain`` times a uniformly (Haar) distributed matrix with orthonormal columns or rows.

    The kernel is seen as a matrix with ``cols = shape[column_axis]`` columns and
    ``rows = prod(other sizes)`` rows. A ``max × min`` Gaussian matrix ``A = QR`` is factored,
    the columns of ``Q`` are multiplied by the signs of ``diag(R)`` (without this the QR
    routine's sign convention biases ``Q``; with it ``Q`` is Haar, Mezzadri 2007), and ``Q`` is
    transposed when the kernel is wide. So ``WᵀW = gain² I`` when ``rows >= cols`` and
    ``WWᵀ = gain² I`` otherwise, and the mean square entry is ``gain² / max(rows, cols)``.

    Args:
        gain: the common norm of the orthogonal columns (or rows), > 0.
        column_axis: the kernel's axis whose slices are the columns.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype) -> Array`` for shapes of rank >= 2; it raises
        ``ValueError`` naming the shape otherwise.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.orthogonal(2.0)(jax.random.key(0), (3, 3, 16, 32))  # 144 × 32
        >>> m = w.reshape(-1, 32)
        >>> bool(jnp.allclose(m.T @ m, 4.0 * jnp.eye(32), atol=1e-4))
        True
    """
    gain = float(check_positive("gain", gain))
    try:
        column_axis = operator.index(column_axis)
    except TypeError:
        raise ValueError(f"column_axis must be an int, got {column_axis!r}") from None
    default_dtype = _check_dtype(dtype)

    def init(
            key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = default_dtype
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, default_dtype)
        shape = _check_shape(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a shape of rank >= 2, got shape {shape}")
        (axis,) = _normalize_axes("column_axis", (column_axis,), shape)
        return _orthogonal(key, gain, shape=shape, dtype=dtype, column_axis=axis)

    return init


_BY_NAME: dict[str, Callable[..., Initializer]] = {
    "variance_scaling": variance_scaling,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": kaiming_uniform,
    "gaussian": gaussian,
    "normal": normal,
    "uniform": uniform,
    "orthogonal": orthogonal,
}
_CONSTANT: dict[str, Initializer] = {
    "zeros": jax.nn.initializers.zeros,
    "ones": jax.nn.initializers.ones,
}
NAMES = tuple(sorted((*_BY_NAME, *_CONSTANT)))


def get(name: str, **kwargs: Any) -> Initializer:
    """The initializer called ``name`` (case-insensitive), built with ``kwargs``.

    ``get(name, **kwargs)`` is ``name(**kwargs)`` for the factories of this module; ``"zeros"``
    and ``"ones"`` are ``jax.nn.initializers.zeros`` and ``ones`` and take no options.

    Args:
        name: one of ``NAMES``, e.g. ``"glorot_uniform"`` or ``"He_Normal"``.
        **kwargs: the factory's arguments, e.g. ``stddev=0.1`` for ``"normal"``.

    Returns:
        ``init(key, shape, dtype) -> Array``.

    Example:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> init = initializers.get("He_Normal", negative_slope=0.2)
        >>> init(jax.random.key(0), (256, 10)).shape
        (256, 10)
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, one of {NAMES}, got {name!r}")
    key = name.lower()
    if key not in NAMES:
        raise ValueError(f"name must be one of {NAMES} (any case), got {name!r}")
    if key in _CONSTANT:
        if kwargs:
            raise ValueError(f"name={name!r} takes no options, got {sorted(kwargs)}")
        return _CONSTANT[key]
    return _BY_NAME[key](**kwargs)
