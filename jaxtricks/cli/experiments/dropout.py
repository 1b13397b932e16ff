"""L4, dropout: rates 0 to 0.8 before the last dense layer of the lesson's small CNN.

The lesson's notebook (Keras, Adam, batch 64, 5 epochs, dropout before the last dense layer)
reported test accuracies within 0.2 points of each other (0.9894 without dropout, 0.9899 at
0.5) and claimed that dropout reaches a higher accuracy in fewer epochs. Here the same recipe
runs on :class:`jaxtricks.models.CNN` without batch norm,

    x → [conv 3×3 (32) → ReLU → avg-pool 2×2] → [conv 3×3 (64) → ReLU → avg-pool 2×2]
      → dense 128 → ReLU → dropout(r) → dense 10,

with inverted dropout at rate r ∈ {0, 0.1, 0.2, 0.3, 0.5, 0.8}, Adam η = 1e-3, batch 64, over
several seeds; each epoch is scored on the full test split. A 2-core CPU cannot afford the
notebook's 60000 images × 5 epochs × 6 rates × several seeds, so the full config trains on the
first 6400 training images (100 steps per epoch): the absolute accuracies are lower than the
notebook's; the comparison between rates is the point.

Full config: MNIST, 6400 train / 10000 test images, 5 epochs, 3 seeds, target 97 %:
6 × 3 = 18 runs.
Quick config: 512 train / 500 test images, CNN (8, 16) with dense 32, rates {0, 0.5}, 1 epoch,
1 seed.
"""

from __future__ import annotations

from typing import Any

from jaxtricks.cli.experiments import common
from jaxtricks.models import CNN
from jaxtricks.tricks import optimizers

NAME = "dropout"
CLAIM = "L4: dropout of 10-50 % reaches a higher test accuracy in fewer epochs"

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": 6400,
    "test_examples": None,
    "conv_features": [32, 64],
    "hidden": 128,
    "rates": [0.0, 0.1, 0.2, 0.3, 0.5, 0.8],
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "epochs": 5,
    "batch_size": 64,
    "target_accuracy": 0.97,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 512,
    "test_examples": 500,
    "conv_features": [8, 16],
    "hidden": 32,
    "rates": [0.0, 0.5],
    "epochs": 1,
    "target_accuracy": 0.5,
    "seeds": 1,
}


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains the CNN at every dropout rate and seed."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
    )
    optimizer = optimizers.get(config["optimizer"], config["learning_rate"])
    runs = []
    for rate in config["rates"]:
        model = CNN(
            features=tuple(config["conv_features"]),
            hidden=config["hidden"],
            dropout_rate=rate,
        )
        for seed in seeds:
            result = common.fit_run(
                model,
                optimizer,
                data,
                condition=f"dropout={rate:g}",
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
        headline.append(
            f"{condition}: final test accuracy {common.pm(s['final']['test_accuracy'], 100)} %"
            f" (min {100 * s['final']['test_accuracy']['min']:.2f}, max "
            f"{100 * s['final']['test_accuracy']['max']:.2f}), epoch-1 accuracy "
            f"{100 * s['curves']['test_accuracy']['mean'][0]:.2f} %, epochs to "
            f"{100 * config['target_accuracy']:g} %: "
            + ("never" if reach["n"] == 0 else common.pm(reach, 1, 1))
            + f" ({reach['n']}/{reach['n'] + reach['missing']} seeds)"
        )
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Test accuracy per epoch by rate, and the final accuracy against the rate."""
    plt = common.pyplot()
    summary = results["summary"]
    fig, (curves_ax, final_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    common.plot_curves(curves_ax, summary, "test_accuracy", scale=100)
    curves_ax.set(title="test accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    curves_ax.legend()
    rates = results["config"]["rates"]
    stats = [summary[f"dropout={r:g}"]["final"]["test_accuracy"] for r in rates]
    final_ax.errorbar(rates, [100 * s["mean"] for s in stats],
                      yerr=[100 * s["std"] for s in stats], fmt="-o", capsize=4)
    for run in results["runs"]:
        rate = float(run["condition"].split("=")[1])
        final_ax.plot(rate, 100 * run["final"]["test_accuracy"], ".", color="gray", alpha=0.6)
    final_ax.set(title=f"test accuracy after {results['config']['epochs']} epochs "
                       "(mean ± std, dots: seeds)", xlabel="dropout rate",
                 ylabel="accuracy (%)")
    final_ax.grid(alpha=0.3)
    fig.suptitle(f"L4 dropout: small CNN on {results['config']['train_examples']} "
                 f"{results['config']['dataset']} images ({len(results['seeds'])} seeds)")
    fig.tight_layout()
    return common.save_figure(fig, path)
