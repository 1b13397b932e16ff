"""``fit``: train any Flax model with any Optax optimizer and loss for a number of epochs.

``fit`` composes the public pieces of this package and nothing else: the train and eval steps
(:mod:`~jaxtricks.training.steps`), an epoch runner (:mod:`~jaxtricks.training.epochs`) and
hooks (:mod:`~jaxtricks.training.hooks`). Each epoch trains on ⌊N / B⌋ batches in a fresh
order — epoch e visits permutation(fold_in(k_data, e)) — then evaluates the validation data,
records the epoch and runs the hooks. The history records, per epoch, the means over the
epoch's applied steps (skipped non-finite steps are counted apart),

    loss_e = (1/A_e) Σ_{applied steps t of e} L_t,   and likewise each metric,

and the validation loss and metrics over every validation example. Same seed, same data and
same arguments give the same history (timings aside) and bit-identical parameters.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxtricks.backend import speed_paths
from jaxtricks.backend.paths import RUNNERS
from jaxtricks.training.epochs import (
    EpochRunner,
    choose_runner,
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
)
from jaxtricks.training.history import EpochRecord, History
from jaxtricks.training.hooks import (
    HealthHook,
    Hook,
    LambdaHook,
    ProgressHook,
    Run,
    learning_rate_of,
    mean_totals,
)
from jaxtricks.training.model import functional_model
from jaxtricks.training.precision import LossScaleState, Precision, as_precision
from jaxtricks.training.sharding import check_divisible, replicate, shard_dataset, shard_train_state
from jaxtricks.training.state import TrainState, as_optimizer, create_train_state
from jaxtricks.training.steps import (
    BatchTransform,
    LossFn,
    check_batch_transform,
    check_examples,
    check_labels,
    check_sharding_arguments,
    check_skip_nonfinite,
    evaluate,
    make_eval_step,
    make_objective,
    make_train_step,
)

__all__ = ["PAUSE_EVERY", "fit", "make_hooks", "split_validation", "train_epochs"]

# Steps between pauses inside an epoch (progress updates; one call of the "scan" runner).
PAUSE_EVERY = 50


def fit(
        model: Any,
        optimizer: Any,
        x: Any,
        y: Any,
        *,
        epochs: int,
        batch_size: int = 128,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
        callbacks: Iterable[Hook | Callable[..., Any]] = (),
        seed: int = 0,
        initial_state: TrainState | None = None,
        skip_nonfinite: bool | Literal["strict"] = True,
        mesh: Mesh | None = None,
        shard_optimizer_state: bool = False,
        progress: bool = True,
        runner: str | None = None,
        precision: Precision | str | None = None,
        batch_transform: BatchTransform | None = None,
) -> tuple[TrainState, History]:
    """Trains ``model`` on ``(x, y)`` with ``optimizer`` for ``epochs`` epochs.

    Args:
        model: a ``flax.linen.Module`` or a ``flax.nnx.Module``. Its ``__call__`` takes the
            inputs and may take a flag ``train``, ``training`` or ``deterministic`` (see
            :mod:`~jaxtricks.training.model`); batch statistics, dropout and other state are
            handled for both. An NNX module is updated in place with the trained state at the
            end (and left in ``eval()`` mode).
        optimizer: an Optax transformation, or an object making one such as
            ``optax.MultiSteps``. Wrap it in ``optax.inject_hyperparams`` to have the learning
            rate recorded.
        x: the training inputs: an array or a pytree of arrays with a leading axis of N
            examples (already scaled).
        y: the targets, likewise: integer labels for the default loss, anything ``loss_fn``
            takes otherwise (``y = x`` for an autoencoder).
        epochs: epochs to train, >= 1.
        batch_size: examples per step, in [1, N]; the N mod batch_size examples left over are
            dropped each epoch (a different few each time). Also the evaluation batch size.
        validation_data: ``(x_val, y_val)`` evaluated after each epoch (``val_loss``,
            ``val_<metric>``); what early stopping and the other choices watch.
        validation_split: a fraction in [0, 1) of ``(x, y)`` to hold out as validation data
            instead: the last rows, taken before any shuffling (as Keras does).
        loss_fn: ``loss_fn(outputs, y_batch) -> (B,)`` per-example losses; None: softmax
            cross-entropy of the outputs (logits) against integer labels.
        metrics: ``{name: fn(outputs, y_batch) -> (B,) values}``, averaged like the loss;
            None: ``{"accuracy": ...}`` with the default loss, nothing otherwise.
        callbacks: hooks (:mod:`~jaxtricks.training.hooks`,
            :class:`~jaxtricks.training.checkpoint.CheckpointHook`) and plain functions
            ``fn(state, record) -> bool`` called after each epoch (a true result stops the
            run). Every hook receives a state that stays valid after the next epoch.
        seed: a non-negative int; (k_init, k_data) = split(key(seed)): a Linen model's initial
            state comes from k_init, the data order of epoch e is permutation(fold_in(k_data, e)).
        initial_state: a state to continue from instead of a fresh one; its step must be a
            whole number of epochs of this batch size, and epoch numbers continue from there.
        skip_nonfinite: skip the steps whose loss, gradients' global norm or new model
            state is not finite; ``"strict"``: also those that would write a new NaN or Inf
            into the parameters or optimizer state (one more pass over the state per step;
            True takes that test too for parameters or optimizer state held in a dtype of
            smaller range than float32, such as float16 or bfloat16);
            False: none (see :func:`~jaxtricks.training.steps.make_train_step`). Skipped steps
            are counted per epoch (``skipped_steps``).
        mesh: a 1-D mesh (:func:`~jaxtricks.training.sharding.make_mesh`) to train on in data
            parallel; ``batch_size`` must divide by its number of devices. Same seed, same run
            as on one device, up to float32 summation order. A mesh over several processes'
            devices (after ``jax.distributed.initialize()``) works alike: every process calls
            ``fit`` with the same arguments and data, and each keeps only its devices' rows
            of ``x`` and ``y`` on them (docs/multi_device.md).
        shard_optimizer_state: with a mesh, split the optimizer state across the devices
            (ZeRO-1).
        progress: show a progress bar (tqdm, when installed) or one line per epoch on stderr
            (process 0's only, in a job of several processes).
        runner: ``"loop"``, ``"scan"`` or ``"auto"`` (time both, keep the faster); None takes
            the backend's choice (:func:`jaxtricks.backend.speed_paths`). All give
            bit-identical results.
        precision: a mixed-precision policy (:mod:`~jaxtricks.training.precision`), a
            ``Precision`` or ``"fp32"``, ``"bf16"``, ``"fp16"``: training and evaluation
            compute in its compute dtype, parameters and optimizer state stay float32; with
            ``"fp16"``'s loss scale, the steps whose scaled gradients overflowed are skipped
            and counted per epoch as the metric ``overflow_steps`` (not in ``skipped_steps``).
            None: nothing is cast.
        batch_transform: ``batch_transform(key, (x, y)) -> (x, y)`` applied to each training
            batch (e.g. :func:`~jaxtricks.tricks.soft_targets.mixup`, whose soft targets the
            default loss and accuracy take), with a key of its own per step (see
            :func:`~jaxtricks.training.steps.make_train_step`). Validation data is not
            transformed.

    Returns:
        ``(state, history)``: the final :class:`~jaxtricks.training.state.TrainState` (with
        the best epoch's weights when an early-stopping hook keeps them) and the
        :class:`~jaxtricks.training.history.History`.

    Examples:
        >>> import flax.linen as nn, jax.numpy as jnp, optax
        >>> y = jnp.arange(64) % 2
        >>> x = jnp.where(y[:, None] == 1, 1.0, -1.0) * jnp.ones((64, 4))
        >>> state, history = fit(nn.Dense(2), optax.sgd(0.1), x, y, epochs=2, batch_size=16,
        ...                      validation_split=0.25, progress=False)
        >>> [record.epoch for record in history.epochs], int(state.step)
        ([1, 2], 6)
        >>> history["val_accuracy"][-1]
        1.0
    """
    fm = functional_model(model)
    tx = as_optimizer(optimizer)
    objective = make_objective(loss_fn, metrics)
    (x, y), validation = split_validation(x, y, validation_data, validation_split)
    num_examples = check_examples(("x", x), ("y", y))
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1, num_examples)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    check_skip_nonfinite(skip_nonfinite)
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be a bool, got {progress!r}")
    check_sharding_arguments(mesh, shard_optimizer_state)
    if mesh is not None:
        check_divisible("batch_size", batch_size, mesh)
    precision = as_precision(precision)
    check_batch_transform(batch_transform)
    paths = speed_paths()
    runner = paths.runner if runner is None else runner
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS} or None, got {runner!r}")
    hooks = make_hooks(callbacks, progress)
    if initial_state is not None and not isinstance(initial_state, TrainState):
        raise ValueError(f"initial_state must be a TrainState, got {type(initial_state).__name__}")
    scaled = precision is not None and precision.loss_scale is not None
    if initial_state is not None and scaled != isinstance(initial_state.opt_state,
                                                          LossScaleState):
        raise ValueError(
            f"initial_state: its opt_state {'lacks' if scaled else 'holds'} a loss scale, but "
            f"precision {precision} {'scales' if scaled else 'does not scale'} the loss; "
            "continue a run with the precision it was trained with"
        )

    init_key, data_key = jax.random.split(jax.random.key(seed))
    data = shard_dataset((x, y), mesh) if mesh is not None else jax.device_put((x, y))
    if validation is not None:
        validation = replicate(validation, mesh) if mesh is not None else jax.device_put(validation)
    sample = jax.tree.map(lambda leaf: leaf[:1], data[0])
    state = initial_state or _create_state(fm, tx, init_key, sample, precision)
    if mesh is not None:
        state = shard_train_state(state, mesh, shard_optimizer_state=shard_optimizer_state)
    labels = (("y", y), ("validation y", None if validation is None else validation[1]))
    _check_model_outputs(fm, state, sample, objective, labels, precision)
    steps_per_epoch = num_examples // batch_size
    if int(state.step) % steps_per_epoch:
        raise ValueError(
            f"initial_state: its step {int(state.step)} is not a whole number of epochs of "
            f"{steps_per_epoch} steps (batch_size={batch_size}); continue it with the batch "
            "size it was trained with"
        )

    train_step = make_train_step(fm, tx, loss_fn=loss_fn, metrics=metrics,
                                 skip_nonfinite=skip_nonfinite, mesh=mesh,
                                 shard_optimizer_state=shard_optimizer_state,
                                 precision=precision, batch_transform=batch_transform)
    eval_step = make_eval_step(fm, loss_fn=loss_fn, metrics=metrics, mesh=mesh,
                               precision=precision)
    indices = epoch_indices(data_key, 1, num_examples, batch_size)
    if runner == "auto":
        epoch_runner, choice = choose_runner(train_step, state, data, indices)
    else:
        epoch_runner = compile_epoch_runner(train_step, runner, state, data, indices)
        choice = {"runner": runner, "step_time_s": None}
    first_epoch = int(state.step) // steps_per_epoch
    run = Run(
        model=fm,
        state=state,
        history=History(),
        epoch=first_epoch,
        first_epoch=first_epoch,
        last_epoch=first_epoch + epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        # Without the rows shard_dataset pads with (the same arrays when there are none).
        train_data=jax.tree.map(lambda leaf: leaf[:num_examples], data),
        evaluation_sets={} if validation is None else {"val": validation},
        evaluate=lambda s, d: evaluate(eval_step, s, *d, batch_size=batch_size),
        config={
            "seed": seed,
            "batch_size": batch_size,
            "train_examples": num_examples,
            "validation_examples": 0 if validation is None else check_examples(("", validation)),
            "skip_nonfinite": skip_nonfinite,
            "precision": None if precision is None else str(precision),
            "batch_transform": None if batch_transform is None else getattr(
                batch_transform, "__name__", repr(batch_transform)),
        },
        zero_totals=epoch_runner.zero_totals,
        hooks=hooks,
    )
    device = jax.devices()[0]
    run.history.header = {
        **run.config,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "speed_paths": paths._asdict(),
        "runner": choice["runner"],
        "runner_step_time_s": choice["step_time_s"],
        "compile_time_s": epoch_runner.compile_time_s,
        "data_parallel_devices": 1 if mesh is None else mesh.size,
        "shard_optimizer_state": shard_optimizer_state,
        "loss": getattr(objective.loss_fn, "__name__", repr(objective.loss_fn)),
        "metrics": [name for name, _ in objective.metrics],
    }

    train_epochs(run, epoch_runner, data, data_key)
    if fm.kind == "nnx":
        from flax import nnx

        nnx.update(fm.module, run.state.params, run.state.model_state)
    return run.state, run.history


def train_epochs(run: Run, epoch_runner: EpochRunner, data: Any, data_key: jax.Array) -> Run:
    """The epoch loop: trains ``run`` from ``run.epoch`` up to ``run.last_epoch``, with hooks.

    For each epoch e: the hooks' ``on_epoch_begin``; the epoch's steps on the batches
    ``epoch_indices(data_key, e, N, B)``, pausing every :data:`PAUSE_EVERY` steps and where a
    hook asks (``on_pause``); a record of the means over the applied steps and the evaluation
    of every set in ``run.evaluation_sets`` (as ``<set>_<metric>``), appended to the history;
    the hooks' ``on_epoch_end``. It stops early once a hook sets ``run.stop_training``; the
    hooks' ``on_train_begin`` and ``on_train_end`` come first and last. A totals array of
    several values (one per ensemble member) is recorded as its mean, with the values in
    ``record.info``.

    Args:
        run: the run, its state placed for ``epoch_runner``.
        epoch_runner: from :func:`~jaxtricks.training.epochs.compile_epoch_runner`.
        data: the training set ``(x, y)`` on the device.
        data_key: the key of the data order.

    Returns:
        ``run``, trained.
    """
    hooks = run.hooks
    num_examples = jax.tree.leaves(run.train_data)[0].shape[0]
    steps_per_epoch, batch_size = run.steps_per_epoch, run.batch_size
    for hook in hooks:
        hook.on_train_begin(run)
    # The scan runner always donates its state, the loop runner where the backend chose so;
    # hooks keep the state they saw valid, so a donating epoch trains on a copy.
    donates = epoch_runner.name == "scan" or speed_paths().donate_state
    while run.epoch < run.last_epoch and not run.stop_training:
        epoch = run.epoch + 1
        for hook in hooks:
            hook.on_epoch_begin(run, epoch)
        state = jax.tree.map(jnp.copy, run.state) if donates else run.state
        start = int(jnp.ravel(state.step)[0]) - (epoch - 1) * steps_per_epoch
        totals, run.resume_totals = run.resume_totals, None
        pauses = sorted({*range(PAUSE_EVERY, steps_per_epoch, PAUSE_EVERY), steps_per_epoch,
                         *(k for hook in hooks for k in hook.pause_steps(run, epoch))})
        indices = epoch_indices(data_key, epoch, num_examples, batch_size)
        elapsed = 0.0
        for stop in (k for k in pauses if k > start):
            begin = time.perf_counter()
            state, totals = run_epoch(epoch_runner, state, data, indices, start=start, stop=stop,
                                      totals=totals)
            jax.block_until_ready(totals)
            elapsed += time.perf_counter() - begin
            run.state, start = state, stop
            for hook in hooks:
                hook.on_pause(run, stop, totals)
        run.epoch = epoch
        metrics, info, skipped = mean_totals(jax.device_get(totals))
        record = EpochRecord(
            epoch=epoch,
            step=epoch * steps_per_epoch,
            metrics=metrics,
            learning_rate=learning_rate_of(run.state.opt_state),
            skipped_steps=skipped,
            epoch_time_s=elapsed,
            examples_per_s=steps_per_epoch * batch_size / elapsed if elapsed else math.nan,
            info=info,
        )
        if "val" in run.evaluation_sets:
            begin = time.perf_counter()
            record.add(run.evaluate(run.state, run.evaluation_sets["val"]), prefix="val_")
            record.eval_time_s = time.perf_counter() - begin
        run.history.epochs.append(record)
        for hook in hooks:
            hook.on_epoch_end(run, record)
    for hook in hooks:
        hook.on_train_end(run)
    return run


def split_validation(x: Any, y: Any, validation_data: Any, validation_split: Any
                     ) -> tuple[tuple[Any, Any], tuple[Any, Any] | None]:
    """``((x, y), validation)``: the training data and the validation data ``fit`` uses.

    With ``validation_split = f > 0`` the last ⌊f·N⌋ rows of every array of ``x`` and ``y``
    are held out (none may be left empty); with ``validation_data`` it is that pair; else None.

    Examples:
        >>> import numpy as np
        >>> (x, y), (x_val, y_val) = split_validation(np.arange(10.0), np.arange(10), None, 0.2)
        >>> x.shape, x_val.tolist()
        ((8,), [8.0, 9.0])
    """
    if isinstance(validation_split, bool) or not isinstance(validation_split, int | float):
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    if validation_data is not None:
        if validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValueError(
                "validation_data must be a pair (x_val, y_val), got "
                f"{type(validation_data).__name__}"
            )
        check_examples(("validation_data[0]", validation_data[0]),
                       ("validation_data[1]", validation_data[1]))
        return (x, y), tuple(validation_data)
    if not validation_split:
        return (x, y), None
    total = check_examples(("x", x), ("y", y))
    held = int(total * validation_split)
    if not 1 <= held < total:
        raise ValueError(
            f"validation_split={validation_split} of {total} examples holds out {held}; it must "
            "leave at least one example on each side"
        )

    def cut(tree, part):
        return jax.tree.map(lambda leaf: leaf[:total - held] if part == 0 else leaf[total - held:],
                            tree)

    return (cut(x, 0), cut(y, 0)), (cut(x, 1), cut(y, 1))


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return value


def make_hooks(callbacks: Any, progress: bool, *, health: bool = True) -> list[Hook]:
    """The hooks of a run, in the order they run: ``callbacks`` (functions wrapped in
    :class:`~jaxtricks.training.hooks.LambdaHook`), a
    :class:`~jaxtricks.training.hooks.HealthHook` when ``health`` and a
    :class:`~jaxtricks.training.hooks.ProgressHook` when ``progress`` (unless one is given),
    sorted by their ``order``.

    Examples:
        >>> [type(hook).__name__ for hook in make_hooks([lambda state, record: False], True)]
        ['LambdaHook', 'HealthHook', 'ProgressHook']
    """
    if isinstance(callbacks, Hook) or callable(callbacks):
        callbacks = [callbacks]
    hooks: list[Hook] = []
    for callback in callbacks:
        if isinstance(callback, Hook):
            hooks.append(callback)
        elif callable(callback):
            hooks.append(LambdaHook(callback))
        else:
            raise ValueError(
                f"callbacks must be hooks or functions (state, record) -> bool, got {callback!r}"
            )
    if health:
        hooks.append(HealthHook())
    if progress and not any(isinstance(hook, ProgressHook) for hook in hooks):
        hooks.append(ProgressHook())
    return sorted(hooks, key=lambda hook: hook.order)


def _create_state(fm, tx, key, sample, precision) -> TrainState:
    try:
        return create_train_state(fm, tx, key, sample, precision=precision)
    except Exception as err:
        raise ValueError(
            "model: fit initializes it on a batch of one example, then calls it as "
            f"{fm.call_description(True)} to train and {fm.call_description(False)} to "
            f"evaluate; initializing failed: {type(err).__name__}: {err}"
        ) from err


def _check_model_outputs(fm, state, sample, objective, labels, precision) -> None:
    """Calls the model once as training will (abstractly) so a model ``fit`` cannot use fails
    now, with a message saying how ``fit`` calls it; checks the labels for the default loss."""

    def call(s, x):
        params = s.params
        if precision is not None:
            params, x = precision.cast_to_compute((params, x))
        return fm.apply(params, s.model_state, x, train=True, key=s.rng)

    try:
        outputs, _ = jax.eval_shape(call, state, sample)
    except Exception as err:
        raise ValueError(
            f"model: fit calls it as {fm.call_description(True)}, which failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    if not objective.integer_labels:
        return
    if not isinstance(outputs, jax.ShapeDtypeStruct) or len(outputs.shape) != 2:
        raise ValueError(
            "model: the default loss (softmax cross-entropy) needs outputs of shape "
            f"(batch, classes), got {jax.tree.map(lambda o: o.shape, outputs)}; pass loss_fn "
            "for other outputs"
        )
    for name, value in labels:
        if value is not None:
            check_labels(value, outputs.shape[1], name)
