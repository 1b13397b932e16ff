"""``jaxtricks train``: every trick of the lesson as a command-line switch.

The defaults are the recipe the README's main command runs: the Flax MNIST example's CNN with
batch normalization, dropout 0.1 before the last dense layer, Adam at 2e-3 on a one-cycle
schedule, batch 128, inputs standardized with statistics fitted on the training split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtricks.data import DatasetNotFoundError, load
from jaxtricks.models import CNN, MLP, ResNet
from jaxtricks.training import fit, write_history
from jaxtricks.training.checkpoint import CheckpointManager
from jaxtricks.training.sharding import make_mesh
from jaxtricks.tricks import initializers, optimizers, preprocessing, schedules
from jaxtricks.tricks.averaging import ema_params, swa_params
from jaxtricks.tricks.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from jaxtricks.tricks.diagnostics import gradient_health, update_health
from jaxtricks.tricks.early_stopping import early_stopping
from jaxtricks.tricks.weight_decay import add_l2_penalty

DESCRIPTION = (
    "Train on real MNIST or Fashion-MNIST, jit-compiled, with every trick of the lesson "
    "switchable: input scaling (L1), initializer (L2), batch norm (L3), dropout (L4), weight "
    "decay (L5), optimizer, clipping and learning-rate schedule (L6), architecture (L7). "
    "Writes metrics.json and curves.png into --out."
)

MODELS = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}
ACTIVATIONS = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}
SCHEDULES = ("constant", "per_epoch", "step", "cosine", "warmup_cosine", "one_cycle")
CLIPPING = ("none", "value", "norm", "global_norm")
SCALINGS = ("standardize", "unit", "raw")
OPTIMIZERS = (*optimizers.OPTIMIZERS, "momentum_lesson")
MONITORS = ("test_loss", "test_accuracy", "train_loss", "train_accuracy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` flags to ``parser``."""
    data = parser.add_argument_group("data (L1)")
    data.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist",
                      help="which dataset to train on")
    data.add_argument("--data-dir", default=None,
                      help="folder holding the four IDX files (else JAXTRICKS_DATA_DIR, the "
                           "cache, system paths, then download)")
    data.add_argument("--train-examples", type=int, default=None,
                      help="train on the first N training images only (default: all)")
    data.add_argument("--scaling", choices=SCALINGS, default="standardize",
                      help="inputs: standardize with train statistics, scale to [0,1], or raw "
                           "0-255")
    model = parser.add_argument_group("model (L2, L3, L4, L7)")
    model.add_argument("--model", choices=tuple(MODELS), default="cnn", help="architecture")
    model.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                       help="batch normalization after the weights, before the activation")
    model.add_argument("--dropout", type=float, default=0.1,
                       help="dropout rate in [0, 1)")
    model.add_argument("--activation", choices=tuple(ACTIVATIONS), default="relu",
                       help="activation function")
    model.add_argument("--initializer", default="he_normal_untruncated",
                       help=f"kernel initializer, one of: {', '.join(initializers.NAMES)}")
    optim = parser.add_argument_group("optimization (L5, L6)")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="optimizer (momentum_lesson: v <- g*v - lr*grad, w <- w + v)")
    optim.add_argument("--learning-rate", type=float, default=2e-3,
                       help="peak learning rate")
    optim.add_argument("--momentum", type=float, default=0.9,
                       help="momentum for momentum, momentum_lesson, nesterov, rmsprop")
    optim.add_argument("--schedule", choices=SCHEDULES, default="one_cycle",
                       help="learning-rate schedule over the run")
    optim.add_argument("--decay-factor", type=float, default=0.98,
                       help="per_epoch: multiply the rate by this after each epoch; step: "
                            "the factor every --step-epochs epochs")
    optim.add_argument("--step-epochs", type=int, default=1, help="step schedule period")
    optim.add_argument("--warmup-epochs", type=float, default=1.0,
                       help="warmup_cosine: epochs of linear warm-up")
    optim.add_argument("--clip", choices=CLIPPING, default="none", help="gradient clipping")
    optim.add_argument("--clip-threshold", type=float, default=1.0,
                       help="clipping threshold (the lesson suggests 1 or 10)")
    optim.add_argument("--weight-decay", type=float, default=0.0,
                       help="decoupled weight decay for adamw, coupled L2 for the others")
    guard = parser.add_argument_group("against overfitting (L5) and diagnostics")
    guard.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a better --monitor and return "
                            "the best epoch's weights; unset: off")
    guard.add_argument("--monitor", choices=MONITORS, default="test_loss",
                       help="the metric early stopping watches (accuracies are maximized)")
    guard.add_argument("--ema", type=float, default=None, metavar="DECAY",
                       help="also evaluate an exponential moving average of the weights, "
                            "updated after each epoch, with DECAY in [0, 1]")
    guard.add_argument("--swa-start", type=int, default=None, metavar="EPOCH",
                       help="also evaluate the uniform average (SWA) of the weights of epochs "
                            ">= EPOCH")
    guard.add_argument("--gradient-health", action="store_true",
                       help="record per-layer gradient and update norms (logged per epoch in "
                            "metrics.json) and plot the gradient norms to gradient_norms.png")
    run = parser.add_argument_group("run")
    run.add_argument("--epochs", type=int, default=4, help="epochs")
    run.add_argument("--batch-size", type=int, default=128, help="batch size")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    run.add_argument("--runner", choices=("auto", "loop", "scan"), default="auto",
                     help="epoch runner: Python loop or lax.scan; auto measures both")
    run.add_argument("--devices", type=parse_devices, default=1, metavar="N",
                     help="data-parallel devices: 1 (default) trains on one device; N > 1 "
                          "splits every batch over the first N devices (--batch-size must "
                          "divide by N); 0 or 'all' uses every device JAX sees (every host's "
                          "after jax.distributed.initialize()); see docs/multi_device.md")
    run.add_argument("--shard-optimizer-state", action=argparse.BooleanOptionalAction,
                     default=False,
                     help="with --devices: split the optimizer state across the devices "
                          "(ZeRO-1), about 1/N of it per device")
    run.add_argument("--out", default=os.path.join("runs", "mnist"),
                     help="output folder for metrics.json and curves.png")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="show a progress bar")
    run.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                     help="write curves.png (needs matplotlib)")
    ckpt = parser.add_argument_group(
        "checkpoints",
        "Off unless one of these flags is given. A checkpoint holds the whole training state "
        "and the history so far; a run killed at any point and started again with the same "
        "flags plus --resume ends bit-identical to one never stopped.",
    )
    ckpt.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                      help="folder of the checkpoints; unset: <--out>/checkpoints")
    ckpt.add_argument("--checkpoint-every-steps", type=int, default=None, metavar="N",
                      help="also save every N steps, in the middle of epochs too; unset: only "
                           "at epochs' ends")
    ckpt.add_argument("--checkpoint-every-epochs", type=int, default=None, metavar="N",
                      help="save at the end of every N-th epoch, 0 for never (the last epoch is "
                           "always saved); unset: 1")
    ckpt.add_argument("--keep-checkpoints", type=int, default=None, metavar="K",
                      help="keep the newest K checkpoints; unset: 3")
    ckpt.add_argument("--resume", action="store_true",
                      help="continue from the newest checkpoint that verifies (damaged ones are "
                           "skipped with a warning), up to --epochs in all; without a "
                           "checkpoint, start afresh")


def build_schedule(args: argparse.Namespace, steps_per_epoch: int) -> Any:
    """The learning-rate schedule the flags describe, over ``args.epochs`` epochs."""
    lr, total = args.learning_rate, args.epochs * steps_per_epoch
    if args.schedule == "constant":
        return schedules.constant(lr)
    if args.schedule == "per_epoch":
        return schedules.per_epoch_decay(lr, steps_per_epoch, factor=args.decay_factor)
    if args.schedule == "step":
        return schedules.step_decay(lr, args.step_epochs * steps_per_epoch, args.decay_factor)
    if args.schedule == "cosine":
        return schedules.cosine_decay(lr, total)
    if args.schedule == "warmup_cosine":
        warmup = max(1, round(args.warmup_epochs * steps_per_epoch))
        return schedules.warmup_cosine(lr / 25, lr, warmup, max(total, warmup + 1))
    return schedules.one_cycle(total, lr)


def build_optimizer(args: argparse.Namespace, schedule: Any) -> optax.GradientTransformation:
    """Clipping → (coupled L2) → optimizer, as the flags ask."""
    stages = []
    if args.clip == "value":
        stages.append(clip_by_value(args.clip_threshold))
    elif args.clip == "norm":
        stages.append(clip_by_norm(args.clip_threshold))
    elif args.clip == "global_norm":
        stages.append(clip_by_global_norm(args.clip_threshold))
    name, kwargs = args.optimizer, {}
    if name == "adamw":
        kwargs["weight_decay"] = args.weight_decay
    elif args.weight_decay > 0:
        stages.append(add_l2_penalty(args.weight_decay))
    if name in ("momentum", "nesterov"):
        kwargs["momentum"] = args.momentum
    elif name == "momentum_lesson":
        name, kwargs = "momentum", {"momentum": args.momentum, "form": "lesson"}
    elif name == "rmsprop" and args.momentum > 0:
        kwargs["momentum"] = args.momentum
    stages.append(optimizers.get(name, schedule, **kwargs))
    if getattr(args, "gradient_health", False):
        # First and last, so they see the raw gradient and the update applied.
        stages = [gradient_health(), *stages, update_health()]
    return optax.chain(*stages) if len(stages) > 1 else stages[0]


def build_epoch_tricks(args: argparse.Namespace) -> dict[str, Any]:
    """``fit``'s early_stopping, averaging and monitor from the flags."""
    if args.ema is not None and args.swa_start is not None:
        raise ValueError("--ema and --swa-start are two averages: give one of them")
    tricks: dict[str, Any] = {}
    if args.early_stopping is not None:
        if args.early_stopping < 1:
            raise ValueError(f"--early-stopping must be >= 1, got {args.early_stopping}")
        mode = "max" if args.monitor.endswith("accuracy") else "min"
        tricks["early_stopping"] = early_stopping(patience=args.early_stopping, mode=mode)
        tricks["monitor"] = args.monitor
    if args.ema is not None:
        if not 0 <= args.ema <= 1:
            raise ValueError(f"--ema must be in [0, 1], got {args.ema}")
        tricks["averaging"] = ema_params(args.ema)
    if args.swa_start is not None:
        if args.swa_start < 1:
            raise ValueError(f"--swa-start must be >= 1, got {args.swa_start}")
        tricks["averaging"] = swa_params(start=args.swa_start)
    return tricks


def scale_inputs(args: argparse.Namespace, train: np.ndarray, test: np.ndarray):
    """(train, test) as float32 (N, 28, 28, 1), scaled as ``--scaling`` says."""
    train = train[..., None]
    test = test[..., None]
    if args.scaling == "standardize":
        stats = preprocessing.fit_standardization(preprocessing.scale_to_unit(train))
        return (
            preprocessing.standardize(preprocessing.scale_to_unit(train), stats),
            preprocessing.standardize(preprocessing.scale_to_unit(test), stats),
        )
    if args.scaling == "unit":
        return preprocessing.scale_to_unit(train), preprocessing.scale_to_unit(test)
    return train.astype(np.float32), test.astype(np.float32)


def build_model(args: argparse.Namespace) -> nn.Module:
    """The model the flags describe."""
    return MODELS[args.model](
        use_batch_norm=args.batch_norm,
        dropout_rate=args.dropout,
        activation=ACTIVATIONS[args.activation],
        kernel_init=initializers.get(args.initializer),
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Trains as the flags say; returns the exit status."""
    try:
        model = build_model(args)
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not 0 <= args.learning_rate < math.inf:
            raise ValueError(f"--learning-rate must be finite and >= 0, got {args.learning_rate}")
        if not 0 <= args.weight_decay < math.inf:
            raise ValueError(f"--weight-decay must be finite and >= 0, got {args.weight_decay}")
        if not 0 <= args.warmup_epochs < math.inf:
            raise ValueError(f"--warmup-epochs must be finite and >= 0, got {args.warmup_epochs}")
        checkpoints = _checkpoint_arguments(args)
        epoch_tricks = build_epoch_tricks(args)
        mesh = build_mesh(args)
        dataset = load(args.dataset, args.data_dir)
    except (ValueError, DatasetNotFoundError) as err:
        parser.error(str(err))
    train_images, train_labels = dataset.train_images, dataset.train_labels
    if args.train_examples is not None:
        if not 1 <= args.train_examples <= train_images.shape[0]:
            parser.error(
                f"--train-examples must be in [1, {train_images.shape[0]}], "
                f"got {args.train_examples}"
            )
        train_images = train_images[: args.train_examples]
        train_labels = train_labels[: args.train_examples]
    if args.batch_size > train_images.shape[0]:
        parser.error(
            f"--batch-size must be at most the {train_images.shape[0]} training images, "
            f"got {args.batch_size}"
        )
    steps_per_epoch = train_images.shape[0] // args.batch_size
    try:
        schedule = build_schedule(args, steps_per_epoch)
        optimizer = build_optimizer(args, schedule)
    except ValueError as err:
        parser.error(str(err))
    train_x, test_x = scale_inputs(args, train_images, dataset.test_images)
    print(
        f"{args.dataset}: {train_x.shape[0]} train / {test_x.shape[0]} test images from "
        f"{dataset.source}; {args.model} on {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}{'' if mesh is None else f' x{mesh.size}'})",
        file=sys.stderr,
    )
    started = time.perf_counter()

    def stamp_elapsed(state: Any, record: dict[str, Any]) -> bool:
        del state
        record["elapsed_s"] = time.perf_counter() - started
        return False

    _, history = fit(
        model,
        optimizer,
        train_x,
        train_labels.astype(np.int32),
        test_x,
        dataset.test_labels.astype(np.int32),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        runner=args.runner,
        mesh=mesh,
        shard_optimizer_state=args.shard_optimizer_state,
        learning_rate=schedule,
        progress=args.progress,
        out_dir=None,
        callbacks=[stamp_elapsed],
        **checkpoints,
        **epoch_tricks,
    )
    history["header"]["wall_time_s"] = time.perf_counter() - started
    history["header"]["arguments"] = {
        k: v for k, v in vars(args).items() if k not in ("run", "parser")
    }
    history["header"]["dataset_source"] = dataset.source
    os.makedirs(args.out, exist_ok=True)
    path = write_history(history, args.out)
    if args.plot:
        from jaxtricks.cli.plots import plot_history

        plot_history(history, os.path.join(args.out, "curves.png"))
        if args.gradient_health:
            from jaxtricks.cli.diagnostics_plot import plot_gradient_norms

            plot_gradient_norms(
                [record["health"]["module_grad_norms"] for record in history["epochs"]],
                os.path.join(args.out, "gradient_norms.png"),
                steps=[record["epoch"] for record in history["epochs"]],
                title="gradient norm per layer at each epoch's last step",
                xlabel="epoch",
            )
    _print_summary(history, path)
    return 0


def parse_devices(text: str) -> int:
    """``--devices``: a count >= 0, or ``all`` for 0 (every device)."""
    if text == "all":
        return 0
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0 or 'all', got {text!r}")
    return count


def build_mesh(args: argparse.Namespace) -> Mesh | None:
    """The data-parallel mesh ``--devices`` asks for; None for one device, no mesh."""
    if args.devices == 1:
        if args.shard_optimizer_state:
            raise ValueError("--shard-optimizer-state needs --devices other than 1")
        return None
    available = jax.device_count()
    if args.devices > available:
        raise ValueError(f"--devices must be at most the {available} devices JAX sees, "
                         f"got {args.devices}")
    mesh = make_mesh(args.devices or None)
    if args.batch_size % mesh.size:
        raise ValueError(f"--batch-size must be divisible by the {mesh.size} devices of "
                         f"--devices, got {args.batch_size}")
    return mesh


def _checkpoint_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``fit``'s checkpoint arguments from the flags; ``ValueError`` naming a bad flag."""
    flags = (args.checkpoint_dir, args.checkpoint_every_steps, args.checkpoint_every_epochs,
             args.keep_checkpoints)
    if not args.resume and all(flag is None for flag in flags):
        return {}
    every_steps = args.checkpoint_every_steps
    every_epochs = 1 if args.checkpoint_every_epochs is None else args.checkpoint_every_epochs
    keep = 3 if args.keep_checkpoints is None else args.keep_checkpoints
    if every_steps is not None and every_steps < 1:
        raise ValueError(f"--checkpoint-every-steps must be >= 1, got {every_steps}")
    if every_epochs < 0:
        raise ValueError(f"--checkpoint-every-epochs must be >= 0, got {every_epochs}")
    if keep < 1:
        raise ValueError(f"--keep-checkpoints must be >= 1, got {keep}")
    directory = args.checkpoint_dir or os.path.join(args.out, "checkpoints")
    found = CheckpointManager(directory).steps()
    if found and not args.resume:
        raise ValueError(
            f"--checkpoint-dir {directory} already holds checkpoints (steps {found}): pass "
            "--resume to continue that run, or choose another --out or --checkpoint-dir"
        )
    print(
        f"checkpoints in {directory}"
        + (f"; resuming from the newest good one of steps {found}" if found else ""),
        file=sys.stderr,
    )
    return {
        "checkpoint_dir": directory,
        "checkpoint_every_steps": every_steps,
        "checkpoint_every_epochs": every_epochs or None,  # fit's None: not at epochs' ends
        "keep_checkpoints": keep,
        "resume": args.resume,
    }


def _print_summary(history: dict[str, Any], path: str) -> None:
    best = max(history["epochs"], key=lambda r: r["test_accuracy"])
    last = history["epochs"][-1]
    reached = [r for r in history["epochs"] if r["test_accuracy"] >= 0.99]
    summary = {
        "final_test_accuracy": last["test_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        # wall time from the start of training (compilation included) to the end of the
        # first evaluation at or above 99% test accuracy
        "time_to_99_s": round(reached[0]["elapsed_s"], 1) if reached else None,
        "wall_time_s": round(history["header"]["wall_time_s"], 1),
        "compile_time_s": round(history["header"]["compile_time_s"], 1),
        "metrics": path,
    }
    print(json.dumps(summary))
