"""L3, batch normalization: with and without, at several learning rates, on real MNIST.

The lesson claims batch norm gives higher final accuracy and faster training. The same MLP
(hidden layers of ReLU units, He-normal init) is trained with plain SGD at each learning rate
η, once as ``W h → φ`` and once as ``W h → BN → φ`` (batch norm after the weights, before the
activation, as the lesson places it; :class:`jaxtricks.models.MLP` with ``use_batch_norm``).
Measured per epoch: test accuracy; per run: the final and best test accuracy and the first
epoch whose test accuracy reaches ``target`` (``null`` when none does; the summary counts those
runs as ``missing``). Steps whose loss or gradient is not finite are skipped and counted.

Full config: MNIST, 60000 train / 10000 test images, MLP (256, 256, 256, 256), batch 128,
SGD η ∈ {0.01, 0.1, 1.0}, 5 epochs, target 97 %, 3 seeds: 2 × 3 × 3 = 18 runs.
Quick config: 2000 train / 1000 test images, MLP (64, 64), η ∈ {0.01, 0.1}, 2 epochs,
target 80 %, 1 seed.
"""

from __future__ import annotations

from typing import Any

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.tricks import optimizers

NAME = "batch_norm"
CLAIM = "L3: batch normalization trains faster and reaches a higher final accuracy"

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": None,
    "test_examples": None,
    "features": [256, 256, 256, 256],
    "optimizer": "sgd",
    "learning_rates": [0.01, 0.1, 1.0],
    "epochs": 5,
    "batch_size": 128,
    "target_accuracy": 0.97,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "test_examples": 1000,
    "features": [64, 64],
    "learning_rates": [0.01, 0.1],
    "epochs": 2,
    "target_accuracy": 0.8,
    "seeds": 1,
}


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains with and without batch norm at every learning rate and seed."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
    )
    runs = []
    for learning_rate in config["learning_rates"]:
        optimizer = optimizers.get(config["optimizer"], learning_rate)
        for use_batch_norm in (False, True):
            model = MLP(features=tuple(config["features"]), use_batch_norm=use_batch_norm)
            for seed in seeds:
                result = common.fit_run(
                    model,
                    optimizer,
                    data,
                    condition=f"{'bn' if use_batch_norm else 'plain'}/lr={learning_rate:g}",
                    seed=seed,
                    epochs=config["epochs"],
                    batch_size=config["batch_size"],
                    log=log,
                    target_accuracy=config["target_accuracy"],
                )
                runs.append(result)
    summary = common.summarize(runs)
    headline = []
    for condition, s in summary.items():
        reach = s["final"]["epochs_to_target"]
        reached = "never" if reach["n"] == 0 else f"{common.pm(reach, 1, 1)} (n={reach['n']})"
        headline.append(
            f"{condition}: test accuracy {common.pm(s['final']['test_accuracy'], 100)} %, "
            f"epochs to {100 * config['target_accuracy']:g} %: {reached}, "
            f"reached by {reach['n']}/{reach['n'] + reach['missing']} seeds"
        )
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Test accuracy per epoch, one panel per learning rate, with and without batch norm."""
    plt = common.pyplot()
    summary = results["summary"]
    rates = results["config"]["learning_rates"]
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), squeeze=False)
    target = 100 * results["config"]["target_accuracy"]
    for ax, rate in zip(axes[0], rates, strict=True):
        conditions = [f"plain/lr={rate:g}", f"bn/lr={rate:g}"]
        common.plot_curves(ax, summary, "test_accuracy", conditions=conditions, scale=100)
        ax.axhline(target, color="gray", linestyle=":", label=f"target {target:g} %")
        ax.set(title=f"SGD η = {rate:g}", xlabel="epoch", ylabel="test accuracy (%)")
        ax.legend()
    fig.suptitle(f"L3 batch norm: MLP {tuple(results['config']['features'])} on "
                 f"{results['config']['dataset']} ({len(results['seeds'])} seeds, mean ± std)")
    fig.tight_layout()
    return common.save_figure(fig, path)
