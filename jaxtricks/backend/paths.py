"""The speed paths jaxtricks takes on each backend, chosen here and nowhere else.

A speed path computes what the plain path computes, faster on one backend: the same model,
loss and update, up to float rounding. Five exist, each measured on XLA:CPU
(docs/benchmarks.md says how much each gives and with which command):

- ``batch_norm_custom_gradient``: :class:`jaxtricks.models.BatchNorm` trains with its
  hand-written gradient and per-channel sums instead of Flax's autodiff of the same formula.
- ``runner``: ``"auto"`` times a Python loop of compiled steps against a compiled
  ``lax.fori_loop`` and keeps the faster (on XLA:CPU a convolution's gradient inside a compiled
  loop is far slower); ``"loop"`` and ``"scan"`` take one of them without timing.
- ``donate_state``: whether a training step donates the state it is given, so its buffers are
  reused for the result. On the CPU the step that keeps them ran faster.
- ``finite_check_by_sums``: the strict non-finite guard of a training step
  (``skip_nonfinite="strict"``, or the default one on a state of smaller range than float32) first
  tests each large floating leaf of the new state through its row sums, a matrix-vector product (a
  NaN or an infinity makes its row's sum non-finite), and runs the exact element-wise test only when
  that fails, in a ``lax.cond``. The verdict is the exact test's either way. On XLA:CPU the product
  reads a leaf about three times faster than the reduction ``all(isfinite(x))``; on a GPU a
  conditional may copy its predicate to the host, a sync per step, so the plain path runs the exact
  test every step. Under ``vmap`` (an ensemble's members) a conditional runs both branches, so
  ensembles take the exact test alone.

Where a path was not measured (GPU, TPU) the plain one is the default: Flax's batch norm, the
Python loop and donation, as in Flax's own examples. :func:`use_speed_paths` replaces the
choice for a block of code, e.g. to compare both paths on one backend.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import jax

__all__ = ["PLAIN", "RUNNERS", "SpeedPaths", "speed_paths", "use_speed_paths"]

RUNNERS = ("auto", "loop", "scan")


class SpeedPaths(NamedTuple):
    """Which speed paths to take; see the module docstring."""

    batch_norm_custom_gradient: bool
    runner: str  # "auto", "loop" or "scan"
    donate_state: bool
    finite_check_by_sums: bool
    one_channel_conv_by_shifts: bool


PLAIN = SpeedPaths(batch_norm_custom_gradient=False, runner="loop", donate_state=True,
                   finite_check_by_sums=False, one_channel_conv_by_shifts=False)
_MEASURED = {
    "cpu": SpeedPaths(batch_norm_custom_gradient=True, runner="auto", donate_state=False,
                      finite_check_by_sums=True, one_channel_conv_by_shifts=True),
}
_OVERRIDE: contextvars.ContextVar[SpeedPaths | None] = contextvars.ContextVar(
    "jaxtricks_speed_paths", default=None
)


def speed_paths(platform: str | None = None) -> SpeedPaths:
    """The speed paths for ``platform``: measured ones on the CPU, :data:`PLAIN` elsewhere.

    Inside :func:`use_speed_paths` it returns the paths given there, whatever the platform.

    Args:
        platform: ``"cpu"``, ``"gpu"``, ``"tpu"``, ...; None means ``jax.default_backend()``.

    Returns:
        A :class:`SpeedPaths`.

    Examples:
        >>> speed_paths("gpu") == PLAIN
        True
        >>> speed_paths("cpu").runner
        'auto'
    """
    override = _OVERRIDE.get()
    if override is not None:
        return override
    if platform is None:
        platform = jax.default_backend()
    if not isinstance(platform, str):
        raise ValueError(f"platform must be a string or None, got {platform!r}")
    return _MEASURED.get(platform, PLAIN)


@contextlib.contextmanager
def use_speed_paths(paths: SpeedPaths) -> Iterator[SpeedPaths]:
    """Takes ``paths`` instead of the backend's choice inside the ``with`` block.

    A training or evaluation step built inside the block keeps the block's paths, wherever it
    is called: it enters them again while it is traced, when the models read the batch-norm and
    convolution paths. A model applied outside a step reads the paths in force when it is
    traced.

    Args:
        paths: a :class:`SpeedPaths`, e.g. :data:`PLAIN`.

    Examples:
        >>> with use_speed_paths(PLAIN):
        ...     speed_paths("cpu").runner
        'loop'
    """
    if not isinstance(paths, SpeedPaths):
        raise ValueError(f"paths must be a SpeedPaths, got {paths!r}")
    if paths.runner not in RUNNERS:
        raise ValueError(f"paths.runner must be one of {RUNNERS}, got {paths.runner!r}")
    for name in ("batch_norm_custom_gradient", "donate_state", "finite_check_by_sums",
                 "one_channel_conv_by_shifts"):
        if not isinstance(getattr(paths, name), bool):
            raise ValueError(f"paths.{name} must be a bool, got {getattr(paths, name)!r}")
    token = _OVERRIDE.set(paths)
    try:
        yield paths
    finally:
        _OVERRIDE.reset(token)
