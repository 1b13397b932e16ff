"""Validation of hyperparameters when a transform, schedule or initializer is built.

A hyperparameter may be a Python number, a concrete scalar array of any real dtype (bfloat16
included), a schedule ``count -> value`` or, under ``optax.inject_hyperparams`` inside ``jit``,
a tracer. Numbers and concrete arrays are checked at once; schedules and tracers cannot be
checked before they run and pass through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_schedule(value: Any) -> bool:
    """True for a callable hyperparameter ``count -> value``."""
    return callable(value)


def resolve(value: Any, count: jax.Array) -> Any:
    """The hyperparameter's value at step ``count``: calls a schedule, returns a constant.

    A schedule's value must be a scalar: an array would broadcast against the updates and
    scale each coordinate differently without any error. Shapes are static, so under ``jit``
    the check runs once, at trace time.
    """
    if not callable(value):
        return value
    result = value(count)
    if np.shape(result) != ():
        raise ValueError(
            f"a hyperparameter schedule must return a scalar, got shape {np.shape(result)} "
            f"from {value!r}"
        )
    return result


def _concrete(value: Any) -> float | None:
    """The value as a Python float, or None when it cannot be known at build time."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got the bool {value!r}")
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"expected a scalar, got an array of shape {array.shape}")
    # jnp.issubdtype knows JAX's extra floats (bfloat16, float8), which NumPy calls void.
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise TypeError(f"expected a real number, got dtype {array.dtype}")
    return float(array)


def check_range(
        name: str,
        value: Any,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
) -> Any:
    """Raises ``ValueError`` unless ``value`` lies in the interval; returns ``value``.

    ``low``/``high`` of None mean unbounded; ``*_open`` excludes the end point.
    NaN is always refused. Schedules and traced values are returned unchecked.
    """
    try:
        number = _concrete(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {err}") from None
    if number is None:
        return value
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    ok = not math.isnan(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_int(
        name: str, value: Any, low: int, high: int | None = None, *, why: str = ""
) -> int:
    """``value`` as a Python int; ``ValueError`` naming it unless an integer in [low, high].

    Integers only: a bool, a float (even ``3.0``) or an array is refused. ``why`` is added to
    the message after the bounds, e.g. ``" (steps per epoch)"``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bounds}{why}, got {value!r}")
    return int(value)


def check_count(name: str, value: Any, low: int) -> Any:
    """An integer ``>= low``: a Python int or an integer scalar array; returns ``value``.

    Unlike :func:`check_int`, arrays are accepted (``optax.inject_hyperparams`` passes every
    numeric argument as one) and tracers pass unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, bool) or not jnp.issubdtype(np.asarray(value).dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if np.shape(value) != () or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> Any:
    """``value > 0`` (finite)."""
    return check_range(name, value, 0.0, math.inf, low_open=True, high_open=True)


def check_nonnegative(name: str, value: Any) -> Any:
    """``value >= 0`` (finite)."""
    return check_range(name, value, 0.0, math.inf, high_open=True)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_callable(name: str, value: Any) -> Callable[..., Any]:
    """Raises ``TypeError`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__} {value!r}")
    return value
