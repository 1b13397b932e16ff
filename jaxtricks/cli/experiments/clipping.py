"""L6, gradient clipping: a deliberately exploding setup without clipping, with θ = 1 and θ = 10.

Global-norm clipping (:func:`jaxtricks.tricks.clipping.clip_by_global_norm`) rescales the
gradient g when its norm passes θ,

    g ← g                 if ‖g‖ ≤ θ
    g ← θ g / ‖g‖         otherwise,

so one plain-SGD step moves the weights by at most η θ. The exploding setup is a 10-layer ReLU
MLP (He-normal init, no batch norm) under plain SGD at a learning rate too large for it
(η = 0.5), next to a reference rate that trains without clipping (η = 0.1). Non-finite steps
are *not* skipped (``skip_nonfinite`` off), so an explosion shows as a non-finite loss
(``null`` in the JSON) and chance accuracy. ``train_grad_norm`` is the epoch's mean norm of
the gradient before clipping.

η = 0.5 was picked because it gave a non-finite loss within the first epoch without clipping
in a throwaway pilot (10000 train images, 2 epochs, seed 0); the outcome of every setting is
what ``results.json`` records, not this pilot.

Full config: MNIST, 20000 train / 10000 test images, MLP (256,) × 10, batch 128, SGD
η ∈ {0.1, 0.5}, θ ∈ {none, 1, 10}, 5 epochs, 3 seeds: 6 × 3 = 18 runs.
Quick config: 2000 train / 1000 test images, MLP (64,) × 6, 2 epochs, 1 seed.
"""

from __future__ import annotations

import math
from typing import Any

import optax

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.tricks import optimizers
from jaxtricks.tricks.clipping import clip_by_global_norm

NAME = "clipping"
CLAIM = "L6: clipping the gradient norm at θ = 1 or θ = 10 tames exploding gradients"

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": 20000,
    "test_examples": None,
    "features": [256] * 10,
    "optimizer": "sgd",
    "learning_rates": [0.1, 0.5],
    "thresholds": [None, 1.0, 10.0],
    "epochs": 5,
    "batch_size": 128,
    "skip_nonfinite": False,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "test_examples": 1000,
    "features": [64] * 6,
    "epochs": 2,
    "seeds": 1,
}


def _label(threshold: float | None) -> str:
    return "no clip" if threshold is None else f"θ={threshold:g}"


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains at every learning rate with every clipping threshold and seed."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
    )
    model = MLP(features=tuple(config["features"]))
    runs = []
    for learning_rate in config["learning_rates"]:
        for threshold in config["thresholds"]:
            optimizer = optimizers.get(config["optimizer"], learning_rate)
            if threshold is not None:
                optimizer = optax.chain(clip_by_global_norm(threshold), optimizer)
            for seed in seeds:
                result = common.fit_run(
                    model,
                    optimizer,
                    data,
                    condition=f"lr={learning_rate:g}/{_label(threshold)}",
                    seed=seed,
                    epochs=config["epochs"],
                    batch_size=config["batch_size"],
                    skip_nonfinite=config["skip_nonfinite"],
                    log=log,
                )
                result["final"]["diverged"] = int(
                    not math.isfinite(result["final"]["train_loss"])
                )
                runs.append(result)
    summary = common.summarize(runs)
    headline = []
    for condition, s in summary.items():
        diverged = s["final"]["diverged"]
        headline.append(
            f"{condition}: test accuracy {common.pm(s['final']['test_accuracy'], 100)} %, "
            f"diverged {round(diverged['mean'] * diverged['n'])}/{diverged['n']} seeds"
        )
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Per learning rate: train loss, test accuracy and gradient norm per epoch."""
    plt = common.pyplot()
    summary = results["summary"]
    rates = results["config"]["learning_rates"]
    fig, axes = plt.subplots(len(rates), 3, figsize=(15, 4 * len(rates)), squeeze=False)
    for row, rate in enumerate(rates):
        conditions = [c for c in summary if c.startswith(f"lr={rate:g}/")]
        panels = (
            ("train_loss", "train loss", "cross-entropy", "log", 1.0),
            ("test_accuracy", "test accuracy", "accuracy (%)", "linear", 100.0),
            ("train_grad_norm", "gradient norm before clipping", "‖g‖", "log", 1.0),
        )
        for ax, (key, title, ylabel, yscale, scale) in zip(axes[row], panels, strict=True):
            common.plot_curves(ax, summary, key, conditions=conditions, scale=scale)
            ax.set(title=f"SGD η = {rate:g}: {title}", xlabel="epoch", ylabel=ylabel,
                   yscale=yscale)
        axes[row, 1].legend()
    fig.suptitle(f"L6 clipping: {len(results['config']['features'])}-layer MLP on "
                 f"{results['config']['dataset']} ({len(results['seeds'])} seeds, mean ± std; "
                 "diverged runs leave gaps)")
    fig.tight_layout()
    return common.save_figure(fig, path)
