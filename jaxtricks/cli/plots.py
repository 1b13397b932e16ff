"""Training curves as a PNG (matplotlib, an optional dependency)."""

from __future__ import annotations

import os
from typing import Any


def plot_history(history: dict[str, Any], path: str | os.PathLike) -> str:
    """Draws loss and accuracy per epoch, train and test, into ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history["epochs"]]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("test", "--s")):
        loss_ax.plot(epochs, [r[f"{split}_loss"] for r in history["epochs"]], style, label=split)
        acc_ax.plot(
            epochs, [100 * r[f"{split}_accuracy"] for r in history["epochs"]], style, label=split
        )
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)
