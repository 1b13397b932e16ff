"""Per-layer gradient norms over training as a PNG (matplotlib, an optional dependency).

The input is what :func:`jaxtricks.tricks.diagnostics.get_health` reads from an optimizer state
that holds :func:`~jaxtricks.tricks.diagnostics.gradient_health`: one ``{module: ‖g_m‖}`` per
recorded step, e.g. collected after every epoch. Each module gets a line on a logarithmic axis,
where a gradient that vanishes or explodes geometrically with depth shows as evenly spaced lines,
and the flagging thresholds, when given, as dashed horizontal lines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtricks.cli.plots import pyplot, save_figure

__all__ = ["gradient_norm_series", "plot_gradient_norms"]


def gradient_norm_series(
        records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
) -> dict[str, np.ndarray]:
    """``{module: norms over time}`` from per-step records or from series.

    Args:
      records: either a sequence of ``{module: norm}`` (one per recorded step, every one with
        the same modules) or a mapping ``{module: sequence of norms}`` of equal lengths.

    Returns:
      ``{module: float64 array (T,)}`` in the modules' first order.

    Examples:
      >>> records = [{"Dense_0": 1.0, "head": 2.0}, {"Dense_0": 0.5, "head": 1.0}]
      >>> series = gradient_norm_series(records)
      >>> {name: values.tolist() for name, values in series.items()}
      {'Dense_0': [1.0, 0.5], 'head': [2.0, 1.0]}
    """
    if isinstance(records, Mapping):
        series = {str(name): np.asarray(values, np.float64) for name, values in records.items()}
        lengths = {values.shape for values in series.values()}
        if not series or len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError(
                "records as a mapping must hold one 1-D sequence of norms per module, all of one "
                f"length, got shapes { {name: v.shape for name, v in series.items()} }"
            )
        return series
    records = list(records)
    if not records or not all(isinstance(record, Mapping) and record for record in records):
        raise ValueError(
            "records must be a non-empty sequence of {module: norm} mappings, or a mapping "
            "{module: norms}"
        )
    modules = list(records[0])
    for index, record in enumerate(records):
        if set(record) != set(modules):
            raise ValueError(
                f"records[{index}] has the modules {sorted(record)}, but records[0] has "
                f"{sorted(modules)}"
            )
    return {
        str(name): np.array([float(record[name]) for record in records], np.float64)
        for name in modules
    }


def plot_gradient_norms(
        records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
        path: str | os.PathLike,
        *,
        steps: Sequence[float] | None = None,
        vanish_threshold: float | None = None,
        explode_threshold: float | None = None,
        title: str = "gradient norm per layer",
        xlabel: str = "step",
) -> str:
    """Draws each module's gradient norm ``‖g_m‖`` against the step, log scale, into ``path``.

    Args:
      records: per-step ``{module: norm}`` mappings or ``{module: norms}``; see
        :func:`gradient_norm_series`.
      path: the PNG file to write (atomically: a reader never sees a partial file).
      steps: the x value of each record, e.g. the step or epoch numbers; 1, 2, ... by default.
      vanish_threshold: drawn as a dashed line when given, e.g. the one of ``gradient_health``.
      explode_threshold: likewise.
      title: the plot's title.
      xlabel: the x axis' label.

    Returns:
      ``str(path)``.

    Examples:
      >>> import os, tempfile
      >>> records = [{"Dense_0": 1e-3, "head": 1.0}, {"Dense_0": 1e-4, "head": 0.5}]
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     path = plot_gradient_norms(records, os.path.join(tmp, "norms.png"), steps=[1, 2])
      ...     os.path.getsize(path) > 0
      True
    """
    series = gradient_norm_series(records)
    length = len(next(iter(series.values())))
    x = np.arange(1, length + 1) if steps is None else np.asarray(steps, np.float64)
    if x.shape != (length,):
        raise ValueError(f"steps must hold {length} values, one per record, got {x.shape}")
    for name, value in (
        ("vanish_threshold", vanish_threshold),
        ("explode_threshold", explode_threshold),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be None or a positive finite number, got {value!r}")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in series.items():
        # Zero or non-finite norms have no place on a log axis; matplotlib leaves gaps for NaN.
        ax.plot(x, np.where(values > 0, values, np.nan), "-o", markersize=3, label=name)
    thresholds = ((vanish_threshold, "vanishing below"), (explode_threshold, "exploding above"))
    for value, label in thresholds:
        if value is not None:
            ax.axhline(value, color="gray", linestyle="--", linewidth=1, label=f"{label} {value:g}")
    ax.set(xlabel=xlabel, ylabel="‖g‖ of the layer's parameters", title=title, yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", ncol=1 + len(series) // 12, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
