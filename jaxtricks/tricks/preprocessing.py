"""Keeping inputs in a reasonable range (lesson L1).

Floating point cannot add numbers of very different magnitudes exactly (in float32,
1e-10 + 1e10 == 1e10), and most activations bend around [-1, 1], so inputs are brought into a
small range before training:

    scale_to_unit      x / max_value                            uint8 pixels 0..255 -> [0, 1]
    min-max            a + (x − min) / (max − min) · (b − a)    train's [min, max] -> [a, b]
    standardization    (x − μ) / σ                              train -> mean 0, std 1

The statistics (min, max, μ, σ) are fitted on the training split only and then applied,
unchanged, to every split. A validation or test set is moved by the same map, so its values
may fall outside [a, b] and its mean need not be exactly 0: that is correct, since fitting on
the test split would leak it into training. Statistics are global (one number, the usual
choice for MNIST) or per feature (one per pixel, reduced over the leading sample axis).
Constant data never divides by zero: a zero range counts as 1 and σ is floored at ``eps``.

Every function takes JAX or NumPy arrays and returns the same family (NumPy in, NumPy out,
so a host-side data pipeline stays on the host) and traces under ``jit``. Results are float32,
or float64 when the input is float64 and ``jax_enable_x64`` is on.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxtricks.tricks.checks import check_positive


class MinMaxStats(NamedTuple):
    """Training-split range and target range for :func:`apply_min_max`."""

    data_min: Any  # shape=() or the feature shape, float32 (float64 under x64)
    data_max: Any  # same shape and dtype as data_min
    low: Any  # shape=(), same dtype: where data_min is sent
    high: Any  # shape=(), same dtype: where data_max is sent


class StandardStats(NamedTuple):
    """Training-split mean and standard deviation for :func:`standardize`."""

    mean: Any  # shape=() or the feature shape, float32 (float64 under x64)
    std: Any  # same shape and dtype as mean, already floored at eps


def _float(x: ArrayLike) -> tuple[ModuleType, Any]:
    """The array namespace of ``x`` (numpy or jax.numpy) and ``x`` as a float array."""
    xp = np if isinstance(x, np.ndarray | np.generic) else jnp
    array = xp.asarray(x)
    # canonicalize_dtype maps float64 to float32 unless x64 is on.
    dtype = jax.dtypes.canonicalize_dtype(
        np.float64 if array.dtype == np.float64 else np.float32
    )
    return xp, array.astype(dtype)


def _check_train(train: Any, per_feature: bool) -> None:
    if train.size == 0:
        raise ValueError(f"train must hold at least one value, got shape {train.shape}")
    if per_feature and train.ndim == 0:
        raise ValueError("per_feature needs train with a leading sample axis, got a scalar")


def _aligned(xp: ModuleType, stat: Any, x: Any) -> Any:
    """``stat`` in ``x``'s dtype, with leading unit axes so it broadcasts without rank promotion.

    Raises ``ValueError`` unless ``x``'s shape ends with ``stat``'s feature shape.
    """
    stat = xp.asarray(stat, dtype=x.dtype)
    if stat.ndim > x.ndim or x.shape[x.ndim - stat.ndim :] != stat.shape:
        raise ValueError(
            f"x of shape {x.shape} does not end with the statistics' feature shape {stat.shape}"
        )
    return stat.reshape((1,) * (x.ndim - stat.ndim) + stat.shape)


def scale_to_unit(x: ArrayLike, *, max_value: float = 255.0) -> Any:
    """Divides by the largest possible value: 8-bit pixels 0..255 become floats in [0, 1].

    Math: ``x / max_value``. Values above ``max_value`` land above 1.

    Args:
      x: an array, e.g. uint8 images.
      max_value: the largest value ``x`` can hold, > 0.

    Returns:
      ``x / max_value`` as float32 (float64 for float64 input under x64), NumPy for NumPy
      input and JAX otherwise.

    Examples:
      >>> import numpy as np
      >>> print(scale_to_unit(np.array([0, 51, 255], dtype=np.uint8)))
      [0.  0.2 1. ]
    """
    check_positive("max_value", max_value)
    xp, array = _float(x)
    return array / xp.asarray(max_value, dtype=array.dtype)


def fit_min_max(
        train: ArrayLike,
        *,
        feature_range: tuple[float, float] = (0.0, 1.0),
        per_feature: bool = False,
) -> MinMaxStats:
    """Fits min-max scaling on the training split: its minimum and maximum.

    Math: ``data_min = min(train)``, ``data_max = max(train)``, over all values or, with
    ``per_feature``, over the leading sample axis.

    Args:
      train: the training split, samples along the leading axis; not empty.
      feature_range: ``(low, high)`` with ``low < high``, where the training minimum and
        maximum are sent.
      per_feature: one minimum and maximum per feature (e.g. per pixel) instead of one each.

    Returns:
      A :class:`MinMaxStats` for :func:`apply_min_max`.

    Examples:
      >>> import numpy as np
      >>> stats = fit_min_max(np.array([[0.0, 10.0], [5.0, 20.0]]), feature_range=(-1.0, 1.0))
      >>> float(stats.data_min), float(stats.data_max)
      (0.0, 20.0)
    """
    try:
        low, high = (float(end) for end in feature_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"feature_range must be a pair of numbers (low, high), got {feature_range!r}"
        ) from None
    if not low < high:
        raise ValueError(f"feature_range must have low < high, got {feature_range!r}")
    xp, data = _float(train)
    _check_train(data, per_feature)
    axis = 0 if per_feature else None
    return MinMaxStats(
        data_min=xp.asarray(xp.min(data, axis=axis)),
        data_max=xp.asarray(xp.max(data, axis=axis)),
        low=xp.asarray(low, dtype=data.dtype),
        high=xp.asarray(high, dtype=data.dtype),
    )


def apply_min_max(x: ArrayLike, stats: MinMaxStats) -> Any:
    """Applies fitted min-max scaling to any split.

    Math: ``low + (x − data_min) / (data_max − data_min) · (high − low)``, a zero range
    counting as 1 so that constant features go to ``low``. Values outside the training
    range land outside ``[low, high]``.

    Args:
      x: an array whose shape ends with the statistics' feature shape.
      stats: from :func:`fit_min_max` on the training split.

    Returns:
      The scaled array, float32 (float64 for float64 input under x64), NumPy for NumPy input
      and JAX otherwise.

    Examples:
      >>> import numpy as np
      >>> stats = fit_min_max(np.array([0.0, 10.0]))
      >>> apply_min_max(np.array([5.0, 20.0]), stats).tolist()
      [0.5, 2.0]
    """
    xp, array = _float(x)
    data_min = _aligned(xp, stats.data_min, array)
    span = _aligned(xp, stats.data_max, array) - data_min
    span = xp.where(span > 0, span, xp.ones_like(span))
    low = xp.asarray(stats.low, dtype=array.dtype)
    high = xp.asarray(stats.high, dtype=array.dtype)
    return low + (array - data_min) / span * (high - low)


def fit_standardization(
        train: ArrayLike, *, per_feature: bool = False, eps: float = 1e-8
) -> StandardStats:
    """Fits standardization on the training split: its mean and standard deviation.

    Math: ``mean = E[train]``, ``std = max(sqrt(E[(train − mean)²]), eps)``, over all values
    (one scalar each) or, with ``per_feature``, over the leading sample axis (one per feature).

    Args:
      train: the training split, samples along the leading axis; not empty.
      per_feature: one mean and std per feature (e.g. per pixel) instead of one each.
      eps: floor for the standard deviation, > 0, so constant features do not divide by zero.

    Returns:
      A :class:`StandardStats` for :func:`standardize`.

    Examples:
      >>> import numpy as np
      >>> stats = fit_standardization(np.array([1.0, 3.0]))
      >>> float(stats.mean), float(stats.std)
      (2.0, 1.0)
    """
    check_positive("eps", eps)
    xp, data = _float(train)
    _check_train(data, per_feature)
    axis = 0 if per_feature else None
    std = xp.std(data, axis=axis)
    return StandardStats(
        mean=xp.asarray(xp.mean(data, axis=axis)),
        std=xp.asarray(xp.maximum(std, xp.asarray(eps, dtype=data.dtype))),
    )


def standardize(x: ArrayLike, stats: StandardStats) -> Any:
    """Applies fitted standardization to any split.

    Math: ``(x − mean) / std`` with the training split's statistics.

    Args:
      x: an array whose shape ends with the statistics' feature shape.
      stats: from :func:`fit_standardization` on the training split.

    Returns:
      The standardized array, float32 (float64 for float64 input under x64), NumPy for NumPy
      input and JAX otherwise.

    Examples:
      >>> import numpy as np
      >>> stats = fit_standardization(np.array([1.0, 3.0]))
      >>> standardize(np.array([1.0, 3.0, 7.0]), stats).tolist()
      [-1.0, 1.0, 5.0]
    """
    xp, array = _float(x)
    return (array - _aligned(xp, stats.mean, array)) / _aligned(xp, stats.std, array)
