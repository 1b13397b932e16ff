"""Training curves as a PNG (matplotlib, an optional dependency, loaded on first use)."""

from __future__ import annotations

import os
from typing import Any

from jaxtricks.files import atomic_write
from jaxtricks.training.history import History


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; ``ImportError`` without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Saves a matplotlib figure as PNG at ``path`` atomically and closes it; returns the path."""
    try:
        return atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=100))
    finally:
        pyplot().close(fig)


def plot_history(history: History, path: str | os.PathLike) -> str:
    """Draws loss and accuracy per epoch for training, validation and test into ``path``.

    Every split the history records is drawn (``loss``, ``val_loss``, ``test_loss``, and the
    accuracies when there are any); returns the path.
    """
    plt = pyplot()
    epochs = [record.epoch for record in history.epochs]
    names = history.metric_names()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for prefix, label, style in (("", "train", "-o"), ("val_", "validation", "--s"),
                                 ("test_", "test", ":^")):
        if f"{prefix}loss" in names:
            loss_ax.plot(epochs, history[f"{prefix}loss"], style, label=label)
        if f"{prefix}accuracy" in names:
            acc_ax.plot(epochs, [100 * v for v in history[f"{prefix}accuracy"]], style,
                        label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
