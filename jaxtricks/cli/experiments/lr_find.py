"""L6, the learning-rate range test against learning rates found by grid search.

For each optimizer of the optimizers experiment (:mod:`jaxtricks.cli.experiments.optimizers`),
the range test (:func:`jaxtricks.training.find_learning_rate`: η from 1e-7 to 10 over at most
200 steps, loss smoothed with β = 0.98, stopped at 4 × its minimum) runs on the data and model of
that experiment's pilot: the first 10,000 Fashion-MNIST training images (standardized), MLP
(512, 256), batch 128. Its two suggestions, the steepest fall of the smoothed loss and
(η at its minimum) / 10, are compared with the rate the pilot chose from {η₀/3, η₀, 3η₀} by
validation accuracy after 2 epochs:

    ratio = suggestion / η_grid,   within 3× when 1/3 ≤ ratio ≤ 3 (one step of the grid).

The main job's recipe is tested too: ``jaxtricks train``'s defaults (the CNN with batch norm and
dropout 0.1, Adam, 55,000 standardized MNIST training images, batch 128), whose one-cycle
schedule peaks at 2e-3; the suggestions are compared with that peak.

Each seed draws its own initial weights and batch order. Per condition the summary gives each
suggestion per seed, the geometric mean and the spread of log₁₀ over seeds, the ratios and how
many seeds fall within 3×.

Full config: the 9 optimizers on Fashion-MNIST and the main job on MNIST, 200 steps, 5 seeds:
10 × 5 = 50 range tests.
Quick config: 2 optimizers on 2,000 Fashion-MNIST images with MLP (64,), the main job on 1,024
MNIST images, 40 steps, 1 seed.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from jaxtricks.cli import train
from jaxtricks.cli.experiments import common
from jaxtricks.cli.experiments import optimizers as optimizers_experiment
from jaxtricks.cli.lr_find import draw_curve, loss_limits
from jaxtricks.models import MLP
from jaxtricks.training import find_learning_rate
from jaxtricks.tricks import optimizers

NAME = "lr_find"
CLAIM = ("L6: the learning-rate range test (Smith 2015) suggests the rate a grid search finds, "
         "in one short run")
MAIN_JOB = "main job (CNN, adam)"
SUGGESTIONS = ("steepest", "min_over_10")

FULL: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "train_examples": 10000,
    "validation_examples": 5000,
    "features": [512, 256],
    "optimizers": list(optimizers_experiment.OPTIMIZERS),
    "main_job_train_examples": None,
    "main_job_learning_rate": 2e-3,
    "batch_size": 128,
    "min_lr": 1e-7,
    "max_lr": 10.0,
    "num_steps": 200,
    "smoothing": 0.98,
    "diverge_factor": 4.0,
    "seeds": 5,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "validation_examples": 500,
    "features": [64],
    "optimizers": ["sgd", "adam"],
    "main_job_train_examples": 1024,
    "num_steps": 40,
    "seeds": 1,
}


def _factory(label: str):
    name, kwargs = optimizers_experiment.OPTIMIZERS[label]
    return lambda learning_rate: optimizers.get(name, learning_rate, **kwargs)


def _main_job(config: dict[str, Any]):
    """``jaxtricks train``'s default model, optimizer (its rate injected) and data."""
    parser = argparse.ArgumentParser(add_help=False)
    train.add_arguments(parser)
    args = parser.parse_args([])
    args.train_examples = config["main_job_train_examples"]
    args.batch_size = config["batch_size"]
    return (train.build_model(args), train.build_optimizer(args, config["min_lr"]),
            train.split_data(args))


def compare(result: dict[str, Any], reference: float) -> dict[str, Any]:
    """The final numbers of one range test against a reference rate: each suggestion, its
    log₁₀, its ratio to the reference and whether that ratio is within [1/3, 3] (1 or 0; None
    when there is no suggestion).

    Examples:
        >>> final = compare({"suggestion_steepest": 3e-3, "suggestion_min_over_10": 1e-2}, 1e-3)
        >>> round(final["ratio_steepest"], 6), final["within_3x_steepest"]
        (3.0, 1)
        >>> final["within_3x_min_over_10"]
        0
    """
    final: dict[str, Any] = {"reference_lr": reference}
    for name in SUGGESTIONS:
        value = result[f"suggestion_{name}"]
        final[f"suggestion_{name}"] = value
        final[f"log10_{name}"] = None if value is None else math.log10(value)
        ratio = None if value is None else value / reference
        final[f"ratio_{name}"] = ratio
        # A hair of slack: a suggestion of exactly 3η_grid is one grid step away.
        final[f"within_3x_{name}"] = None if ratio is None else int(
            1 / 3 / (1 + 1e-9) <= ratio <= 3 * (1 + 1e-9))
    return final


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Runs the range test for every optimizer and the main job at every seed."""
    data = common.load_data(config["dataset"], train_examples=config["train_examples"],
                            validation_examples=config["validation_examples"])
    model = MLP(features=tuple(config["features"]))
    chosen = optimizers_experiment.FULL["learning_rates"]
    conditions = [(label, model, _factory(label), data, chosen[label])
                  for label in config["optimizers"]]
    main_model, main_optimizer, main_data = _main_job(config)
    conditions.append((MAIN_JOB, main_model, main_optimizer, main_data,
                       config["main_job_learning_rate"]))
    runs = []
    for label, net, optimizer, split, reference in conditions:
        for seed in seeds:
            result = find_learning_rate(
                net, optimizer, split.train_x, split.train_y, min_lr=config["min_lr"],
                max_lr=config["max_lr"], num_steps=config["num_steps"],
                batch_size=config["batch_size"], smoothing=config["smoothing"],
                diverge_factor=config["diverge_factor"], seed=seed,
            ).to_dict()
            final = compare(result, reference)
            final["steps"] = len(result["learning_rates"])
            final["diverged"] = int(result["stop_reason"] != "completed")
            log(f"  {label} seed {seed}: steepest {result['suggestion_steepest']}, minimum/10 "
                f"{result['suggestion_min_over_10']} ({result['stop_reason']} after "
                f"{final['steps']} steps); reference {reference:g}")
            runs.append({
                "condition": label,
                "seed": seed,
                # Per step, not per epoch: kept out of "curves", which the summary averages.
                "curves": {},
                "range_test": {key: result[key] for key in (
                    "learning_rates", "losses", "smoothed_losses", "stop_reason",
                    "steepest_index", "minimum_index")},
                "final": final,
                "train_examples": result["settings"]["train_examples"],
            })
    summary = common.summarize(runs)
    # The pilot's grid {η₀/3, η₀, 3η₀}: a choice at its edge may be short of the best rate,
    # which may then lie beyond the grid.
    grids = {}
    for label in config["optimizers"]:
        rate = optimizers_experiment.CONVENTIONAL[label]
        grids[label] = {"grid": [rate / 3, rate, 3 * rate], "chosen": chosen[label],
                        "at_edge": not math.isclose(chosen[label], rate, rel_tol=1e-9)}
    return {"runs": runs, "summary": summary, "grids": grids,
            "headline": _headline(summary, runs)}


def _headline(summary: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for condition, s in summary.items():
        final = s["final"]
        parts = [f"{condition}: reference {final['reference_lr']['mean']:.3g}"]
        for name in SUGGESTIONS:
            values = [r["final"][f"suggestion_{name}"] for r in runs
                      if r["condition"] == condition]
            present = [v for v in values if v is not None]
            logs = final[f"log10_{name}"]
            within = final[f"within_3x_{name}"]
            if not present:
                parts.append(f"{name} none")
                continue
            geometric_mean = 10 ** logs["mean"]
            ratio = geometric_mean / final["reference_lr"]["mean"]
            parts.append(
                f"{name} {geometric_mean:.2g} (seeds {min(present):.2g}–{max(present):.2g}, "
                f"log10 std {logs['std']:.2f}; × {ratio:.2g} the reference; "
                f"{round(within['mean'] * within['n'])}/{len(values)} within 3×)"
            )
        lines.append("; ".join(parts))
    return lines


def plot(results: dict[str, Any], path: str) -> str:
    """Every condition's curves (one line per seed) with its reference rate, and the ratios of
    the suggestions to the references."""
    plt = common.pyplot()
    summary = results["summary"]
    conditions = list(summary)
    columns = min(5, len(conditions))
    rows = math.ceil(len(conditions) / columns)
    fig = plt.figure(figsize=(3.6 * columns, 3.2 * rows + 3.6))
    grid = fig.add_gridspec(rows + 1, columns)
    for index, condition in enumerate(conditions):
        ax = fig.add_subplot(grid[index // columns, index % columns])
        records = [{**run["range_test"], **run["final"]}
                   for run in results["runs"] if run["condition"] == condition]
        for record in records:
            draw_curve(ax, record)
        limits = loss_limits(records)
        if limits is not None:
            ax.set_ylim(*limits)
        ax.axvline(summary[condition]["final"]["reference_lr"]["mean"], color="black",
                   linewidth=2, alpha=0.7)
        ax.set_title(condition, fontsize=10)
        ax.tick_params(labelsize=8)
    ratios = fig.add_subplot(grid[rows, :])
    for offset, name, marker in ((-0.12, "steepest", "o"), (0.12, "min_over_10", "s")):
        xs, ys = [], []
        for index, condition in enumerate(conditions):
            for run in results["runs"]:
                if run["condition"] == condition and run["final"][f"ratio_{name}"] is not None:
                    xs.append(index + offset)
                    ys.append(run["final"][f"ratio_{name}"])
        ratios.plot(xs, ys, marker, linestyle="none", alpha=0.7,
                    label=f"{name.replace('_', ' ')} / reference")
    ratios.axhspan(1 / 3, 3, color="green", alpha=0.12, label="within 3× (one grid step)")
    ratios.axhline(1.0, color="black", linewidth=1)
    ratios.set(yscale="log", ylabel="suggestion / reference rate",
               xticks=range(len(conditions)))
    ratios.set_xticklabels(conditions, rotation=20, fontsize=8)
    ratios.grid(alpha=0.3, which="both")
    ratios.legend(fontsize=8)
    fig.suptitle(
        "L6 range test: smoothed loss against η, one line per seed "
        f"({len(results['seeds'])} seeds); dot: steepest, dashed: minimum/10,\n"
        "black: the rate the optimizers experiment's grid search chose, or the main job's peak"
    )
    fig.tight_layout()
    return common.save_figure(fig, path)

