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

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxtricks.data import load
from jaxtricks.tricks import preprocessing

RESULTS_FILE = "results.json"
FIGURE_FILE = "figure.png"
DATASETS = ("mnist", "fashion_mnist")
SCALINGS = ("raw", "unit", "standardize")
CURVE_KEYS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "train_grad_norm",
    "learning_rate",
    "skipped_steps",
    "epoch_time_s",
    "eval_time_s",
)

Log = Callable[[str], None]


class Data(NamedTuple):
    """Float32 images ``(N, 28, 28, 1)`` and int32 labels; validation may be empty."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def log_to_stderr(message: str) -> None:
    """Prints one progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def load_data(
        dataset: str = "mnist",
        *,
        train_examples: int | None = None,
        test_examples: int | None = None,
        validation_examples: int = 0,
        scaling: str = "standardize",
) -> Data:
    """Real MNIST or Fashion-MNIST subsets, scaled as the lesson's L1 discusses.

    Training images are the first ``train_examples`` of the training split, validation images
    its last ``validation_examples`` (disjoint from them), test images the first
    ``test_examples`` of the test split. ``scaling``: ``"raw"`` keeps 0–255, ``"unit"`` divides
    by 255, ``"standardize"`` maps ``x → (x/255 − μ)/σ`` with the mean and standard deviation
    of the training subset's pixels.

    Args:
        dataset: ``"mnist"`` or ``"fashion_mnist"``.
        train_examples: training images, in [1, 60000 − validation_examples]; None: all left.
        test_examples: test images, in [1, 10000]; None: all.
        validation_examples: held-out training images, in [0, 59999].
        scaling: ``"raw"``, ``"unit"`` or ``"standardize"``.

    Returns:
        A :class:`Data`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    raw = load(dataset)
    total, total_test = raw.train_images.shape[0], raw.test_images.shape[0]
    validation_examples = _check_count("validation_examples", validation_examples, 0, total - 1)
    available = total - validation_examples
    train_examples = available if train_examples is None else train_examples
    train_examples = _check_count("train_examples", train_examples, 1, available)
    test_examples = total_test if test_examples is None else test_examples
    test_examples = _check_count("test_examples", test_examples, 1, total_test)

    images = raw.train_images[..., None]
    splits = [
        images[:train_examples],
        raw.test_images[:test_examples, ..., None],
        images[total - validation_examples:],
    ]
    if scaling == "raw":
        splits = [s.astype(np.float32) for s in splits]
    else:
        splits = [preprocessing.scale_to_unit(s) for s in splits]
    if scaling == "standardize":
        stats = preprocessing.fit_standardization(splits[0])
        splits = [preprocessing.standardize(s, stats) for s in splits]
    labels = raw.train_labels.astype(np.int32)
    return Data(
        np.asarray(splits[0], np.float32),
        labels[:train_examples],
        np.asarray(splits[1], np.float32),
        raw.test_labels[:test_examples].astype(np.int32),
        np.asarray(splits[2], np.float32),
        labels[total - validation_examples:],
    )


def _check_count(name: str, value: Any, low: int, high: int) -> int:
    integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not integer or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def seed_list(count: int) -> list[int]:
    """The seeds ``0, 1, ..., count − 1``; ``count`` must be an integer >= 1."""
    return list(range(_check_count("seeds", count, 1, 10**6)))


def history_curves(history: dict[str, Any], keys: Sequence[str] = CURVE_KEYS) -> dict[str, list]:
    """Per-epoch lists of the ``keys`` found in a :func:`~jaxtricks.training.fit` history."""
    records = history["epochs"]
    return {key: [r[key] for r in records] for key in keys if records and key in records[0]}


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


def strict_json(value: Any) -> Any:
    """``value`` made strict-JSON-ready: numpy scalars and arrays become Python numbers and
    lists, tuples become lists and non-finite floats become ``None``."""
    if isinstance(value, np.ndarray | jax.Array):
        return strict_json(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return strict_json(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_json(value: Any, path: str | os.PathLike) -> str:
    """Writes ``value`` as strict JSON to ``path`` atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".results-", suffix=".json.tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(strict_json(value), file, indent=1, allow_nan=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return str(path)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Saves a matplotlib figure as PNG at ``path`` atomically and closes it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".figure-", suffix=".png")
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    finally:
        pyplot().close(fig)
    return str(path)


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
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(results, os.path.join(out_dir, RESULTS_FILE))
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
        learning_rate: Any = None,
        target_accuracy: float | None = None,
        return_state: bool = False,
        **fit_kwargs: Any,
) -> Any:
    """One condition at one seed through :func:`~jaxtricks.training.fit` on ``data``.

    Returns:
        ``{"condition", "seed", "curves", "final", "history_header"}``: the per-epoch
        curves of :data:`CURVE_KEYS` plus ``train_time_s`` (cumulative training time at each
        epoch's end, evaluation and compilation excluded); the final numbers are the last
        epoch's test and train accuracy and loss, the best test accuracy, skipped steps,
        compile and total training time, and with ``target_accuracy`` the epochs it took the
        test accuracy to reach it (:func:`epochs_to_target`). With ``return_state``,
        ``(run, state)``.
    """
    from jaxtricks.training import fit

    state, history = fit(
        model,
        optimizer,
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        runner="loop",
        progress=False,
        learning_rate=learning_rate,
        **fit_kwargs,
    )
    curves = history_curves(history)
    curves["train_time_s"] = cumulative(curves["epoch_time_s"])
    last = history["epochs"][-1]
    finite_accuracy = [a for a in curves["test_accuracy"] if math.isfinite(a)]
    final = {
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "train_accuracy": last["train_accuracy"],
        "train_loss": last["train_loss"],
        "best_test_accuracy": max(finite_accuracy) if finite_accuracy else math.nan,
        "skipped_steps": int(sum(curves["skipped_steps"])),
        "compile_time_s": history["header"]["compile_time_s"],
        "train_time_s": curves["train_time_s"][-1],
    }
    if target_accuracy is not None:
        final["epochs_to_target"] = epochs_to_target(curves["test_accuracy"], target_accuracy)
    log(
        f"  {condition} seed {seed}: test accuracy {last['test_accuracy']:.4f}, "
        f"test loss {last['test_loss']:.4g}, {final['train_time_s']:.1f} s training"
    )
    result = {
        "condition": condition,
        "seed": seed,
        "curves": curves,
        "final": final,
        "history_header": {
            k: history["header"][k] for k in ("train_examples", "test_examples",
                                              "steps_per_epoch", "batch_size", "epochs")
        },
    }
    if "early_stopping" in history:
        result["early_stopping"] = history["early_stopping"]
    return (result, state) if return_state else result


def evaluate_state(model: Any, state: Any, images: Any, labels: Any) -> dict[str, float]:
    """Loss and accuracy of ``state`` on a whole split, in evaluation mode (no dropout)."""
    from jaxtricks.training import evaluate, make_eval_step

    return evaluate(make_eval_step(model), state, images, labels, batch_size=500)
