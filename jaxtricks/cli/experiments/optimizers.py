"""L6, optimizers: test accuracy against epochs and against training time, at fixed learning rates.

Every optimizer of :mod:`jaxtricks.tricks.optimizers` trains the same MLP (He-normal init,
ReLU) on Fashion-MNIST (on MNIST they all end within a point of each other). Momentum runs in
both of its forms, heavy-ball ``v ← γv + g, w ← w − ηv`` and the lesson's ``v ← γv − ηg,
w ← w + v`` (equal at a constant η, so their curves should coincide up to float rounding).
Training time is ``fit``'s per-epoch training time summed (compilation and evaluation
excluded).

Learning rates: each optimizer's rate is the best of {η/3, η, 3η} around a conventional value
η (:data:`CONVENTIONAL`) in a pilot on 10000 Fashion-MNIST training images, 2 epochs, seed 0,
scored on 5000 held-out validation images (``python -m jaxtricks.cli.experiments.optimizers``
runs it; :func:`pilot`). Validation accuracy, % (η/3, η, 3η), measured on this 2-core CPU:

    sgd             η = 0.1     76.98  76.62  73.96   → 0.1/3
    momentum        η = 0.01    81.30  83.10  83.28   → 0.03 (grid edge)
    momentum_lesson η = 0.01    81.30  82.84  83.00   → 0.03 (grid edge)
    nesterov        η = 0.01    81.26  82.52  83.22   → 0.03 (grid edge)
    adagrad         η = 0.03    78.44  77.82  77.18   → 0.01 (grid edge)
    rmsprop         η = 1e-3    78.06  77.00  71.64   → 1e-3/3 (grid edge)
    adam            η = 1e-3    83.14  82.98  80.60   → 1e-3/3
    adamw           η = 1e-3    83.00  82.94  80.20   → 1e-3/3
    normalized_sgd  η = 0.3     79.32  79.22  72.78   → 0.1

One seed and 156 steps make the pilot noisy: differences under a point between neighbours
are not meaningful. γ = 0.9 for the momentum forms, AdamW λ = 1e-4.

Full config: Fashion-MNIST, 60000 train / 10000 test images, MLP (512, 256), batch 128, 5
epochs, 3 seeds: 9 × 3 = 27 runs.
Quick config: 2000 train / 1000 test images, MLP (64,), 1 epoch, 1 seed.
"""

from __future__ import annotations

from typing import Any

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.tricks import optimizers

NAME = "optimizers"
CLAIM = "L6: Adam is efficient and a good default among SGD, momentum and adaptive methods"

OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("sgd", {}),
    "momentum": ("momentum", {"momentum": 0.9}),
    "momentum_lesson": ("momentum", {"momentum": 0.9, "form": "lesson"}),
    "nesterov": ("nesterov", {"momentum": 0.9}),
    "adagrad": ("adagrad", {}),
    "rmsprop": ("rmsprop", {}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {"weight_decay": 1e-4}),
    "normalized_sgd": ("normalized_sgd", {}),
}

CONVENTIONAL: dict[str, float] = {
    "sgd": 0.1,
    "momentum": 0.01,
    "momentum_lesson": 0.01,
    "nesterov": 0.01,
    "adagrad": 0.03,
    "rmsprop": 1e-3,
    "adam": 1e-3,
    "adamw": 1e-3,
    "normalized_sgd": 0.3,
}

FULL: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "train_examples": None,
    "test_examples": None,
    "features": [512, 256],
    "learning_rates": {
        "sgd": 0.1 / 3,
        "momentum": 0.03,
        "momentum_lesson": 0.03,
        "nesterov": 0.03,
        "adagrad": 0.01,
        "rmsprop": 1e-3 / 3,
        "adam": 1e-3 / 3,
        "adamw": 1e-3 / 3,
        "normalized_sgd": 0.1,
    },
    "epochs": 5,
    "batch_size": 128,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "test_examples": 1000,
    "features": [64],
    "epochs": 1,
    "seeds": 1,
}


def run(config: dict[str, Any], seeds: list[int], log: common.Log,
        data: common.Data | None = None) -> dict[str, Any]:
    """Trains every optimizer at its learning rate(s) and every seed.

    A learning rate may be a list, to sweep it; the condition is then ``"name η=value"``.
    ``data`` replaces the split the config names (the pilot scores on validation images).
    """
    if data is None:
        data = common.load_data(
            config["dataset"],
            train_examples=config["train_examples"],
            test_examples=config["test_examples"],
        )
    model = MLP(features=tuple(config["features"]))
    runs = []
    for label, rates in config["learning_rates"].items():
        name, kwargs = OPTIMIZERS[label]
        sweep = isinstance(rates, list)
        for rate in rates if sweep else [rates]:
            optimizer = optimizers.get(name, rate, **kwargs)
            for seed in seeds:
                result = common.fit_run(
                    model,
                    optimizer,
                    data,
                    condition=f"{label} η={rate:g}" if sweep else label,
                    seed=seed,
                    epochs=config["epochs"],
                    batch_size=config["batch_size"],
                    log=log,
                )
                result["learning_rate"] = rate
                runs.append(result)
    summary = common.summarize(runs)
    headline = [
        f"{condition}: test accuracy {common.pm(s['final']['test_accuracy'], 100)} % after "
        f"{len(s['curves']['test_accuracy']['mean'])} epochs, epoch 1 "
        f"{100 * s['curves']['test_accuracy']['mean'][0]:.2f} %, training time "
        f"{common.pm(s['final']['train_time_s'], 1, 1)} s"
        for condition, s in summary.items()
    ]
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Test accuracy against epochs and against cumulative training time."""
    plt = common.pyplot()
    summary = results["summary"]
    fig, (epoch_ax, time_ax) = plt.subplots(1, 2, figsize=(14, 5))
    common.plot_curves(epoch_ax, summary, "test_accuracy", scale=100)
    epoch_ax.set(title="test accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    common.plot_curves(time_ax, summary, "test_accuracy", scale=100, x="train_time_s")
    time_ax.set(title="test accuracy against training time", xlabel="training time (s)",
                ylabel="accuracy (%)")
    epoch_ax.legend(fontsize=8)
    fig.suptitle(f"L6 optimizers: MLP {tuple(results['config']['features'])} on "
                 f"{results['config']['dataset']} ({len(results['seeds'])} seeds, mean ± std)")
    fig.tight_layout()
    return common.save_figure(fig, path)


def pilot(log: common.Log = common.log_to_stderr) -> dict[str, Any]:
    """The learning-rate pilot the module docstring describes; logs and returns its results."""
    rates = {label: [rate / 3, rate, rate * 3] for label, rate in CONVENTIONAL.items()}
    config = {**FULL, "learning_rates": rates, "epochs": 2}
    data = common.load_data(FULL["dataset"], train_examples=10000, validation_examples=5000)
    outcome = run(config, [0], lambda _: None, data=data._replace(test_x=data.val_x,
                                                                   test_y=data.val_y))
    for condition, s in outcome["summary"].items():
        log(f"pilot: {condition}: validation accuracy "
            f"{100 * s['final']['test_accuracy']['mean']:.2f} %")
    return outcome


if __name__ == "__main__":
    pilot()
