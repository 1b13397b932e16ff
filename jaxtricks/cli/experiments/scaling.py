"""L1, input scaling: raw 0–255 pixels vs [0, 1] vs standardized, loss curves on real MNIST.

The lesson: keep values in a reasonable range, scale inputs to [0, 1] or [−1, 1]. The three
inputs are

    raw           x ∈ {0, ..., 255}
    unit          x / 255 ∈ [0, 1]
    standardize   (x / 255 − μ) / σ, μ and σ the mean and std of the training pixels

fed to the same MLP (He-normal init, ReLU), trained with plain SGD and with Adam at one
learning rate each (set for the scaled inputs, not re-tuned per scaling: the question is what
happens when the data alone changes). Non-finite steps are not skipped (``skip_nonfinite`` is
off), so a diverging run shows as a non-finite loss (``null`` in the JSON).

Full config: MNIST, all 60000 train / 10000 test images, MLP (512, 256), batch 128, 6 epochs,
SGD η = 0.05 and Adam η = 1e-3, 3 seeds: 2 × 3 × 3 = 18 runs.
Quick config: 2000 train / 1000 test images, MLP (128,), 2 epochs, 1 seed.
"""

from __future__ import annotations

import math
from typing import Any

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.tricks import optimizers

NAME = "scaling"
CLAIM = "L1: inputs scaled to [0, 1] or standardized train better than raw 0-255 values"

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": None,
    "test_examples": None,
    "features": [512, 256],
    "scalings": ["raw", "unit", "standardize"],
    "optimizers": {"sgd": 0.05, "adam": 1e-3},
    "epochs": 6,
    "batch_size": 128,
    "skip_nonfinite": False,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "test_examples": 1000,
    "features": [128],
    "epochs": 2,
    "seeds": 1,
}


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains every (optimizer, scaling) pair at every seed; see the module docstring."""
    runs = []
    model = MLP(features=tuple(config["features"]))
    for scaling in config["scalings"]:
        data = common.load_data(
            config["dataset"],
            train_examples=config["train_examples"],
            test_examples=config["test_examples"],
            scaling=scaling,
        )
        for name, learning_rate in config["optimizers"].items():
            for seed in seeds:
                runs.append(
                    common.fit_run(
                        model,
                        optimizers.get(name, learning_rate),
                        data,
                        condition=f"{name}/{scaling}",
                        seed=seed,
                        epochs=config["epochs"],
                        batch_size=config["batch_size"],
                        skip_nonfinite=config["skip_nonfinite"],
                        log=log,
                    )
                )
    for r in runs:
        r["final"]["diverged"] = int(not math.isfinite(r["final"]["train_loss"]))
    summary = common.summarize(runs)
    headline = [
        f"{condition}: final train loss {common.pm(s['final']['train_loss'], 1, 4)}, "
        f"test accuracy {common.pm(s['final']['test_accuracy'], 100)} %, "
        f"diverged {int(s['final']['diverged']['mean'] * s['final']['diverged']['n'])}"
        f"/{s['final']['diverged']['n']}"
        for condition, s in summary.items()
    ]
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Train loss (log scale) and test accuracy per epoch, one panel pair per optimizer."""
    plt = common.pyplot()
    summary = results["summary"]
    names = list(results["config"]["optimizers"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), squeeze=False)
    for column, name in enumerate(names):
        conditions = [c for c in summary if c.startswith(f"{name}/")]
        common.plot_curves(axes[0, column], summary, "train_loss", conditions=conditions)
        axes[0, column].set(title=f"{name}: train loss", xlabel="epoch", ylabel="cross-entropy",
                            yscale="log")
        common.plot_curves(axes[1, column], summary, "test_accuracy", conditions=conditions,
                           scale=100)
        axes[1, column].set(title=f"{name}: test accuracy", xlabel="epoch",
                            ylabel="accuracy (%)")
        axes[0, column].legend()
    fig.suptitle(f"L1 input scaling ({results['config']['dataset']}, "
                 f"{len(results['seeds'])} seeds, mean ± std)")
    fig.tight_layout()
    return common.save_figure(fig, path)
