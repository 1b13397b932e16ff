"""``jaxtricks train``: every trick of the lesson as a command-line switch.

The defaults are the recipe the README's main command runs: the Flax MNIST example's CNN with
batch normalization, dropout 0.1 before the last dense layer, Adam at 2e-3 on a one-cycle
schedule, batch 128, inputs standardized with statistics fitted on the training examples. The
last 5,000 training images are held out for validation: early stopping, the best epoch and the
plateau watch them. The test set is evaluated after every epoch and reported apart, as
``test_...``; nothing is chosen on it.

Every failure is one line on stderr naming the flag, with exit status 2, found before training
where it can be: a bad value, an ``--out`` that is a file or cannot be written, a checkpoint
directory that holds another run, a ``--resume`` whose flags differ from the run it resumes.

With ``--coordinator-address``, ``--num-processes`` and ``--process-id`` (or ``--distributed
auto`` on a cluster JAX recognizes) the process joins a job of several (``jax.distributed``,
before any other JAX work) and trains on every process's devices; process 0 alone prints and
writes ``--out`` (docs/multi_device.md). ``jaxtricks launch`` starts such a job on one machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from jaxtricks.backend import initialize_distributed
from jaxtricks.data import DatasetNotFoundError, IdxFormatError, Splits, load_splits
from jaxtricks.files import strict_json, write_json
from jaxtricks.models import CNN, MLP, ResNet
from jaxtricks.training import (
    AveragingHook,
    CheckpointHook,
    EarlyStoppingHook,
    EvaluationHook,
    History,
    Hook,
    LambdaHook,
    MetricsFileHook,
    accuracy,
    evaluate,
    fit,
    make_eval_step,
)
from jaxtricks.training.checkpoint import CheckpointManager, CheckpointSaveError
from jaxtricks.training.precision import PRECISIONS
from jaxtricks.training.sharding import make_mesh
from jaxtricks.tricks import initializers, optimizers, schedules
from jaxtricks.tricks.averaging import ema_params, swa_params
from jaxtricks.tricks.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from jaxtricks.tricks.diagnostics import gradient_health, update_health
from jaxtricks.tricks.soft_targets import mixup, smoothed_cross_entropy
from jaxtricks.tricks.weight_decay import add_l2_penalty

DESCRIPTION = (
    "Train on real MNIST or Fashion-MNIST, jit-compiled, with every trick of the lesson "
    "switchable: input scaling (L1), initializer (L2), batch norm (L3), dropout (L4), weight "
    "decay, early stopping, weight averaging, label smoothing and mixup (L5), optimizer, "
    "clipping and learning-rate schedule (L6), architecture (L7), and mixed precision. Holds "
    "out validation images for every choice, reports the test set apart, and writes "
    "metrics.json and curves.png into --out."
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
OPTIMIZERS = (*optimizers.OPTIMIZERS, "momentum_lesson")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy", "val_loss_averaged",
            "val_accuracy_averaged")
SEED_LIMIT = 2**63
# Flags a resumed run may change: where things are written and how progress shows. Every
# other flag defines the run and is taken from the checkpoint's when not given.
RESUME_FREE = frozenset({
    "out", "data_dir", "progress", "plot", "resume", "checkpoint_dir", "keep_checkpoints",
    "checkpoint_every_steps", "checkpoint_every_epochs", "runner", "distributed",
    "coordinator_address", "num_processes", "process_id",
})
ARGUMENTS_FILE = "arguments.json"


class CommandError(Exception):
    """A failure of the command, said in one line that names the flag (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` flags to ``parser``."""
    data = parser.add_argument_group("data (L1)")
    add_data_arguments(data)
    # Not in add_data_arguments: lr-find, which shares those, never looks at the test set.
    data.add_argument("--test-examples", type=int, default=None,
                      help="evaluate on the first N test images only (default: all)")
    add_model_arguments(parser.add_argument_group("model (L2, L3, L4, L7)"))
    add_optimizer_arguments(parser.add_argument_group("optimization (L5, L6)"))
    guard = parser.add_argument_group("against overfitting (L5) and diagnostics")
    guard.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a better --monitor and keep the "
                            "best epoch's weights; unset: off")
    guard.add_argument("--monitor", choices=MONITORS, default="val_loss",
                       help="the metric early stopping watches (accuracies are maximized); "
                            "never a test metric")
    guard.add_argument("--ema", type=float, default=None, metavar="DECAY",
                       help="also evaluate an exponential moving average of the weights, "
                            "updated after each epoch, with DECAY in [0, 1]")
    guard.add_argument("--swa-start", type=int, default=None, metavar="EPOCH",
                       help="also evaluate the uniform average (SWA) of the weights of epochs "
                            ">= EPOCH")
    guard.add_argument("--label-smoothing", type=float, default=0.0, metavar="ALPHA",
                       help="train on targets (1 - ALPHA) one-hot + ALPHA / classes, in [0, 1]; "
                            "0: off")
    guard.add_argument("--mixup", type=float, default=None, metavar="ALPHA",
                       help="train on mixup batches: pairs of images and their targets mixed "
                            "with a weight ~ Beta(ALPHA, ALPHA), ALPHA > 0; unset: off")
    guard.add_argument("--gradient-health", action="store_true",
                       help="record per-layer gradient and update norms (logged per epoch in "
                            "metrics.json) and plot the gradient norms to gradient_norms.png")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--epochs", type=int, default=4, help="epochs")
    run_group.add_argument("--batch-size", type=int, default=128, help="batch size")
    run_group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                           help="compute dtype: float32, bfloat16, or float16 with dynamic loss "
                                "scaling; parameters and optimizer state stay float32")
    run_group.add_argument("--seed", type=int, default=0, help="random seed in [0, 2**63)")
    run_group.add_argument("--runner", choices=("auto", "loop", "scan"), default=None,
                           help="epoch runner: Python loop or lax.scan; auto times both; unset: "
                                "the backend's choice")
    run_group.add_argument("--devices", type=parse_devices, default=1, metavar="N",
                           help="data-parallel devices: 1 (default) trains on one device; N > 1 "
                                "splits every batch over the first N devices (--batch-size must "
                                "divide by N); 0 or 'all' uses every device JAX sees (every "
                                "process's in a job of several, where 'all' is the default and "
                                "the only choice); see docs/multi_device.md")
    run_group.add_argument("--shard-optimizer-state", action=argparse.BooleanOptionalAction,
                           default=False,
                           help="with --devices: split the optimizer state across the devices "
                                "(ZeRO-1), about 1/N of it per device")
    run_group.add_argument("--out", default=os.path.join("runs", "mnist"),
                           help="output folder for metrics.json and curves.png")
    run_group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                           help="show a progress bar (tqdm), or one line per epoch without it")
    run_group.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                           help="write curves.png (skipped, with a note, without matplotlib)")
    job = parser.add_argument_group(
        "several processes (jax.distributed)",
        "Join a job of several processes, on one machine or many, before any JAX work, and "
        "train on every process's devices (gloo collectives on the CPU). Every process runs the "
        "same command but for --process-id; process 0 alone prints and writes --out, and "
        "checkpoints must be in a folder every process sees. 'jaxtricks launch' starts such a "
        "job on one machine.",
    )
    job.add_argument("--distributed", choices=("off", "auto"), default="off",
                     help="auto: let jax.distributed.initialize() detect the job (SLURM, Open "
                          "MPI, Cloud TPU, Kubernetes) for any of the three flags below not "
                          "given; off: join a job only when all three are given")
    job.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                     help="the address of process 0, which listens on PORT")
    job.add_argument("--num-processes", type=int, default=None, metavar="N",
                     help="the number of processes of the job")
    job.add_argument("--process-id", type=int, default=None, metavar="I",
                     help="this process's id in [0, N)")
    ckpt = parser.add_argument_group(
        "checkpoints",
        "Off unless one of these flags is given. A checkpoint holds the whole training state "
        "and the history so far; a run killed at any point and started again with --resume "
        "(the other flags are taken from the run) ends bit-identical to one never stopped.",
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
                      help="continue the run whose checkpoints are in the checkpoint folder, "
                           "from the newest that verifies (damaged ones are skipped with a "
                           "warning), with that run's flags; without a checkpoint, start afresh")


def add_data_arguments(group: Any) -> None:
    """Adds the flags that choose the data (``--dataset`` ... ``--scaling``) to ``group``, an
    argument parser or group."""
    group.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist",
                       help="which dataset to train on")
    group.add_argument("--data-dir", default=None,
                       help="folder holding the four IDX files (else JAXTRICKS_DATA_DIR, the "
                            "cache, system paths, then download)")
    group.add_argument("--train-examples", type=int, default=None,
                       help="train on the first N training images only (default: all but the "
                            "validation images)")
    group.add_argument("--validation-examples", type=int, default=5000,
                       help="hold out the last N training images as validation data (0: none; "
                            "then --monitor must be a training metric)")
    group.add_argument("--scaling", choices=("standardize", "unit", "raw"), default="standardize",
                       help="inputs: standardize with training statistics, scale to [0,1], or "
                            "raw 0-255")


def add_model_arguments(group: Any) -> None:
    """Adds the flags that define the model (``--model`` ... ``--initializer``) to ``group``."""
    group.add_argument("--model", choices=tuple(MODELS), default="cnn", help="architecture")
    group.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                       help="batch normalization after the weights, before the activation")
    group.add_argument("--dropout", type=float, default=0.1, help="dropout rate in [0, 1)")
    group.add_argument("--activation", choices=tuple(ACTIVATIONS), default="relu",
                       help="activation function")
    group.add_argument("--initializer", default="he_normal",
                       help=f"kernel initializer, one of: {', '.join(initializers.NAMES)}")


def add_optimizer_arguments(group: Any, *, schedule: bool = True) -> None:
    """Adds the optimizer flags to ``group``; with ``schedule``, the learning rate and its
    schedule too (``--learning-rate``, ``--schedule``, ``--decay-factor``, ``--step-epochs``,
    ``--warmup-epochs``)."""
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="optimizer (momentum_lesson: v <- g*v - lr*grad, w <- w + v)")
    if schedule:
        group.add_argument("--learning-rate", type=float, default=2e-3,
                           help="peak learning rate")
    group.add_argument("--momentum", type=float, default=0.9,
                       help="momentum for momentum, momentum_lesson, nesterov, rmsprop")
    if schedule:
        group.add_argument("--schedule", choices=SCHEDULES, default="one_cycle",
                           help="learning-rate schedule over the run")
        group.add_argument("--decay-factor", type=float, default=0.98,
                           help="per_epoch: multiply the rate by this after each epoch; step: "
                                "the factor every --step-epochs epochs")
        group.add_argument("--step-epochs", type=int, default=1, help="step schedule period")
        group.add_argument("--warmup-epochs", type=float, default=1.0,
                           help="warmup_cosine: epochs of linear warm-up")
    group.add_argument("--clip", choices=CLIPPING, default="none", help="gradient clipping")
    group.add_argument("--clip-threshold", type=float, default=1.0,
                       help="clipping threshold (the lesson suggests 1 or 10)")
    group.add_argument("--weight-decay", type=float, default=0.0,
                       help="decoupled weight decay for adamw, coupled L2 for the others")


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


def _check(condition: bool, flag: str, expected: str, value: Any) -> None:
    if not condition:
        raise CommandError(f"{flag} must be {expected}, got {value!r}")


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def validate(args: argparse.Namespace) -> None:
    """Checks every flag's value on its own; ``CommandError`` names the first bad flag."""
    _check(args.epochs >= 1, "--epochs", "an integer >= 1", args.epochs)
    _check(args.batch_size >= 1, "--batch-size", "an integer >= 1", args.batch_size)
    _check(0 <= args.seed < SEED_LIMIT, "--seed", "an integer in [0, 2**63)", args.seed)
    _check(_finite(args.learning_rate) and args.learning_rate >= 0, "--learning-rate",
           "a finite number >= 0", args.learning_rate)
    _check(_finite(args.momentum) and 0 <= args.momentum <= 1, "--momentum",
           "a number in [0, 1]", args.momentum)
    _check(_finite(args.decay_factor) and 0 < args.decay_factor <= 1, "--decay-factor",
           "a number in (0, 1]", args.decay_factor)
    _check(args.step_epochs >= 1, "--step-epochs", "an integer >= 1", args.step_epochs)
    _check(_finite(args.warmup_epochs) and args.warmup_epochs >= 0, "--warmup-epochs",
           "a finite number >= 0", args.warmup_epochs)
    _check(_finite(args.clip_threshold) and args.clip_threshold > 0, "--clip-threshold",
           "a finite number > 0", args.clip_threshold)
    _check(_finite(args.weight_decay) and args.weight_decay >= 0, "--weight-decay",
           "a finite number >= 0", args.weight_decay)
    _check(_finite(args.dropout) and 0 <= args.dropout < 1, "--dropout", "a number in [0, 1)",
           args.dropout)
    _check(args.initializer in initializers.NAMES, "--initializer",
           f"one of {', '.join(initializers.NAMES)}", args.initializer)
    if args.train_examples is not None:
        _check(args.train_examples >= 1, "--train-examples", "an integer >= 1",
               args.train_examples)
    _check(args.validation_examples >= 0, "--validation-examples", "an integer >= 0",
           args.validation_examples)
    if args.test_examples is not None:
        _check(args.test_examples >= 1, "--test-examples", "an integer >= 1", args.test_examples)
    if args.early_stopping is not None:
        _check(args.early_stopping >= 1, "--early-stopping", "an integer >= 1",
               args.early_stopping)
    if args.ema is not None:
        _check(_finite(args.ema) and 0 <= args.ema <= 1, "--ema", "a number in [0, 1]", args.ema)
    if args.swa_start is not None:
        _check(args.swa_start >= 1, "--swa-start", "an integer >= 1", args.swa_start)
    _check(args.precision in PRECISIONS, "--precision", f"one of {', '.join(PRECISIONS)}",
           args.precision)
    _check(_finite(args.label_smoothing) and 0 <= args.label_smoothing <= 1,
           "--label-smoothing", "a number in [0, 1]", args.label_smoothing)
    if args.mixup is not None:
        _check(_finite(args.mixup) and args.mixup > 0, "--mixup", "a finite number > 0",
               args.mixup)
    if args.ema is not None and args.swa_start is not None:
        raise CommandError("--ema and --swa-start are two averages: give one of them")
    if args.monitor.endswith("_averaged") and args.ema is None and args.swa_start is None:
        raise CommandError(f"--monitor {args.monitor} watches averaged weights: add --ema or "
                           "--swa-start")
    if args.early_stopping is not None and args.monitor.startswith("val_") and (
            args.validation_examples == 0):
        raise CommandError(f"--monitor {args.monitor} needs validation images: set "
                           "--validation-examples above 0, or --monitor loss")
    if args.shard_optimizer_state and args.devices == 1:
        raise CommandError("--shard-optimizer-state needs --devices other than 1")
    _validate_job(args)
    if args.checkpoint_every_steps is not None:
        _check(args.checkpoint_every_steps >= 1, "--checkpoint-every-steps", "an integer >= 1",
               args.checkpoint_every_steps)
    if args.checkpoint_every_epochs is not None:
        _check(args.checkpoint_every_epochs >= 0, "--checkpoint-every-epochs",
               "an integer >= 0", args.checkpoint_every_epochs)
    if args.keep_checkpoints is not None:
        _check(args.keep_checkpoints >= 1, "--keep-checkpoints", "an integer >= 1",
               args.keep_checkpoints)
    for flag, path in (("--out", args.out), ("--checkpoint-dir", args.checkpoint_dir),
                       ("--data-dir", args.data_dir)):
        if path is not None:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                raise CommandError(f"{flag} must be a UTF-8 path, got {path!r}") from None


JOB_FLAGS = (("coordinator_address", "--coordinator-address"),
             ("num_processes", "--num-processes"), ("process_id", "--process-id"))


def _validate_job(args: argparse.Namespace) -> None:
    """Checks the flags of a job of several processes (on their own: JAX checks the job)."""
    if args.coordinator_address is not None:
        host, _, port = args.coordinator_address.rpartition(":")
        _check(bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
               "--coordinator-address", "HOST:PORT with a port in [1, 65535]",
               args.coordinator_address)
    if args.num_processes is not None:
        _check(args.num_processes >= 1, "--num-processes", "an integer >= 1", args.num_processes)
    if args.process_id is not None:
        high = "N - 1" if args.num_processes is None else args.num_processes - 1
        _check(args.process_id >= 0 and (args.num_processes is None
                                         or args.process_id < args.num_processes),
               "--process-id", f"an integer in [0, {high}]", args.process_id)
    given = [flag for dest, flag in JOB_FLAGS if getattr(args, dest) is not None]
    if given and args.distributed == "off" and len(given) < len(JOB_FLAGS):
        missing = [flag for dest, flag in JOB_FLAGS if getattr(args, dest) is None]
        raise CommandError(
            f"{given[0]} needs {' and '.join(missing)} too (or --distributed auto, to have "
            "JAX detect them from the cluster)"
        )
    if distributed_wanted(args):
        _check(args.devices == 0, "--devices",
               "'all' (every process's devices) in a job of several processes", args.devices)


def distributed_wanted(args: argparse.Namespace) -> bool:
    """Whether the flags ask to join a job of several processes."""
    return args.distributed == "auto" or any(
        getattr(args, dest) is not None for dest, _ in JOB_FLAGS)


def join_job(args: argparse.Namespace) -> None:
    """Joins the job the flags describe (:func:`jaxtricks.backend.initialize_distributed`);
    ``CommandError`` in one line when that fails (no cluster detected, no coordinator)."""
    try:
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    except Exception as err:  # JAX's errors for a job that cannot start vary
        flag = "--distributed auto" if args.distributed == "auto" else "--coordinator-address"
        raise CommandError(
            f"{flag}: could not join the job: {_one_line(err)}"
            + (" (give --coordinator-address, --num-processes and --process-id where JAX "
               "detects no cluster)" if args.distributed == "auto" else "")
        ) from None


def checkpoints_wanted(args: argparse.Namespace) -> bool:
    """Whether any checkpoint flag was given."""
    flags = (args.checkpoint_dir, args.checkpoint_every_steps, args.checkpoint_every_epochs,
             args.keep_checkpoints)
    return args.resume or any(flag is not None for flag in flags)


def checkpoint_directory(args: argparse.Namespace) -> str:
    """``--checkpoint-dir``, or ``<--out>/checkpoints``."""
    return args.checkpoint_dir or os.path.join(args.out, "checkpoints")


def _check_writable(flag: str, directory: str) -> None:
    """Creates ``directory`` if needed and proves it writable, before any training."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CommandError(f"{flag} {directory} is a file, not a folder: choose another {flag}")
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise CommandError(
            f"{flag} {directory} cannot be written ({err.strerror or err}): choose another {flag}"
        ) from None


def prepare_output(args: argparse.Namespace, given: set[str]) -> str | None:
    """Checks ``--out`` and the checkpoint folder before any training, and with ``--resume``
    takes the resumed run's flags (``CommandError`` when a given one differs).

    Returns:
        Where :class:`SaveArguments` is to write the run's flags once the run has begun (a
        command that fails before leaves no file behind); None without checkpoints.
    """
    _check_writable("--out", args.out)
    if not checkpoints_wanted(args):
        return None
    directory = checkpoint_directory(args)
    flag = "--checkpoint-dir" if args.checkpoint_dir else "--out"
    _check_writable(flag, directory)
    steps = CheckpointManager(directory).steps()
    saved_path = os.path.join(directory, ARGUMENTS_FILE)
    if steps and not args.resume:
        raise CommandError(
            f"{flag}: {directory} already holds the checkpoints of steps {steps}: pass --resume "
            "to continue that run, or choose another --out or --checkpoint-dir"
        )
    if args.resume and os.path.exists(saved_path):
        try:
            with open(saved_path, encoding="utf-8") as file:
                saved = json.load(file)
        except (OSError, ValueError) as err:
            raise CommandError(f"--resume: cannot read {saved_path}: {err}") from None
        for dest, value in saved.items():
            if dest in RESUME_FREE or not hasattr(args, dest):
                continue
            if dest in given and getattr(args, dest) != value:
                flag_name = "--" + dest.replace("_", "-")
                raise CommandError(
                    f"{flag_name} {getattr(args, dest)!r} differs from the resumed run's "
                    f"{value!r}: resume with the same value, or leave {flag_name} out to take "
                    "the run's own"
                )
            setattr(args, dest, value)
        validate(args)
    return saved_path


class SaveArguments(Hook):
    """Writes the flags that define the run (all but :data:`RESUME_FREE`) to ``path``, where a
    later ``--resume`` takes them from, once the run has begun: after the checkpoint hook
    (order 80) has resumed it or found nothing to resume. Process 0 alone writes it."""

    order = 85

    def __init__(self, args: argparse.Namespace, path: str):
        self.args, self.path = args, path

    def on_train_begin(self, run: Any) -> None:
        del run
        if jax.process_index() != 0:
            return
        args = self.args
        flags = {k: v for k, v in vars(args).items() if k not in RESUME_FREE and _jsonable(v)}
        try:
            write_json(self.path, flags)
        except OSError as err:
            flag = "--checkpoint-dir" if args.checkpoint_dir else "--out"
            raise CommandError(
                f"{flag} {os.path.dirname(self.path)} cannot be written ({err.strerror or err})"
            ) from None


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


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
    """Clipping → (coupled L2) → optimizer, as the flags ask, with the learning rate injected
    (``optax.inject_hyperparams``) so that the history records it."""
    name, kwargs = args.optimizer, {}
    if name == "adamw":
        kwargs["weight_decay"] = args.weight_decay
    if name in ("momentum", "nesterov"):
        kwargs["momentum"] = args.momentum
    elif name == "momentum_lesson":
        name, kwargs = "momentum", {"momentum": args.momentum, "form": "lesson"}
    elif name == "rmsprop" and args.momentum > 0:
        kwargs["momentum"] = args.momentum

    def make(learning_rate):
        stages = []
        if args.clip == "value":
            stages.append(clip_by_value(args.clip_threshold))
        elif args.clip == "norm":
            stages.append(clip_by_norm(args.clip_threshold))
        elif args.clip == "global_norm":
            stages.append(clip_by_global_norm(args.clip_threshold))
        if args.optimizer != "adamw" and args.weight_decay > 0:
            stages.append(add_l2_penalty(args.weight_decay))
        stages.append(optimizers.get(name, learning_rate, **kwargs))
        if args.gradient_health:
            # First and last, so they see the raw gradient and the update applied.
            stages = [gradient_health(), *stages, update_health()]
        return optax.chain(*stages) if len(stages) > 1 else stages[0]

    return optax.inject_hyperparams(make)(learning_rate=schedule)


def build_hooks(args: argparse.Namespace) -> list[Any]:
    """The hooks the flags ask for: early stopping and weight averaging."""
    hooks: list[Any] = []
    if args.early_stopping is not None:
        hooks.append(EarlyStoppingHook(args.monitor, patience=args.early_stopping))
    if args.ema is not None:
        hooks.append(AveragingHook(ema_params(args.ema)))
    if args.swa_start is not None:
        hooks.append(AveragingHook(swa_params(start=args.swa_start)))
    return hooks


def build_model(args: argparse.Namespace) -> nn.Module:
    """The model the flags describe."""
    return MODELS[args.model](
        use_batch_norm=args.batch_norm,
        dropout_rate=args.dropout,
        activation=ACTIVATIONS[args.activation],
        kernel_init=initializers.get(args.initializer),
    )


def build_mesh(args: argparse.Namespace) -> Mesh | None:
    """The data-parallel mesh ``--devices`` asks for; None for one device, no mesh. In a job of
    several processes (``--devices all``) it spans every process's devices."""
    if args.devices == 1:
        return None
    available = jax.device_count()
    _check(args.devices <= available, "--devices",
           f"at most the {available} devices JAX sees", args.devices)
    mesh = make_mesh(args.devices or None)
    _check(args.batch_size % mesh.size == 0, "--batch-size",
           f"divisible by the {mesh.size} devices of --devices", args.batch_size)
    return mesh


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Trains as the flags say; returns the exit status (2 after a one-line error)."""
    del parser
    try:
        return _train(args)
    except CommandError as err:
        print(f"jaxtricks train: error: {err}", file=sys.stderr)
        return 2


def split_data(args: argparse.Namespace) -> Splits:
    """The splits the data flags ask for; ``CommandError`` naming the flag when they cannot be
    loaded or a count is out of range."""
    try:
        data = load_splits(args.dataset, train_examples=args.train_examples,
                           validation_examples=args.validation_examples,
                           test_examples=args.test_examples, scaling=args.scaling,
                           data_dir=args.data_dir)
    except (DatasetNotFoundError, IdxFormatError) as err:
        flag = f"--data-dir {args.data_dir}" if args.data_dir else f"--dataset {args.dataset}"
        raise CommandError(f"{flag}: {_one_line(err)}") from None
    except ValueError as err:  # a count out of range: name it as a flag
        name = str(err).split(" ", 1)[0]
        raise CommandError(f"--{name.replace('_', '-')} {str(err)[len(name) + 1:]}") from None
    _check(args.batch_size <= data.train_x.shape[0], "--batch-size",
           f"at most the {data.train_x.shape[0]} training images", args.batch_size)
    return data


def _one_line(err: Exception) -> str:
    """An error's message on one line: its first line, then the others joined by "; "."""
    lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
    return " ".join([*lines[:1], "; ".join(lines[1:])]).strip()


def _train(args: argparse.Namespace) -> int:
    given: set[str] = getattr(args, "given", set())
    job = distributed_wanted(args)
    if job and "devices" not in given:
        args.devices = 0
    validate(args)
    if job:
        join_job(args)
    arguments_path = prepare_output(args, given)
    leader = jax.process_index() == 0
    mesh = build_mesh(args)
    data = split_data(args)
    validation = (data.val_x, data.val_y) if args.validation_examples else None
    steps_per_epoch = data.train_x.shape[0] // args.batch_size
    model = build_model(args)
    try:
        schedule = build_schedule(args, steps_per_epoch)
    except ValueError as err:  # too few steps for the schedule's shape
        raise CommandError(
            f"--schedule {args.schedule} cannot span {args.epochs * steps_per_epoch} steps "
            f"(--epochs × training images / --batch-size): {err}"
        ) from None
    optimizer = build_optimizer(args, schedule)
    processes = jax.process_count()
    if leader:
        print(
            f"{args.dataset}: {data.train_x.shape[0]} train / {data.val_x.shape[0]} validation / "
            f"{data.test_x.shape[0]} test images from {data.source}; {args.model} on "
            f"{jax.default_backend()} ({jax.devices()[0].device_kind}"
            f"{'' if mesh is None else f' x{mesh.size}'}"
            f"{f' over {processes} processes' if processes > 1 else ''})",
            file=sys.stderr,
        )
    started = time.perf_counter()

    def stamp_elapsed(state: Any, record: Any) -> bool:
        del state
        record.metrics["elapsed_s"] = time.perf_counter() - started
        return False

    metrics_path = os.path.join(args.out, "metrics.json")
    hooks = [EvaluationHook("test", data.test_x, data.test_y), *build_hooks(args),
             LambdaHook(stamp_elapsed),
             MetricsFileHook(metrics_path)]
    if checkpoints_wanted(args):
        every_epochs = 1 if args.checkpoint_every_epochs is None else args.checkpoint_every_epochs
        hooks.append(CheckpointHook(
            checkpoint_directory(args),
            every_epochs=every_epochs or None,
            every_steps=args.checkpoint_every_steps,
            keep=3 if args.keep_checkpoints is None else args.keep_checkpoints,
            resume=args.resume,
        ))
        assert arguments_path is not None  # prepare_output gives one when checkpoints are wanted
        hooks.append(SaveArguments(args, arguments_path))
    # fp32 casts nothing (the data are float32): None, as runs before --precision existed.
    precision = None if args.precision == "fp32" else args.precision
    objective: dict[str, Any] = {}
    if args.label_smoothing:
        objective = {"loss_fn": smoothed_cross_entropy(args.label_smoothing),
                     "metrics": {"accuracy": accuracy}}
    batch_transform = None
    if args.mixup is not None:
        batch_transform = mixup(args.mixup, model.num_classes)
    try:
        state, history = fit(
            model, optimizer, data.train_x, data.train_y, validation_data=validation,
            epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, runner=args.runner, mesh=mesh,
            shard_optimizer_state=args.shard_optimizer_state, progress=args.progress,
            callbacks=hooks, precision=precision, batch_transform=batch_transform, **objective,
        )
    except CheckpointSaveError as err:
        raise CommandError(
            f"{'--checkpoint-dir' if args.checkpoint_dir else '--out'}: {err}; the metrics "
            f"of every finished epoch are in {metrics_path}. Free space or choose another "
            "--checkpoint-dir, then run again with --resume"
        ) from None
    except OSError as err:
        raise CommandError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    except ValueError as err:
        # The checkpoints were saved by another run than the flags describe (arguments.json
        # missing or edited): say so in one line; any other ValueError is a bug to show whole.
        if not str(err).startswith("resume:"):
            raise
        raise CommandError(f"--resume: {_one_line(err).removeprefix('resume: ')}") from None
    history.header["wall_time_s"] = time.perf_counter() - started
    history.header["arguments"] = {k: v for k, v in vars(args).items() if _jsonable(v)}
    history.header["dataset_source"] = data.source
    final = evaluate(make_eval_step(model, mesh=mesh, precision=precision), state, data.test_x,
                     data.test_y, batch_size=args.batch_size)
    history.header["final_test"] = final
    if not leader:
        return 0
    try:
        write_json(metrics_path, history.to_dict())
    except OSError as err:
        raise CommandError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    if args.plot:
        _plot(args, history)
    _print_summary(history, final, metrics_path)
    return 0


def _plot(args: argparse.Namespace, history: History) -> None:
    try:
        from jaxtricks.cli.plots import plot_history
        plot_history(history, os.path.join(args.out, "curves.png"))
        if args.gradient_health:
            from jaxtricks.cli.diagnostics_plot import plot_gradient_norms

            plot_gradient_norms(
                [record.info["health"]["module_grad_norms"] for record in history.epochs],
                os.path.join(args.out, "gradient_norms.png"),
                steps=[record.epoch for record in history.epochs],
                title="gradient norm per layer at each epoch's last step",
                xlabel="epoch",
            )
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib, or the "
              "jaxtricks[plots] extra); the metrics are in metrics.json", file=sys.stderr)


def _print_summary(history: History, final: dict[str, float], path: str) -> None:
    reached = [r for r in history.epochs if r.metrics.get("test_accuracy", 0.0) >= 0.99]
    skipped = sum(record.skipped_steps for record in history.epochs)
    steps = sum(1 for _ in history.epochs) * history.header["steps_per_epoch"]
    stopping = history.header.get("early_stopping", {})
    summary = {
        "test_accuracy": final.get("accuracy"),
        "test_loss": final["loss"],
        "val_accuracy": history.epochs[-1].metrics.get("val_accuracy"),
        "epochs": len(history.epochs),
        "best_epoch": stopping.get("best_epoch"),
        # wall time from the start of training (compilation included) to the end of the
        # first epoch whose test accuracy reached 99% (a measurement, not a choice)
        "time_to_99_s": round(reached[0].metrics["elapsed_s"], 1) if reached else None,
        "wall_time_s": round(history.header["wall_time_s"], 1),
        "compile_time_s": round(history.header["compile_time_s"], 1),
        "skipped_steps": skipped,
        "metrics": path,
    }
    print(json.dumps(strict_json(summary), allow_nan=False))
    if steps and skipped > steps / 2:
        print(f"warning: {skipped} of {steps} steps were skipped because they would have "
              "written NaN or Inf: the run diverged; lower --learning-rate or add --clip",
              file=sys.stderr)


def explicit_destinations(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags written out in ``argv`` (``--flag value``,
    ``--flag=value``, or a prefix argparse takes for the flag, ``--se 3``), to tell a given flag
    from a default."""
    options = {
        option: action.dest
        for action in parser._actions  # argparse offers no public listing of its actions
        for option in action.option_strings
    }
    given = set()
    for token in argv:
        name = token.split("=", 1)[0]
        if name in options:
            given.add(options[name])
        elif name.startswith("--"):
            destinations = {dest for option, dest in options.items() if option.startswith(name)}
            if len(destinations) == 1:
                given |= destinations
    return given
