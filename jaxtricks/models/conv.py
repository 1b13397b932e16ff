"""A convolution of one-channel images as shifted multiply-adds, with XLA's gradient.

The first layer of a CNN on grey images convolves one input channel into C. For a kernel
``w`` of shape ``(kh, kw, 1, C)``, stride 1 and no dilation, its output is

    y[n, i, j, c] = Σ_{a < kh, b < kw} x̃[n, i + a, j + b] · w[a, b, 0, c],

with ``x̃`` the input padded as the convolution pads it: kh·kw shifted copies of the image,
each scaled by one row of the kernel and summed, element-wise work that XLA fuses into one
loop. On XLA:CPU that loop computes the forward pass several times faster than XLA's
convolution kernel, which is built for many input channels. The gradients are XLA's
convolution gradients, unchanged: :func:`one_channel_conv` carries them in a
``jax.custom_vjp``. The output equals the convolution's up to float rounding (the sum runs in
another order).

:func:`conv_general_dilated_by_shifts` has the signature of ``jax.lax.conv_general_dilated``,
takes this path for the calls it fits and hands every other call to
``lax.conv_general_dilated``, so it can be given to
``flax.linen.Conv(conv_general_dilated=...)``. jaxtricks' models take it in training where the
backend's speed paths say so (:func:`jaxtricks.backend.speed_paths`). Not in evaluation: there
XLA:CPU's YNNPACK fusion (the ``dot`` type that :func:`jaxtricks.backend.configure_xla_cpu`
keeps) takes the sum's additions into a fusion of the layers after it and writes every scaled
copy to memory first, and evaluation ran slower than with XLA's convolution.
docs/benchmarks.md has the timings and the commands that measure them.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated_by_shifts", "one_channel_conv"]

# Flax's dimension numbers for 2-D inputs: NHWC images, HWIO kernels, NHWC outputs.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _xla_conv(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


def _shifted_sums(x: jax.Array, kernel: jax.Array,
                  padding: tuple[tuple[int, int], ...]) -> jax.Array:
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    terms = [padded[:, a:a + height, b:b + width, :] * kernel[a:a + 1, b:b + 1]
             for a in range(kh) for b in range(kw)]
    return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _one_channel_conv(x, kernel, padding):
    return _shifted_sums(x, kernel, padding)


def _forward(x, kernel, padding):
    return _shifted_sums(x, kernel, padding), (x, kernel)


def _backward(padding, residuals, cotangent):
    x, kernel = residuals
    return jax.vjp(lambda x, k: _xla_conv(x, k, padding), x, kernel)[1](cotangent)


_one_channel_conv.defvjp(_forward, _backward)


def _explicit_padding(padding: Any, kernel_shape: Sequence[int],
                      input_shape: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """``padding`` as ((top, bottom), (left, right)) for stride 1, or None if it is not one of
    ``"SAME"``, ``"VALID"`` or two non-negative (low, high) pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None
        pads = lax.padtype_to_pads(tuple(input_shape), tuple(kernel_shape), (1, 1),
                                   padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    try:
        pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        return None
    if len(pairs) != 2 or min(min(pair) for pair in pairs) < 0:
        return None
    return pairs


def one_channel_conv(x: jax.Array, kernel: jax.Array, padding: Any = "SAME") -> jax.Array:
    """The stride-1 convolution of one-channel NHWC images, as shifted multiply-adds.

    ``y[n, i, j, c] = Σ_{a, b} x̃[n, i + a, j + b] · kernel[a, b, 0, c]`` with ``x̃`` the padded
    input; its gradients are those of ``jax.lax.conv_general_dilated``.

    Args:
        x: float32 images of shape ``(N, H, W, 1)``.
        kernel: a float32 kernel of shape ``(kh, kw, 1, C)`` (HWIO, as ``flax.linen.Conv``).
        padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``, as in
            ``jax.lax.conv_general_dilated``.

    Returns:
        The output of shape ``(N, H', W', C)``: the convolution's, up to float rounding.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
        >>> kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
        >>> y = one_channel_conv(x, kernel)
        >>> reference = jax.lax.conv_general_dilated(
        ...     x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        >>> y.shape, bool(jnp.allclose(y, reference, atol=1e-5))
        ((2, 5, 5, 4), True)
    """
    if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != 1:
        raise ValueError(f"x must have shape (N, H, W, 1), got {jnp.shape(x)}")
    if jnp.ndim(kernel) != 4 or jnp.shape(kernel)[2] != 1:
        raise ValueError(f"kernel must have shape (kh, kw, 1, C), got {jnp.shape(kernel)}")
    for name, value in (("x", x), ("kernel", kernel)):
        if jnp.result_type(value) != jnp.float32:
            raise ValueError(f"{name} must be float32, got {jnp.result_type(value)}")
    pads = _explicit_padding(padding, kernel.shape[:2], x.shape[1:3])
    if pads is None:
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or two (low, high) pairs, got {padding!r}"
        )
    return _one_channel_conv(x, kernel, pads)


def conv_general_dilated_by_shifts(
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: Any,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        batch_group_count: int = 1,
        precision: Any = None,
        preferred_element_type: Any = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated``, by :func:`one_channel_conv` where that fits.

    It fits a float32 NHWC input with one channel and an HWIO kernel (Flax's layout), stride 1,
    no dilation, no feature or batch groups, padding ``"SAME"``, ``"VALID"`` or explicit, and
    no ``preferred_element_type``. Every other call is ``jax.lax.conv_general_dilated``'s.
    ``precision`` does not apply to the multiply-adds, which run in float32.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> layer = nn.Conv(8, (3, 3), conv_general_dilated=conv_general_dilated_by_shifts)
        >>> x = jnp.ones((2, 28, 28, 1))
        >>> variables = layer.init(jax.random.key(0), x)
        >>> layer.apply(variables, x).shape
        (2, 28, 28, 8)
    """
    ones = (1,) * (jnp.ndim(lhs) - 2)
    fits = (
        jnp.ndim(lhs) == 4
        and jnp.ndim(rhs) == 4
        and lhs.shape[-1] == 1
        and rhs.shape[2] == 1
        and jnp.result_type(lhs) == jnp.float32
        and jnp.result_type(rhs) == jnp.float32
        and tuple(window_strides) == ones
        and (lhs_dilation is None or tuple(lhs_dilation) == ones)
        and (rhs_dilation is None or tuple(rhs_dilation) == ones)
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
    )
    pads = _explicit_padding(padding, rhs.shape[:2], lhs.shape[1:3]) if fits else None
    if pads is not None:
        return _one_channel_conv(lhs, rhs, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type,
    )


def _is_nhwc(dimension_numbers: Any, lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> bool:
    if dimension_numbers is None:
        return False
    try:
        numbers = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape),
                                             dimension_numbers)
    except (TypeError, ValueError):
        return False
    return numbers == _NHWC
