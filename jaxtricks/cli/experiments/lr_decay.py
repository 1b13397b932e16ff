"""L6, learning-rate decay: constant vs the lesson's ×0.98 per epoch vs cosine vs one-cycle.

The lesson: a large η early for speed and a smaller η later to fine-tune, e.g. multiplying η by
0.98 after each epoch. With T the total number of steps, S the steps per epoch and η_0 the base
rate (:mod:`jaxtricks.tricks.schedules`):

    constant         η_t = η_0
    per_epoch_0.98   η_t = η_0 · 0.98^⌊t / S⌋
    cosine           η_t = η_0 · ½(1 + cos(π t / T))
    one_cycle        cosine rise from η_0/25 to η_0 over 0.3 T, cosine fall to η_0/25/10⁴

Over E epochs the lesson's rule ends at η_0 · 0.98^(E−1) (0.83 η_0 after 10 epochs), a far
gentler decay than the cosine and one-cycle schedules, which end near 0.

All train the same MLP on Fashion-MNIST (MNIST leaves little to gain) with heavy-ball momentum
SGD, γ = 0.9, η_0 = 0.03 (the rate the optimizers experiment's pilot picked for it).

Full config: Fashion-MNIST, 60000 train / 10000 test images, MLP (512, 256), batch 128,
10 epochs, 3 seeds: 4 × 3 = 12 runs.
Quick config: 2000 train / 1000 test images, MLP (64,), 2 epochs, 1 seed.
"""

from __future__ import annotations

from typing import Any

import optax

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.tricks import optimizers, schedules

NAME = "lr_decay"
CLAIM = "L6: decaying the learning rate (e.g. x0.98 per epoch) fine-tunes to a better model"

SCHEDULES = ("constant", "per_epoch_0.98", "cosine", "one_cycle")

FULL: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "train_examples": None,
    "test_examples": None,
    "features": [512, 256],
    "optimizer": "momentum",
    "momentum": 0.9,
    "learning_rate": 0.03,
    "schedules": list(SCHEDULES),
    "decay_factor": 0.98,
    "epochs": 10,
    "batch_size": 128,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2000,
    "test_examples": 1000,
    "features": [64],
    "epochs": 2,
    "seeds": 1,
}


def build_schedule(name: str, config: dict[str, Any], steps_per_epoch: int) -> Any:
    """The schedule ``name`` (one of :data:`SCHEDULES`) for the config's run length."""
    rate, total = config["learning_rate"], config["epochs"] * steps_per_epoch
    if name == "constant":
        return schedules.constant(rate)
    if name == "per_epoch_0.98":
        return schedules.per_epoch_decay(rate, steps_per_epoch, factor=config["decay_factor"])
    if name == "cosine":
        return schedules.cosine_decay(rate, total)
    if name == "one_cycle":
        return schedules.one_cycle(total, rate)
    raise ValueError(f"schedules must be among {SCHEDULES}, got {name!r}")


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains with every schedule at every seed."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
    )
    model = MLP(features=tuple(config["features"]))
    steps_per_epoch = data.train_x.shape[0] // config["batch_size"]
    runs = []
    for name in config["schedules"]:
        schedule = build_schedule(name, config, steps_per_epoch)
        # Injected, so that the history records the rate of every epoch.
        optimizer = optax.inject_hyperparams(
            lambda learning_rate: optimizers.get(
                config["optimizer"], learning_rate, momentum=config["momentum"]
            )
        )(learning_rate=schedule)
        for seed in seeds:
            runs.append(
                common.fit_run(
                    model,
                    optimizer,
                    data,
                    condition=name,
                    seed=seed,
                    epochs=config["epochs"],
                    batch_size=config["batch_size"],
                    log=log,
                )
            )
    summary = common.summarize(runs)
    headline = [
        f"{condition}: final test accuracy {common.pm(s['final']['test_accuracy'], 100)} %, "
        f"final train loss "
        f"{common.pm(s['final']['train_loss'], 1, 4)}"
        for condition, s in summary.items()
    ]
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Learning rate, train loss and test accuracy per epoch, per schedule."""
    plt = common.pyplot()
    summary = results["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (
        ("learning_rate", "learning rate at each epoch's last step", "η", "linear", 1.0),
        ("train_loss", "train loss", "cross-entropy", "log", 1.0),
        ("test_accuracy", "test accuracy", "accuracy (%)", "linear", 100.0),
    )
    for ax, (key, title, ylabel, yscale, scale) in zip(axes, panels, strict=True):
        common.plot_curves(ax, summary, key, scale=scale)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel, yscale=yscale)
    axes[2].legend()
    fig.suptitle(f"L6 learning-rate decay: MLP {tuple(results['config']['features'])} on "
                 f"{results['config']['dataset']}, momentum SGD η0 = "
                 f"{results['config']['learning_rate']:g} ({len(results['seeds'])} seeds)")
    fig.tight_layout()
    return common.save_figure(fig, path)
