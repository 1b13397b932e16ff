"""Weight initializers that keep signals in range through deep networks (lesson point L2).

A layer computes ``y_j = sum_i W_ij x_i`` over ``fan_in`` inputs. With independent zero-mean
weights of variance ``Var(W)`` and inputs of variance ``Var(x)``,

    Var(y) = fan_in * Var(W) * Var(x),

so ``Var(W) = 1 / fan_in`` keeps the forward signal's spread (LeCun), ``Var(W) = 1 / fan_out``
does the same for the backward gradients, ``Var(W) = 2 / (fan_in + fan_out)`` compromises between
the two (Glorot & Bengio, 2010), and ``Var(W) = 2 / ((1 + a²) fan_in)`` makes up for a (leaky)
ReLU with negative slope ``a`` discarding part of the signal (He et al., 2015). All of them are
:func:`variance_scaling`, ``Var(W) = scale / fan``, with one of three distributions:

* ``"truncated_normal"``: ``N(0, s²)`` cut at ``±2s``, where ``s = σ / c`` and
  ``c² = 1 - 4φ(2) / erf(√2) ≈ 0.7737`` is the variance of a standard normal cut at ``±2``;
  the cut-off draw therefore still has variance ``σ² = scale / fan``;
* ``"normal"``: ``N(0, σ²)``;
* ``"uniform"``: ``U[-L, L)`` with ``L = √(3σ²)``, since ``U[-L, L)`` has variance ``L² / 3``.

Fans follow ``jax.nn.initializers``: a dense kernel is ``(in, out)``; a convolution kernel is
``(*spatial, in, out)`` and every axis other than ``in_axis``, ``out_axis`` and ``batch_axis``
is receptive field, so ``fan_in = in * receptive`` and ``fan_out = out * receptive``.

Every name ``jax.nn.initializers`` also has means what it means there: the same signature,
defaults and distribution (:func:`normal`, :func:`uniform`, :func:`truncated_normal`,
:func:`variance_scaling`, the ``lecun_*``, ``glorot_*``/``xavier_*`` and ``he_*``/``kaiming_*``
families, whose ``*_normal`` members are truncated, and :func:`orthogonal`). The lesson's own
variants have names of their own: :func:`unscaled_normal` (``N(0, 1)`` whatever the fans, the
lesson's bad choice), :func:`symmetric_uniform` (``U[-0.05, 0.05)``), :func:`gaussian`
(``N(0, 1 / fan_in)``, untruncated), :func:`glorot_normal_untruncated` and
:func:`he_normal_untruncated` (as PyTorch's ``xavier_normal_`` and ``kaiming_normal_``).

Every factory returns ``init(key, shape, dtype, out_sharding=None) -> Array`` with the
signature of ``jax.nn.initializers``, so it drops into ``flax.linen.Dense(kernel_init=...)``;
``dtype=None`` is JAX's default float (float32, float64 under ``jax_enable_x64``). ``shape`` and
``dtype`` are static, so ``init`` works under ``jit``. The draw is computed in float32 (float64
for a 64-bit ``dtype``) and cast to ``dtype``, so bfloat16 and float16 get correctly rounded
samples; for float32 the draws are JAX's own, key for key. Complex dtypes are drawn as JAX draws
them where JAX accepts them (:func:`variance_scaling`, :func:`normal`, :func:`orthogonal`);
integer dtypes are refused. Draws are compiled once per shape, dtype and distribution and shared
by all initializers, the scale being a run-time argument.
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

from jaxtricks.tricks.checks import check_choice, check_positive, check_range

__all__ = [
    "NAMES",
    "gaussian",
    "get",
    "glorot_normal",
    "glorot_normal_untruncated",
    "glorot_uniform",
    "he_normal",
    "he_normal_untruncated",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "orthogonal",
    "symmetric_uniform",
    "truncated_normal",
    "uniform",
    "unscaled_normal",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
]

Initializer = Callable[..., jax.Array]
Axes = int | Sequence[int]

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

_CUT = 2.0
# N(0, 1) restricted to [-a, a] has variance 1 - 2·a·φ(a) / (2Φ(a) - 1), and 2Φ(a) - 1 = erf(a/√2).
_CUT_STD = math.sqrt(
    1.0
    - 2.0 * _CUT * math.exp(-(_CUT**2) / 2) / math.sqrt(2 * math.pi) / math.erf(_CUT / math.sqrt(2))
)
# JAX's divisor for its complex truncated normal, kept so that the draws are JAX's. (A complex
# standard normal cut at |z| = 2 has root mean square √(1 - 4e⁻⁴ / (1 - e⁻⁴)) ≈ 0.962, so the
# complex "truncated_normal" of variance_scaling has E|w|² ≈ 1.018 σ², in JAX as here.)
_COMPLEX_CUT_STD = 0.95311164380491208


def _check_dtype(dtype: DTypeLike, *, complex_ok: bool) -> np.dtype:
    """The dtype as ``np.dtype``; ``ValueError`` unless it is floating (or complex, if allowed)."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        checked = None
    kinds = jnp.inexact if complex_ok else jnp.floating
    if checked is None or not jnp.issubdtype(checked, kinds):
        expected = "a real or complex floating dtype" if complex_ok else "a real floating dtype"
        raise ValueError(f"dtype must be {expected}, got {dtype!r}")
    return checked


def _resolve_dtype(dtype: DTypeLike | None, *, complex_ok: bool) -> np.dtype:
    """JAX's default float (float32, float64 under x64) for None, else the checked ``dtype``."""
    if dtype is None:
        return np.dtype(jax.dtypes.canonicalize_dtype(float))
    return _check_dtype(dtype, complex_ok=complex_ok)


def _check_factory_dtype(dtype: DTypeLike | None, *, complex_ok: bool) -> DTypeLike | None:
    """A factory's default ``dtype``, checked now unless it is None (resolved at each call)."""
    if dtype is not None:
        _check_dtype(dtype, complex_ok=complex_ok)
    return dtype


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


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """The draw's dtype: 64-bit for 64-bit dtypes, else 32-bit; complex for complex dtypes."""
    wide = jnp.finfo(dtype).bits > 32
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return np.dtype(np.complex128 if wide else np.complex64)
    return np.dtype(np.float64 if wide else np.float32)


def _complex_polar(key: jax.Array, size: int, dtype: np.dtype, radius_squared) -> jax.Array:
    """``r·e^(iθ)`` with θ uniform on [0, 2π) and ``r² = radius_squared(U)``, U ~ U[0, 1)."""
    real = jnp.finfo(dtype).dtype
    key_r, key_theta = jax.random.split(key)
    r = jnp.sqrt(radius_squared(jax.random.uniform(key_r, (size,), real)))
    theta = 2 * jnp.pi * jax.random.uniform(key_theta, (size,), real)
    return jax.lax.complex(r * jnp.cos(theta), r * jnp.sin(theta)).astype(dtype)


def _raw(key: jax.Array, size: int, dtype: np.dtype, distribution: str, bounds) -> jax.Array:
    """``size`` raw draws of ``distribution`` in ``dtype`` (see :func:`_draw`)."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        if distribution == "normal":
            return jax.random.normal(key, (size,), dtype)
        if distribution == "truncated_normal":
            # |z|² of a complex standard normal is Exp(1): invert its CDF on [0, 1 - e^(-a²)).
            cut = 1 - math.exp(-(_CUT**2))
            return _complex_polar(key, size, dtype, lambda u: -jnp.log1p(-cut * u))
        # Uniform on the disc of radius √2, of mean square 1.
        return _complex_polar(key, size, dtype, lambda u: 2 * u)
    if distribution == "normal":
        return jax.random.normal(key, (size,), dtype)
    if distribution == "truncated_normal":
        return jax.random.truncated_normal(key, bounds[0], bounds[1], (size,), dtype)
    if distribution == "uniform":
        return jax.random.uniform(key, (size,), dtype, -1.0, 1.0)
    return jax.random.uniform(key, (size,), dtype)


# The draws are compiled once per shape, dtype and distribution and shared by every initializer,
# with the scale as a traced argument: called eagerly (as Flax's ``init`` usually is), a network
# whose layers repeat a shape compiles once, not once per operation and initializer.
@functools.partial(jax.jit, static_argnames=("shape", "dtype", "distribution", "bounds"))
def _draw(
        key: jax.Array, factor: jax.Array, *, shape: tuple[int, ...], dtype: np.dtype,
        distribution: str, bounds: tuple[float, float] = (-_CUT, _CUT),
) -> jax.Array:
    """``factor`` times a raw draw of ``shape``, cast to ``dtype``.

    Raw draws: ``"normal"`` N(0, 1); ``"truncated_normal"`` N(0, 1) cut to ``bounds`` (complex:
    |z| < 2); ``"uniform"`` U[-1, 1) (complex: the disc of radius √2); ``"unit_uniform"``
    U[0, 1).
    """
    compute = _compute_dtype(dtype)
    # A flat draw holds the same values in the same (row-major) order as a draw of ``shape`` and
    # compiles several times faster on CPU.
    raw = _raw(key, math.prod(shape), compute, distribution, bounds)
    return (raw.reshape(shape) * factor.astype(raw.dtype)).astype(dtype)


def _sharded(array: jax.Array, out_sharding: Any) -> jax.Array:
    """``array`` laid out as ``out_sharding`` (a Sharding or PartitionSpec), or as it is."""
    return array if out_sharding is None else jax.sharding.reshard(array, out_sharding)


# The standard deviations (root mean squares) of the raw draws of ``_draw``.
_RAW_STD = {
    ("normal", False): 1.0,
    ("truncated_normal", False): _CUT_STD,
    ("uniform", False): 1.0 / math.sqrt(3.0),
    ("normal", True): 1.0,
    ("truncated_normal", True): _COMPLEX_CUT_STD,
    ("uniform", True): 1.0,
}


def variance_scaling(
        scale: float,
        mode: str,
        distribution: str,
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """Zero-mean weights of variance ``scale / fan`` (``jax.nn.initializers.variance_scaling``).

    ``σ² = scale / n`` where ``n`` is ``fan_in``, ``fan_out``, ``(fan_in + fan_out) / 2`` or
    ``√(fan_in · fan_out)`` for ``mode`` ``"fan_in"``, ``"fan_out"``, ``"fan_avg"`` or
    ``"fan_geo_avg"``. ``distribution`` is ``"truncated_normal"`` (cut at two of its standard
    deviations and widened so that the variance is still ``σ²``), ``"normal"`` (``N(0, σ²)``)
    or ``"uniform"`` (``U[-√(3σ²), √(3σ²))``). ``fan_in = in * receptive`` and
    ``fan_out = out * receptive``, where ``receptive`` is the product of the sizes of the axes
    that are not ``in_axis``, ``out_axis`` or ``batch_axis``. For a complex ``dtype``,
    ``E|w|² = σ²`` with a uniformly random phase, as in JAX.

    Args:
        scale: the variance times the fan, > 0.
        mode: ``"fan_in"``, ``"fan_out"``, ``"fan_avg"`` or ``"fan_geo_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
        in_axis: the input axis or axes of the kernel.
        out_axis: the output axis or axes of the kernel.
        batch_axis: axes of independent kernels stacked together, left out of both fans.
        dtype: the dtype ``init`` returns when it is not given one; None for JAX's default
            float.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``. It raises
        ``ValueError`` naming the shape when an axis does not exist in it, e.g. for a rank-1
        shape with the default axes.

    Examples:
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
    default_dtype = _check_factory_dtype(dtype, complex_ok=True)

    def init(
            key: jax.Array,
            shape: Sequence[int],
            dtype: DTypeLike | None = default_dtype,
            out_sharding: Any = None,
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, complex_ok=True)
        shape = _check_shape(shape)
        fan_in, fan_out = _fans(shape, in_axes, out_axes, batch_axes)
        fan = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": math.sqrt(fan_in * fan_out),
        }[mode]
        if fan == 0:
            # A zero fan only comes with a zero-size axis: there is nothing to draw.
            return _sharded(jnp.zeros(shape, dtype), out_sharding)
        is_complex = bool(jnp.issubdtype(dtype, jnp.complexfloating))
        factor = math.sqrt(scale / fan) / _RAW_STD[distribution, is_complex]
        drawn = _draw(key, factor, shape=shape, dtype=dtype, distribution=distribution)
        return _sharded(drawn, out_sharding)

    return init


def _named(
        scale: float,
        mode: str,
        distribution: str,
        in_axis: Axes,
        out_axis: Axes,
        batch_axis: Axes,
        dtype: DTypeLike | None,
) -> Initializer:
    return variance_scaling(scale, mode, distribution, in_axis, out_axis, batch_axis, dtype)


def lecun_normal(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """LeCun normal: a normal truncated at ±2σ of variance ``1 / fan_in``, as JAX's.

    ``variance_scaling(1.0, "fan_in", "truncated_normal")``, which keeps the forward signal's
    variance. The untruncated ``N(0, 1 / fan_in)`` is :func:`gaussian`.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.lecun_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * 784 - 1.0) < 0.02), bool(abs(w).max() * 784**0.5 <= 2 / 0.8796)
        (True, True)
    """
    return _named(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis, dtype)


def lecun_uniform(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """LeCun uniform: ``U[-√(3 / fan_in), √(3 / fan_in))``, of variance ``1 / fan_in``.

    ``variance_scaling(1.0, "fan_in", "uniform")``, as ``jax.nn.initializers.lecun_uniform``.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.lecun_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (3 / 784) ** 0.5)
        True
    """
    return _named(1.0, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


def glorot_normal(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """Glorot (Xavier) normal: truncated at ±2σ, of variance ``2 / (fan_in + fan_out)``.

    ``variance_scaling(1.0, "fan_avg", "truncated_normal")``, as
    ``jax.nn.initializers.glorot_normal``: the variance that keeps signals in range in both
    the forward and the backward pass (Glorot & Bengio, 2010). PyTorch's ``xavier_normal_``
    is untruncated: :func:`glorot_normal_untruncated`. ``xavier_normal`` is this function.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.glorot_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * (784 + 512) / 2 - 1.0) < 0.02)
        True
    """
    return _named(1.0, "fan_avg", "truncated_normal", in_axis, out_axis, batch_axis, dtype)


def glorot_normal_untruncated(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """The lesson's (and PyTorch's ``xavier_normal_``) Glorot: ``N(0, 2 / (fan_in + fan_out))``.

    ``variance_scaling(1.0, "fan_avg", "normal")``: the same variance as :func:`glorot_normal`,
    from the plain normal, whose tails reach about twice as far.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.glorot_normal_untruncated()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * (784 + 512) / 2 - 1.0) < 0.02)
        True
    """
    return _named(1.0, "fan_avg", "normal", in_axis, out_axis, batch_axis, dtype)


def glorot_uniform(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """Glorot (Xavier) uniform: ``U[-L, L)`` with ``L = √(6 / (fan_in + fan_out))``.

    ``variance_scaling(1.0, "fan_avg", "uniform")``, of variance ``2 / (fan_in + fan_out)``, as
    ``jax.nn.initializers.glorot_uniform`` and PyTorch's ``xavier_uniform_``.
    ``xavier_uniform`` is this function.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.glorot_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (6 / (784 + 512)) ** 0.5)
        True
    """
    return _named(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis, dtype)


def _leaky_relu_scale(negative_slope: float) -> float:
    """``2 / (1 + a²)``: ReLU keeps half the second moment, a leaky ReLU ``(1 + a²) / 2``."""
    a = float(check_range("negative_slope", negative_slope, -math.inf, math.inf, low_open=True,
                          high_open=True))
    return 2.0 / (1.0 + a * a)


def he_normal(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
        *,
        negative_slope: float = 0.0,
) -> Initializer:
    """He (Kaiming) normal: truncated at ±2σ, of variance ``2 / ((1 + a²) fan_in)``.

    ``variance_scaling(2 / (1 + a²), "fan_in", "truncated_normal")`` for a (leaky) ReLU of
    slope ``a`` (He et al., 2015); with ``a = 0`` exactly ``jax.nn.initializers.he_normal``.
    PyTorch's ``kaiming_normal_`` is untruncated: :func:`he_normal_untruncated`.
    ``kaiming_normal`` is this function.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.
        negative_slope: an extra of ours: the leaky ReLU's slope ``a`` for negative inputs;
            0 for ReLU.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.he_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * 784 / 2 - 1.0) < 0.02)
        True
    """
    scale = _leaky_relu_scale(negative_slope)
    return _named(scale, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis, dtype)


def he_normal_untruncated(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
        *,
        negative_slope: float = 0.0,
) -> Initializer:
    """The lesson's (and PyTorch's ``kaiming_normal_``) He: ``N(0, 2 / ((1 + a²) fan_in))``.

    ``variance_scaling(2 / (1 + a²), "fan_in", "normal")``: the variance of :func:`he_normal`
    from the plain normal.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.
        negative_slope: the leaky ReLU's slope ``a`` for negative inputs; 0 for ReLU.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.he_normal_untruncated()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.var() * 784 / 2 - 1.0) < 0.02)
        True
    """
    scale = _leaky_relu_scale(negative_slope)
    return _named(scale, "fan_in", "normal", in_axis, out_axis, batch_axis, dtype)


def he_uniform(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
        *,
        negative_slope: float = 0.0,
) -> Initializer:
    """He (Kaiming) uniform: ``U[-L, L)`` with ``L = √(6 / ((1 + a²) fan_in))``.

    ``variance_scaling(2 / (1 + a²), "fan_in", "uniform")``, of variance
    ``2 / ((1 + a²) fan_in)``, as ``jax.nn.initializers.he_uniform`` (for ``a = 0``) and
    PyTorch's ``kaiming_uniform_``. ``kaiming_uniform`` is this function.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.
        negative_slope: an extra of ours: the leaky ReLU's slope ``a`` for negative inputs;
            0 for ReLU.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.he_uniform()(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() < (6 / 784) ** 0.5)
        True
    """
    scale = _leaky_relu_scale(negative_slope)
    return _named(scale, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def gaussian(
        in_axis: Axes = -2,
        out_axis: Axes = -1,
        batch_axis: Axes = (),
        dtype: DTypeLike | None = None,
) -> Initializer:
    """The lesson's ``gaussian``: ``N(0, 1 / fan_in)``, LeCun's variance from the plain normal.

    ``Var(y) = fan_in · (1 / fan_in) · Var(x) = Var(x)``, so inputs of mean 0 and standard
    deviation 1 give outputs of mean 0 and standard deviation 1.
    ``variance_scaling(1.0, "fan_in", "normal")``; :func:`lecun_normal` is the truncated one.

    Args:
        in_axis: see :func:`variance_scaling`.
        out_axis: see :func:`variance_scaling`.
        batch_axis: see :func:`variance_scaling`.
        dtype: see :func:`variance_scaling`.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.gaussian()(jax.random.key(0), (256, 10))
        >>> bool(abs(w.std() * 256**0.5 - 1.0) < 0.1)
        True
    """
    return _named(1.0, "fan_in", "normal", in_axis, out_axis, batch_axis, dtype)


def _fan_free(
        distribution: str,
        factor: float,
        default_dtype: DTypeLike | None,
        *,
        complex_ok: bool,
        bounds: tuple[float, float] = (-_CUT, _CUT),
) -> Initializer:
    """An initializer of any shape: ``factor`` times a raw draw of ``distribution``."""

    def init(
            key: jax.Array,
            shape: Sequence[int],
            dtype: DTypeLike | None = default_dtype,
            out_sharding: Any = None,
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, complex_ok=complex_ok)
        drawn = _draw(
            key, factor, shape=_check_shape(shape), dtype=dtype, distribution=distribution,
            bounds=bounds,
        )
        return _sharded(drawn, out_sharding)

    return init


def normal(stddev: float = 1e-2, dtype: DTypeLike | None = None) -> Initializer:
    """``N(0, stddev²)`` whatever the fans, as ``jax.nn.initializers.normal`` (σ = 0.01).

    Any shape is accepted; a complex ``dtype`` draws a complex normal with ``E|w|² = σ²``.

    Args:
        stddev: the standard deviation, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.std() - 0.01) < 0.0001)
        True
    """
    stddev = float(check_positive("stddev", stddev))
    return _fan_free("normal", stddev, _check_factory_dtype(dtype, complex_ok=True),
                     complex_ok=True)


def unscaled_normal(stddev: float = 1.0, dtype: DTypeLike | None = None) -> Initializer:
    """The lesson's bad choice: ``N(0, stddev²)`` whatever the fans, N(0, 1) by default.

    With ``N(0, 1)`` weights, ``Var(y) = fan_in · Var(x)``: the spread grows with the number of
    inputs and leaves the range where activations are non-linear. :func:`normal` with a
    default of 1 instead of JAX's 0.01.

    Args:
        stddev: the standard deviation, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.unscaled_normal()(jax.random.key(0), (784, 512))
        >>> bool(abs(w.std() - 1.0) < 0.01)
        True
    """
    return normal(stddev, dtype)


def truncated_normal(
        stddev: float = 1e-2,
        dtype: DTypeLike | None = None,
        lower: float = -2.0,
        upper: float = 2.0,
) -> Initializer:
    """``stddev`` times a standard normal cut to ``[lower, upper]``, as JAX's.

    As in ``jax.nn.initializers.truncated_normal``, ``stddev`` scales the standard normal
    *before* the cut is taken into account: the draw's standard deviation is ``stddev`` times
    that of the cut normal (about 0.88 · stddev for the default ±2).

    Args:
        stddev: the scale, > 0.
        dtype: the dtype ``init`` returns when it is not given one.
        lower: the lower cut, in standard deviations.
        upper: the upper cut, > ``lower``.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.truncated_normal(1.0)(jax.random.key(0), (784, 512))
        >>> bool(abs(w).max() <= 2.0), bool(abs(w.std() - 0.88) < 0.01)
        (True, True)
    """
    stddev = float(check_positive("stddev", stddev))
    lower = float(check_range("lower", lower, -math.inf, math.inf))
    upper = float(check_range("upper", upper, lower, math.inf, low_open=True))
    return _fan_free(
        "truncated_normal", stddev, _check_factory_dtype(dtype, complex_ok=False),
        complex_ok=False, bounds=(lower, upper),
    )


def uniform(scale: float = 1e-2, dtype: DTypeLike | None = None) -> Initializer:
    """``U[0, scale)`` whatever the fans, as ``jax.nn.initializers.uniform``.

    Not centred: the mean is ``scale / 2``. The lesson's symmetric ``U[-s, s)`` is
    :func:`symmetric_uniform`.

    Args:
        scale: the width of the interval, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.uniform()(jax.random.key(0), (784, 512))
        >>> bool(w.min() >= 0), bool(w.max() < 0.01)
        (True, True)
    """
    scale = float(check_positive("scale", scale))
    return _fan_free("unit_uniform", scale, _check_factory_dtype(dtype, complex_ok=False),
                     complex_ok=False)


def symmetric_uniform(scale: float = 0.05, dtype: DTypeLike | None = None) -> Initializer:
    """The lesson's ``uniform``: ``U[-scale, scale)`` whatever the fans, of variance ``scale²/3``.

    Symmetric around 0, unlike :func:`uniform` (JAX's ``U[0, scale)``). In bfloat16 and
    float16 rounding may land a sample on ``±scale`` itself. Any shape is accepted.

    Args:
        scale: the half-width of the interval, > 0.
        dtype: the dtype ``init`` returns when it is not given one.

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array``.

    Examples:
        >>> import jax
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.symmetric_uniform(0.05)(jax.random.key(0), (784, 512))
        >>> bool(w.min() >= -0.05), bool(w.max() < 0.05), bool(w.min() < 0)
        (True, True, True)
    """
    scale = float(check_positive("scale", scale))
    # The largest raw value is 1 - 2⁻²² (1 - 2⁻⁵¹ in float64), and its product with the
    # scale rounds to below the scale, so the support is half-open as documented.
    return _fan_free("uniform", scale, _check_factory_dtype(dtype, complex_ok=False),
                     complex_ok=False)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "column_axis"))
def _orthogonal(
        key: jax.Array, scale: jax.Array, *, shape: tuple[int, ...], dtype: np.dtype,
        column_axis: int,
) -> jax.Array:
    """``scale`` times a Haar orthogonal (unitary) ``rows × cols`` matrix laid out as ``shape``."""
    compute = _compute_dtype(dtype)
    cols = shape[column_axis]
    others = shape[:column_axis] + shape[column_axis + 1:]
    rows = math.prod(others)
    tall = (max(rows, cols), min(rows, cols))
    q, r = jnp.linalg.qr(jax.random.normal(key, (math.prod(tall),), compute).reshape(tall))
    # QR leaves the phases of diag(R) to the algorithm; dividing them out makes Q Haar.
    diagonal = jnp.diagonal(r)
    q = q * (diagonal / jnp.abs(diagonal).astype(diagonal.dtype))[None, :]
    if rows < cols:
        q = q.T
    w = jnp.moveaxis(q.reshape(*others, cols), -1, column_axis)
    return (w * scale.astype(w.dtype)).astype(dtype)


def orthogonal(
        scale: float = 1.0, column_axis: int = -1, dtype: DTypeLike | None = None
) -> Initializer:
    """``scale`` times a uniformly (Haar) distributed matrix with orthonormal columns or rows.

    ``jax.nn.initializers.orthogonal``. The kernel is seen as a matrix with
    ``cols = shape[column_axis]`` columns and ``rows = prod(other sizes)`` rows. A
    ``max × min`` Gaussian matrix ``A = QR`` is factored, the columns of ``Q`` are multiplied
    by the phases (signs, for real ``A``) of ``diag(R)`` (without this the QR routine's
    convention biases ``Q``; with it ``Q`` is Haar, Mezzadri 2007), and ``Q`` is transposed
    when the kernel is wide. So ``WᵀW = scale² I`` when ``rows >= cols`` and
    ``WWᵀ = scale² I`` otherwise, and the mean square entry is ``scale² / max(rows, cols)``.

    Args:
        scale: the common norm of the orthogonal columns (or rows), > 0.
        column_axis: the kernel's axis whose slices are the columns.
        dtype: the dtype ``init`` returns when it is not given one (real or complex).

    Returns:
        ``init(key, shape, dtype=dtype, out_sharding=None) -> Array`` for shapes of rank
        >= 2; it raises ``ValueError`` naming the shape otherwise.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks.tricks import initializers
        >>> w = initializers.orthogonal(2.0)(jax.random.key(0), (3, 3, 16, 32))  # 144 × 32
        >>> m = w.reshape(-1, 32)
        >>> bool(jnp.allclose(m.T @ m, 4.0 * jnp.eye(32), atol=1e-4))
        True
    """
    scale = float(check_positive("scale", scale))
    try:
        column_axis = operator.index(column_axis)
    except TypeError:
        raise ValueError(f"column_axis must be an int, got {column_axis!r}") from None
    default_dtype = _check_factory_dtype(dtype, complex_ok=True)

    def init(
            key: jax.Array,
            shape: Sequence[int],
            dtype: DTypeLike | None = default_dtype,
            out_sharding: Any = None,
    ) -> jax.Array:
        dtype = _resolve_dtype(dtype, complex_ok=True)
        shape = _check_shape(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a shape of rank >= 2, got shape {shape}")
        (axis,) = _normalize_axes("column_axis", (column_axis,), shape)
        if 0 in shape:
            return _sharded(jnp.zeros(shape, dtype), out_sharding)
        drawn = _orthogonal(key, scale, shape=shape, dtype=dtype, column_axis=axis)
        return _sharded(drawn, out_sharding)

    return init


_BY_NAME: dict[str, Callable[..., Initializer]] = {
    "variance_scaling": variance_scaling,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "glorot_normal": glorot_normal,
    "glorot_normal_untruncated": glorot_normal_untruncated,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_normal_untruncated": he_normal_untruncated,
    "he_uniform": he_uniform,
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": kaiming_uniform,
    "gaussian": gaussian,
    "normal": normal,
    "unscaled_normal": unscaled_normal,
    "truncated_normal": truncated_normal,
    "uniform": uniform,
    "symmetric_uniform": symmetric_uniform,
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

    Examples:
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
