"""What every experiment shares: real data, the seeds loop, statistics, timing and output files.

An experiment module defines ``NAME``, ``CLAIM`` (the lesson point it measures), the configs
``FULL`` and ``QUICK`` (dicts, each with a ``"seeds"`` count), ``run(config, seeds, log)`` and
``plot(results, path)``. :func:`run_experiment` times ``run`` (wall clock and
``time.process_time``, the CPU time of every thread of the process), adds the machine and
writes ``results.json`` and ``figure.png`` into the output folder, each atomically (a reader
sees the old file or the new one, never a partial one).

``run`` returns ``{"runs": [...], "summary": {...}, "headline": [...]}`` and may add more.
Each run is one condition at one seed, ``{"condition": str, "seed": int, "curves":
{name: [one value per epoch]}, "final": {name: number}}``; :func:`summarize` groups them by
condition and gives, for each final number and each curve point over the S seeds,

    mean = (1/S) Σ_s v_s,      std = sqrt(Σ_s (v_s − mean)² / (S − 1))   (0 when S = 1),

the sample standard deviation. A non-finite value (a diverged run) makes the mean and std
non-finite; JSON stores non-finite numbers as ``null``.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import jax
import numpy as np

# The experiments draw their figures with these, as common.pyplot and common.save_figure.
from jaxtricks.cli.experiments.provenance import provenance
from jaxtricks.cli.plots import pyplot, save_figure  # noqa: F401
from jaxtricks.data.splits import Splits, load_splits
from jaxtricks.files import write_json
from jaxtricks.training.history import History

RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"
CURVE_KEYS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "val_loss",
    "val_accuracy",
    "train_grad_norm",
    "learning_rate",
    "skipped_steps",
    "epoch_time_s",
    "eval_time_s",
)

Log = Callable[[str], None]


# The experiments' data: real MNIST or Fashion-MNIST splits (see jaxtricks.data.splits).
Data = Splits
load_data = load_splits


def log_to_stderr(message: str) -> None:
    """Prints one progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def seed_list(count: int) -> list[int]:
    """The seeds ``0, 1, ..., count − 1``; ``count`` must be an integer >= 1."""
    integer = isinstance(count, int | np.integer) and not isinstance(count, bool)
    if not integer or not 1 <= count <= 10**6:
        raise ValueError(f"seeds must be an integer in [1, 1000000], got {count!r}")
    return list(range(count))


# The curve names of results.json, each from the history's metric of that name.
HISTORY_NAMES = {
    "train_loss": "loss",
    "train_accuracy": "accuracy",
    "train_grad_norm": "grad_norm",
    "test_loss": "test_loss",
    "test_accuracy": "test_accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
}


def history_curves(history: History, keys: Sequence[str] = CURVE_KEYS) -> dict[str, list]:
    """Per-epoch lists of the ``keys`` found in a :func:`~jaxtricks.training.fit` history:
    metrics under their results.json names (:data:`HISTORY_NAMES`), and the records'
    ``learning_rate``, ``skipped_steps``, ``epoch_time_s`` and ``eval_time_s``."""
    names = set(history.metric_names())
    curves = {}
    for key in keys:
        metric = HISTORY_NAMES.get(key)
        if metric is not None:
            if metric in names:
                curves[key] = history[metric]
        elif history.epochs and hasattr(history.epochs[0], key):
            curves[key] = [getattr(record, key) for record in history.epochs]
    return curves


def cumulative(values: Iterable[float]) -> list[float]:
    """Running sums ``[v_1, v_1 + v_2, ...]``, e.g. training time at the end of each epoch."""
    return [float(v) for v in np.cumsum(np.asarray(list(values), np.float64))]


def epochs_to_target(accuracies: Sequence[float], target: float) -> int | None:
    """The first epoch (1-based) whose accuracy is at least ``target``; None if none is."""
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy is not None and accuracy >= target:
            return epoch
    return None


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and count.

    ``None`` entries (e.g. "never reached") are left out and counted in ``missing``; with no
    values left every statistic is NaN.
    """
    present = [float(v) for v in values if v is not None]
    array = np.asarray(present, np.float64)
    if array.size == 0:
        nan = math.nan
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0,
                "missing": len(values)}
    with np.errstate(invalid="ignore"):  # a non-finite value gives a NaN std, as documented
        std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {
        "mean": float(array.mean()),
        "std": std,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
        "missing": len(values) - len(present),
    }


def curve_mean_std(curves: Sequence[Sequence[float | None]]) -> dict[str, list[float]]:
    """Point-by-point mean and sample std of curves, over their common length.

    Curves of different lengths (e.g. runs stopped early) are cut to the shortest; ``None``
    points count as NaN.
    """
    length = min(len(c) for c in curves) if curves else 0
    array = np.asarray(
        [[math.nan if v is None else float(v) for v in c[:length]] for c in curves], np.float64
    ).reshape(len(curves), length)
    with np.errstate(invalid="ignore"):
        std = array.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(length)
    return {"mean": array.mean(axis=0).tolist(), "std": std.tolist()}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per condition, in first-seen order: seeds, ``mean_std`` of each final number and
    ``curve_mean_std`` of each numeric curve."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["condition"], []).append(run)
    summary = {}
    for condition, members in groups.items():
        finals = {
            key: mean_std([m["final"].get(key) for m in members])
            for key in members[0]["final"]
            if _is_number(members[0]["final"][key]) or members[0]["final"][key] is None
        }
        curves = {
            key: curve_mean_std([m["curves"][key] for m in members])
            for key, values in members[0]["curves"].items()
            if all(_is_number(v) or v is None for v in values)
        }
        summary[condition] = {
            "seeds": [m["seed"] for m in members],
            "final": finals,
            "curves": curves,
        }
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def pm(stats: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± std"`` of a :func:`mean_std` result, times ``scale`` (e.g. 100 for %)."""
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def machine() -> dict[str, Any]:
    """The machine and versions the experiment ran on."""
    import flax
    import optax

    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
    }


def plot_curves(
        ax: Any,
        summary: dict[str, Any],
        key: str,
        *,
        conditions: Sequence[str] | None = None,
        scale: float = 1.0,
        x: str | None = None,
) -> None:
    """Draws the mean curve of ``key`` per condition with a ±1 std band (epochs on x, or the
    mean of curve ``x``). A condition whose final ``diverged`` count is positive says so in
    its legend entry: its mean is non-finite wherever one seed's is, and is not drawn there."""
    for condition in conditions or list(summary):
        curves = summary[condition]["curves"]
        if key not in curves:
            continue
        mean = np.asarray(curves[key]["mean"], np.float64) * scale
        std = np.asarray(curves[key]["std"], np.float64) * scale
        xs = np.asarray(curves[x]["mean"]) if x else np.arange(1, mean.size + 1)
        label = condition
        diverged = summary[condition].get("final", {}).get("diverged")
        if diverged and diverged["n"] and diverged["mean"] > 0:
            label += f" (diverged {round(diverged['mean'] * diverged['n'])}/{diverged['n']})"
        (line,) = ax.plot(xs, mean, "-o", markersize=3, label=label)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if x is None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def run_experiment(
        module: ModuleType,
        *,
        quick: bool = False,
        seeds: int | None = None,
        out_dir: str | os.PathLike,
        log: Log = log_to_stderr,
        command: str | None = None,
) -> dict[str, Any]:
    """Runs one experiment module and writes ``results.json`` and ``figure.png`` to ``out_dir``.

    Args:
        module: an experiment module (see the module docstring).
        quick: use ``module.QUICK`` instead of ``module.FULL``.
        seeds: number of seeds, overriding the config's; None keeps it.
        out_dir: the output folder, created if missing.
        log: receives one line per run and a final line.
        command: the command line to record; None records none.

    Returns:
        The results dict written to ``results.json`` (non-finite numbers still as floats).
    """
    config = dict(module.QUICK if quick else module.FULL)
    if seeds is not None:
        config["seeds"] = seeds
    seed_values = seed_list(config["seeds"])
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = module.run(config, seed_values, log)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results = {
        "experiment": module.NAME,
        "claim": module.CLAIM,
        "mode": "quick" if quick else "full",
        "command": command,
        "config": config,
        "seeds": seed_values,
        **outcome,
        "wall_time_s": wall,
        "cpu_time_s": cpu,
        "machine": machine(),
        "provenance": provenance(module.__name__),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(os.path.join(out_dir, RESULTS_FILE), results)
    module.plot(results, os.path.join(out_dir, FIGURE_FILE))
    log(f"{module.NAME}: {wall:.1f} s wall, {cpu:.1f} s CPU -> {out_dir}")
    for line in results.get("headline", []):
        log(f"  {line}")
    return results


def fit_run(
        model: Any,
        optimizer: Any,
        data: Data,
        *,
        condition: str,
        seed: int,
        epochs: int,
        batch_size: int,
        log: Log,
        target_accuracy: float | None = None,
        return_state: bool = False,
        callbacks: Sequence[Any] = (),
        test_each_epoch: bool = True,
        **fit_kwargs: Any,
) -> Any:
    """One condition at one seed through :func:`~jaxtricks.training.fit` on ``data``.

    The validation split (when ``data`` has one) is ``fit``'s validation data, what its
    choices watch; with ``test_each_epoch`` the test split is evaluated after every epoch and
    only reported (else the caller scores the final model on it).

    Returns:
        ``{"condition", "seed", "curves", "final", "history_header"}``: the per-epoch
        curves of :data:`CURVE_KEYS` plus ``train_time_s`` (cumulative training time at each
        epoch's end, evaluation and compilation excluded); the final numbers are the last
        epoch's test and train accuracy and loss, skipped steps, compile and total training
        time, and with ``target_accuracy`` the epochs it took the test accuracy to reach it
        (:func:`epochs_to_target`). With ``return_state``, ``(run, state)``.
    """
    from jaxtricks.training import EvaluationHook, fit

    state, history = fit(
        model,
        optimizer,
        data.train_x,
        data.train_y,
        validation_data=(data.val_x, data.val_y) if data.val_x.shape[0] else None,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=False,
        callbacks=[*([EvaluationHook("test", data.test_x, data.test_y)] * test_each_epoch),
                   *callbacks],
        **fit_kwargs,
    )
    curves = history_curves(history)
    curves["train_time_s"] = cumulative(curves["epoch_time_s"])
    last = history.epochs[-1]
    final = {
        "test_accuracy": last.metrics.get("test_accuracy", math.nan),
        "test_loss": last.metrics.get("test_loss", math.nan),
        "train_accuracy": last["accuracy"],
        "train_loss": last["loss"],
        "skipped_steps": int(sum(curves["skipped_steps"])),
        "compile_time_s": history.header["compile_time_s"],
        "train_time_s": curves["train_time_s"][-1],
    }
    if target_accuracy is not None:
        final["epochs_to_target"] = epochs_to_target(curves["test_accuracy"], target_accuracy)
    if test_each_epoch:
        log(
            f"  {condition} seed {seed}: test accuracy {final['test_accuracy']:.4f}, "
            f"test loss {final['test_loss']:.4g}, {final['train_time_s']:.1f} s training"
        )
    result = {
        "condition": condition,
        "seed": seed,
        "curves": curves,
        "final": final,
        "history_header": {
            k: history.header[k] for k in ("train_examples", "validation_examples",
                                           "steps_per_epoch", "batch_size", "epochs")
        },
    }
    if "early_stopping" in history.header:
        result["early_stopping"] = history.header["early_stopping"]
    return (result, state) if return_state else result


def evaluate_state(model: Any, state: Any, images: Any, labels: Any) -> dict[str, float]:
    """Loss and accuracy of ``state`` on a whole split, in evaluation mode (no dropout)."""
    from jaxtricks.training import evaluate, make_eval_step

    return evaluate(make_eval_step(model), state, images, labels, batch_size=500)
