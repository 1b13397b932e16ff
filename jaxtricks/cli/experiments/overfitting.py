"""L5, overfitting: on a small training set, early stopping, weight decay, dropout, model
averaging, label smoothing and mixup against a plain baseline, compared on the train/test gap.

With few training examples a large MLP drives its training error to zero while its test error
stays high. For every variant the final model is scored in evaluation mode (no dropout) on
the training subset and on the test split, and

    gap = train accuracy − test accuracy.

Variants (same MLP, Adam η = 1e-3, batch 64):

    baseline        nothing else
    early_stopping  stop when the validation loss has not improved for ``patience`` epochs,
                    keep the best epoch's weights
                    (:func:`~jaxtricks.tricks.early_stopping.early_stopping`)
    weight_decay    coupled L2, the gradient of (λ/2)‖w‖² added before Adam
                    (:func:`~jaxtricks.tricks.weight_decay.add_l2_penalty`)
    dropout         dropout after every hidden layer
    ensemble        K models trained at once (:func:`~jaxtricks.training.ensemble.fit_ensemble`,
                    a ``vmap`` over members), predicting the mean of their probabilities
    label_smoothing the cross-entropy against (1 − α) e_y + α / 10
                    (:func:`~jaxtricks.tricks.soft_targets.smoothed_cross_entropy`)
    mixup           each batch replaced by λ x + (1 − λ) x[π] with targets mixed alike,
                    λ ~ Beta(α, α) (:func:`~jaxtricks.tricks.soft_targets.mixup`, a batch
                    transform with its own random stream)

The validation set is held out from the end of the training split (disjoint from the training
subset) and is ``fit``'s validation data: every per-epoch curve is measured on it, and only the
final models see the test split, so early stopping never looks at test data. Every final model
is scored with the plain cross-entropy and accuracy on clean images, label smoothing and mixup
included (label smoothing's ``val_loss`` curve too; its smoothed one is ``val_smoothed_loss``).

Full config: MNIST, 1000 train / 5000 validation / 10000 test images, MLP (512, 256), 50
epochs, patience 5, λ = 1e-3, dropout 0.5, K = 5, label smoothing α = 0.1, mixup α = 0.2,
3 seeds: 7 × 3 = 21 runs.
Quick config: 256 train / 512 validation / 1000 test images, MLP (64,), 3 epochs, patience 1,
K = 2, 1 seed.
"""

from __future__ import annotations

from typing import Any

import optax

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP
from jaxtricks.training import (
    EarlyStoppingHook,
    Hook,
    LambdaHook,
    accuracy,
    evaluate_ensemble,
    fit_ensemble,
)
from jaxtricks.tricks import optimizers
from jaxtricks.tricks.soft_targets import mixup, smoothed_cross_entropy
from jaxtricks.tricks.weight_decay import add_l2_penalty

NAME = "overfitting"
CLAIM = (
    "L5: early stopping, weight decay, dropout, model averaging, label smoothing and mixup "
    "reduce overfitting (the train/test gap) on a small training set"
)

VARIANTS = ("baseline", "early_stopping", "weight_decay", "dropout", "ensemble",
            "label_smoothing", "mixup")

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": 1000,
    "validation_examples": 5000,
    "test_examples": None,
    "features": [512, 256],
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "epochs": 50,
    "batch_size": 64,
    "variants": list(VARIANTS),
    "patience": 5,
    "l2": 1e-3,
    "dropout_rate": 0.5,
    "ensemble_members": 5,
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 256,
    "validation_examples": 512,
    "test_examples": 1000,
    "features": [64],
    "epochs": 3,
    "patience": 1,
    "ensemble_members": 2,
    "seeds": 1,
}


def _single(variant: str, config: dict[str, Any], data: common.Data, seed: int,
            log: common.Log) -> dict[str, Any]:
    """One ``fit`` run of a single-model variant, scored on train and test at the end."""
    features = tuple(config["features"])
    rate = config["dropout_rate"] if variant == "dropout" else 0.0
    model = MLP(features=features, dropout_rate=rate)
    optimizer = optimizers.get(config["optimizer"], config["learning_rate"])
    if variant == "weight_decay":
        optimizer = optax.chain(add_l2_penalty(config["l2"]), optimizer)
    hooks: list[Hook] = []
    if variant == "early_stopping":
        hooks.append(EarlyStoppingHook("val_loss", patience=config["patience"]))
    extra: dict[str, Any] = {}
    plain_val_loss: list[float] = []
    if variant == "label_smoothing":
        extra = {"loss_fn": smoothed_cross_entropy(config["label_smoothing"]),
                 "metrics": {"accuracy": accuracy}}

        def record_plain_val_loss(state: Any, record: Any) -> bool:
            # fit's val_loss is the smoothed loss here; the figure compares plain ones.
            del record
            plain_val_loss.append(
                common.evaluate_state(model, state, data.val_x, data.val_y)["loss"])
            return False

        hooks.append(LambdaHook(record_plain_val_loss))
    elif variant == "mixup":
        extra = {"batch_transform": mixup(config["mixup_alpha"], model.num_classes)}
    result, state = common.fit_run(
        model,
        optimizer,
        data,
        condition=variant,
        seed=seed,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        return_state=True,
        log=log,
        callbacks=hooks,
        test_each_epoch=False,
        **extra,
    )
    if plain_val_loss:
        curves = result["curves"]
        curves["val_smoothed_loss"], curves["val_loss"] = curves["val_loss"], plain_val_loss
    train = common.evaluate_state(model, state, data.train_x, data.train_y)
    test = common.evaluate_state(model, state, data.test_x, data.test_y)
    stopped = result.get("early_stopping", {})
    result["final"] = {
        "train_accuracy": train["accuracy"],
        "train_loss": train["loss"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "gap": train["accuracy"] - test["accuracy"],
        "epochs_trained": len(result["curves"]["val_accuracy"]),
        "best_epoch": stopped.get("best_epoch"),
        "train_time_s": result["final"]["train_time_s"],
    }
    return result


def _ensemble(config: dict[str, Any], data: common.Data, seed: int,
              log: common.Log) -> dict[str, Any]:
    """K members trained together by ``fit_ensemble``, scored as an average of probabilities."""
    model = MLP(features=tuple(config["features"]))
    optimizer = optimizers.get(config["optimizer"], config["learning_rate"])
    members = config["ensemble_members"]
    states, history = fit_ensemble(
        model,
        optimizer,
        data.train_x,
        data.train_y,
        validation_data=(data.val_x, data.val_y),
        num_members=members,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        # Member k starts from seed·K + k, so ensembles of different seeds share no member.
        seed=seed * members,
        progress=False,
    )
    curves = {
        "train_loss": history["loss"],
        "train_accuracy": history["accuracy"],
        "val_loss": history["val_loss"],
        "val_accuracy": history["val_accuracy"],
        "member_val_accuracy": history["val_member_accuracy"],
        "epoch_time_s": [r.epoch_time_s for r in history.epochs],
    }
    curves["train_time_s"] = common.cumulative(curves["epoch_time_s"])
    train = evaluate_ensemble(model, states, data.train_x, data.train_y, batch_size=500)
    test = evaluate_ensemble(model, states, data.test_x, data.test_y, batch_size=500)
    final = {
        "train_accuracy": train["accuracy"],
        "train_loss": train["loss"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "gap": train["accuracy"] - test["accuracy"],
        "member_test_accuracy": sum(test["member_accuracy"]) / members,
        "epochs_trained": len(history.epochs),
        "best_epoch": None,
        "train_time_s": curves["train_time_s"][-1],
    }
    log(f"  ensemble seed {seed}: test accuracy {final['test_accuracy']:.4f} "
        f"(members {final['member_test_accuracy']:.4f}), {final['train_time_s']:.1f} s training")
    return {
        "condition": "ensemble",
        "seed": seed,
        "curves": curves,
        "final": final,
        "member_seeds": history.header["member_seeds"],
    }


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains every variant at every seed on the small training subset."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
        validation_examples=config["validation_examples"],
    )
    runs = []
    for variant in config["variants"]:
        if variant not in VARIANTS:
            raise ValueError(f"variants must be among {VARIANTS}, got {variant!r}")
        for seed in seeds:
            if variant == "ensemble":
                runs.append(_ensemble(config, data, seed, log))
            else:
                runs.append(_single(variant, config, data, seed, log))
    summary = common.summarize(runs)
    headline = [
        f"{condition}: train {common.pm(s['final']['train_accuracy'], 100)} %, test "
        f"{common.pm(s['final']['test_accuracy'], 100)} %, gap {common.pm(s['final']['gap'], 100)}"
        f" points, epochs {s['final']['epochs_trained']['mean']:.1f}"
        for condition, s in summary.items()
    ]
    return {"runs": runs, "summary": summary, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Validation loss per epoch and final train/test accuracy with the gap, per variant."""
    plt = common.pyplot()
    summary = results["summary"]
    fig, (loss_ax, bars_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    common.plot_curves(loss_ax, summary, "val_loss")
    loss_ax.set(title="validation loss per epoch (ensemble: of the averaged prediction)",
                xlabel="epoch", ylabel="cross-entropy", yscale="log")
    loss_ax.legend()
    variants = list(summary)
    width = 0.4
    for offset, split in ((-width / 2, "train"), (width / 2, "test")):
        stats = [summary[v]["final"][f"{split}_accuracy"] for v in variants]
        bars_ax.bar([i + offset for i in range(len(variants))], [100 * s["mean"] for s in stats],
                    width, yerr=[100 * s["std"] for s in stats], capsize=3, label=split)
    for i, v in enumerate(variants):
        gap = summary[v]["final"]["gap"]
        bars_ax.text(i, 101, f"gap {100 * gap['mean']:.1f}", ha="center", fontsize=8)
    bars_ax.set_xticks(range(len(variants)), variants, rotation=20)
    low = min(100 * summary[v]["final"]["test_accuracy"]["mean"] for v in variants)
    bars_ax.set(title="final accuracy (evaluation mode)", ylabel="accuracy (%)",
                ylim=(max(0.0, low - 10), 104))
    bars_ax.legend(loc="lower right")
    bars_ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"L5 overfitting: {results['config']['train_examples']} "
                 f"{results['config']['dataset']} training images "
                 f"({len(results['seeds'])} seeds, mean ± std)")
    fig.tight_layout()
    return common.save_figure(fig, path)
