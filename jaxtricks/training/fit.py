"""Training for a number of epochs, with a history of per-epoch metrics and a progress bar.

Each epoch trains on ⌊N / B⌋ batches in a fresh order (see :mod:`jaxtricks.training.epochs`)
and then evaluates the whole test split. The history records, per epoch e,

    train_loss_e = (1/A_e) Σ_{applied steps t of e} L_t,   train_accuracy_e likewise,

the means over the A_e steps that were applied (skipped non-finite steps are counted apart), the
test loss and accuracy over every test example, the learning rate at the epoch's last step and
the time taken. Same seed, same data and same arguments give the same history (timings aside)
and bit-identical parameters.
"""

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxtricks.training.checkpoint import _run_checkpoints
from jaxtricks.training.epochs import (
    RUNNERS,
    Totals,
    choose_runner,
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
)
from jaxtricks.training.fit_tricks import _run_epoch_tricks
from jaxtricks.training.health_log import health_record
from jaxtricks.training.sharding import (
    _check_divisible,
    replicate,
    shard_dataset,
    shard_train_state,
)
from jaxtricks.training.state import (
    TrainState,
    _check_model,
    _check_optimizer,
    create_train_state,
)
from jaxtricks.training.steps import (
    _check_sharding_arguments,
    _check_train_test,
    _variables,
    evaluate,
    make_eval_step,
    make_train_step,
)
from jaxtricks.tricks._checks import check_choice, check_int, check_nonnegative, resolve
from jaxtricks.tricks.averaging import ParamAveraging
from jaxtricks.tricks.early_stopping import EarlyStopping
from jaxtricks.tricks.plateau import EpochPlateau

METRICS_FILE = "metrics.json"

History = dict[str, Any]
Callback = Callable[[TrainState, dict[str, Any]], Any]


def fit(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        train_images: Any,
        train_labels: Any,
        test_images: Any,
        test_labels: Any,
        *,
        epochs: int,
        batch_size: int = 128,
        seed: int = 0,
        runner: str = "auto",
        learning_rate: float | Callable[[Any], Any] | None = None,
        progress: bool = True,
        out_dir: str | os.PathLike | None = None,
        skip_nonfinite: bool = True,
        state: TrainState | None = None,
        callbacks: Sequence[Callback] = (),
        chunk_steps: int = 50,
        mesh: Mesh | None = None,
        shard_optimizer_state: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_epochs: int | None = 1,
        keep_checkpoints: int = 3,
        resume: bool = False,
        early_stopping: EarlyStopping | None = None,
        averaging: ParamAveraging | None = None,
        reduce_on_plateau: EpochPlateau | None = None,
        monitor: str = "test_loss",
) -> tuple[TrainState, History]:
    """Trains ``model`` with ``optimizer`` for ``epochs`` epochs and evaluates after each.

    Per epoch: train_loss and train_accuracy are the means over the epoch's applied steps;
    test_loss and test_accuracy cover every test example once. The data order of epoch e is
    permutation(fold_in(k_data, e)) and the initial state comes from k_init, where
    (k_init, k_data) = split(key(seed)).

    Args:
        model: a Flax Linen module called as ``model.apply(variables, x, train=bool,
            rngs={"dropout": key}, mutable=["batch_stats"])``, returning logits.
        optimizer: an Optax gradient transformation; it carries its own schedule.
        train_images: float array ``(N, ...)``, already scaled; placed on the device once.
        train_labels: integer array ``(N,)`` with values in [0, number of logits).
        test_images: float array ``(M, ...)`` with the training images' feature shape.
        test_labels: integer array ``(M,)``.
        epochs: number of epochs to train, >= 1.
        batch_size: examples per step, in [1, N]; the N mod batch_size examples left over are
            dropped each epoch (a different few each time). Also the evaluation batch size.
        seed: non-negative int from which the initial state and the data order derive.
        runner: ``"loop"``, ``"scan"`` or ``"auto"`` (measure both, use the faster; see
            :func:`~jaxtricks.training.epochs.choose_runner`). All give bit-identical results.
        learning_rate: the optimizer's learning rate, a number or a schedule ``count -> lr``,
            only to log its value at each epoch's last step (``None`` logs ``None``). Skipped
            steps do not advance an Optax schedule, so after skips the logged value, taken at the
            step count, runs slightly ahead of the rate in use.
        progress: show a tqdm bar per epoch with the running loss and accuracy, updated every
            ``chunk_steps`` steps without waiting on the device. tqdm is an optional
            dependency: if it is missing, ``progress=True`` raises ``ImportError`` before any
            work is done (pass ``progress=False`` to train without it).
        out_dir: if given, the history is written to ``out_dir/metrics.json`` after every
            epoch, atomically (a reader never sees a partial file); non-finite floats are
            written as ``null``. The directory is created if needed.
        skip_nonfinite: skip steps whose loss or gradients are not finite (see
            :func:`~jaxtricks.training.steps.make_train_step`).
        state: a state to continue from instead of a fresh one (e.g. restored from a
            checkpoint); its step must be a whole number of epochs of this ``batch_size``, and
            epoch numbers continue from there. It is donated: use the returned state.
        callbacks: functions called as ``callback(state, record)`` after each epoch, with the
            epoch's history record; training stops after the epoch if any returns a true
            value. The
            state passed is donated by the next epoch, so save or copy what must outlive it.
        chunk_steps: steps between progress-bar updates, and steps per compiled call of the
            ``"scan"`` runner.
        mesh: a 1-D mesh (:func:`~jaxtricks.training.sharding.make_mesh`) to train on in data
            parallel; ``batch_size`` must divide by its number of devices D. The training set is
            split over the devices (:func:`~jaxtricks.training.sharding.shard_dataset`), the
            test set replicated, every batch split D ways and the state placed by
            :func:`~jaxtricks.training.sharding.shard_train_state`. The same seed gives the
            same run as on one device, up to float32 summation order. None: no sharding.
        shard_optimizer_state: with a mesh, split the optimizer state across the devices
            (ZeRO-1) to hold about 1/D of it per device.
        checkpoint_dir: if given, checkpoints of the run are saved there (see
            :mod:`jaxtricks.training.checkpoint`): the state, the running totals of the epoch
            in progress and, as JSON, the step, the history so far and the run's seed,
            batch_size, number of training examples and skip_nonfinite. Without ``resume``
            it must hold no checkpoint yet.
        checkpoint_every_steps: also save after every step that is a multiple of this, in
            the middle of an epoch too (the epoch is run in parts that end there). None:
            only at epochs' ends.
        checkpoint_every_epochs: save at the end of every epoch that is a multiple of this;
            None: not at epochs' ends. The run's last epoch is always saved.
        keep_checkpoints: the newest checkpoints to keep, >= 1.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` that verifies
            (damaged newer ones are skipped with a warning and deleted) instead of from
            ``state`` or a fresh state, up to the epoch the interrupted run would have
            reached: its first epoch plus ``epochs``. The result, history included, is
            bit-identical to the run's had it not stopped (timings aside). With no
            checkpoint there the run starts as without ``resume``; a checkpoint of another
            seed, batch_size, training set size or skip_nonfinite is refused, and so is one
            saved with other ``early_stopping`` or ``averaging`` (their states are saved in
            the checkpoint and go on from there; a run that early stopping had stopped stays
            stopped).
        early_stopping: an :func:`~jaxtricks.tricks.early_stopping.early_stopping` state
            machine, fed ``monitor`` after each epoch; training stops after the epoch where it
            says so. With ``restore_best`` the returned state holds the parameters and batch
            statistics of the best epoch (those ``monitor`` was measured on); its step,
            optimizer state and key stay the last epoch's.
        averaging: a parameter average from :mod:`jaxtricks.tricks.averaging`, updated with
            the parameters after each epoch (so SWA's ``start`` and ``every`` count epochs) and
            evaluated on the test split after each epoch, its batch-norm statistics measured
            again on the training images first
            (:func:`~jaxtricks.training.averaging.recompute_batch_stats`, a forward pass over
            the training set per epoch). The returned state holds the raw parameters.
        reduce_on_plateau: an :func:`~jaxtricks.tricks.plateau.epoch_plateau` state machine,
            fed ``monitor`` after each epoch; the optimizer must contain
            ``scale_by_plateau(reduce_on_plateau)``, whose scale (kept in the optimizer state,
            so checkpointed) multiplies the next epochs' updates.
        monitor: the epoch record's metric that ``early_stopping`` and ``reduce_on_plateau``
            observe: ``"test_loss"``, ``"test_accuracy"``, ``"train_loss"``,
            ``"train_accuracy"`` or, with ``averaging``, ``"test_loss_averaged"`` and
            ``"test_accuracy_averaged"``. Their ``mode`` must match it (``"max"`` for an
            accuracy).

    Returns:
        ``(state, history)``. ``history["header"]`` holds seed, batch_size, epochs,
        train_examples, test_examples, steps_per_epoch, backend, device_kind, device_count,
        jax_version, xla_flags (``XLA_FLAGS``), runner_requested, runner, runner_step_time_s
        (seconds per step of each runner when measured, else None), runner_cached,
        compile_time_s (compiling the chosen runner, measured apart from training; near 0
        when an earlier fit of an equal model and the same optimizer object compiled it
        already), skip_nonfinite, data_parallel_devices (D, 1 without a mesh) and
        shard_optimizer_state.
        ``history["epochs"]`` holds one record per epoch with epoch, step, train_loss,
        train_accuracy, train_grad_norm, test_loss, test_accuracy, learning_rate, epoch_time_s
        (training only), eval_time_s (the first epoch's includes compiling the evaluation),
        images_per_s, skipped_steps and runner; with ``averaging`` also test_loss_averaged,
        test_accuracy_averaged and averaged_eval_time_s; with ``reduce_on_plateau`` also
        plateau_scale (the scale used during the epoch); with ``early_stopping`` also
        epochs_without_improvement, and ``history["early_stopping"]`` holds monitor,
        best_epoch, best_metric, stopped_epoch (None if it never stopped) and restored_best.
        When the optimizer holds :func:`~jaxtricks.tricks.diagnostics.gradient_health` and/or
        :func:`~jaxtricks.tricks.diagnostics.update_health`, each record also holds ``health``:
        their per-module norms, ratios and flags at the epoch's last applied step
        (:func:`~jaxtricks.training.health_log.health_record`).

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.Dense(2)(x.reshape((x.shape[0], -1)))
        >>> labels = jnp.arange(64, dtype=jnp.int32) % 2
        >>> images = jnp.where(labels[:, None] == 1, 1.0, -1.0) * jnp.ones((64, 4))
        >>> state, history = fit(Net(), optax.sgd(0.1), images, labels, images, labels,
        ...                      epochs=2, batch_size=16, runner="loop", progress=False)
        >>> [record["epoch"] for record in history["epochs"]], int(state.step)
        ([1, 2], 8)
        >>> history["epochs"][-1]["test_accuracy"]
        1.0
    """
    _check_model(model)
    _check_optimizer(optimizer)
    train_images, train_labels, test_images, test_labels = _check_train_test(
        train_images, train_labels, test_images, test_labels
    )
    num_train = train_images.shape[0]
    epochs = check_int("epochs", epochs, low=1)
    batch_size = check_int("batch_size", batch_size, low=1, high=num_train)
    seed = check_int("seed", seed, low=0)
    chunk_steps = check_int("chunk_steps", chunk_steps, low=1)
    check_choice("runner", runner, ("auto", *RUNNERS))
    if learning_rate is not None and not callable(learning_rate):
        check_nonnegative("learning_rate", learning_rate)
    if not isinstance(skip_nonfinite, bool):
        raise ValueError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
    if state is not None and not isinstance(state, TrainState):
        raise ValueError(f"state must be a TrainState or None, got {type(state).__name__}")
    callbacks = tuple(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise ValueError(f"callbacks must be callables, got {callback!r}")
    _check_sharding_arguments(mesh, shard_optimizer_state)
    tricks = _run_epoch_tricks(early_stopping, averaging, reduce_on_plateau, monitor)
    if mesh is not None:
        _check_divisible("batch_size", batch_size, mesh)
    tqdm = _import_tqdm() if progress else None
    checkpoints = _run_checkpoints(
        checkpoint_dir,
        checkpoint_every_steps,
        checkpoint_every_epochs,
        keep_checkpoints,
        resume,
        config={
            "seed": seed,
            "batch_size": batch_size,
            "train_examples": num_train,
            "skip_nonfinite": skip_nonfinite,
        },
        steps_per_epoch=num_train // batch_size,
    )

    init_key, data_key = jax.random.split(jax.random.key(seed))
    if mesh is not None:
        train_images, train_labels = shard_dataset((train_images, train_labels), mesh)
        test_images, test_labels = replicate((test_images, test_labels), mesh)
    train_images, test_images = jnp.asarray(train_images), jnp.asarray(test_images)
    train_labels = jnp.asarray(train_labels, dtype=jnp.int32)
    test_labels = jnp.asarray(test_labels, dtype=jnp.int32)
    if state is None:
        state = create_train_state(model, optimizer, init_key, train_images[:1])
    if mesh is not None:
        state = shard_train_state(state, mesh, shard_optimizer_state=shard_optimizer_state)
    _check_label_range(model, state, train_images, train_labels, test_labels)
    steps_per_epoch = num_train // batch_size
    if tricks:
        tricks.init_states(state, int(state.step) // steps_per_epoch)
    resumed = checkpoints.start(state, tricks.states() if tricks else None) if checkpoints else None
    if resumed is not None:
        state = resumed.state
        if tricks:
            tricks.load(resumed.extra_tree, resumed.extra)
    first_step = int(state.step)
    if first_step % steps_per_epoch and resumed is None:
        raise ValueError(
            f"state: its step {first_step} is not a whole number of epochs of "
            f"{steps_per_epoch} steps (batch_size={batch_size}); continue it with the batch "
            "size it was trained with"
        )
    first_epoch = first_step // steps_per_epoch

    train_step = make_train_step(
        model,
        optimizer,
        skip_nonfinite=skip_nonfinite,
        mesh=mesh,
        shard_optimizer_state=shard_optimizer_state,
    )
    eval_step = make_eval_step(model, mesh=mesh)
    # The runners are compiled for the shapes of an epoch's indices; any epoch's will do.
    indices = epoch_indices(data_key, first_epoch + 1, num_train, batch_size)
    if runner == "auto":
        epoch_runner, choice = choose_runner(
            train_step, state, train_images, train_labels, indices
        )
    else:
        epoch_runner = compile_epoch_runner(
            train_step, runner, state, train_images, train_labels, indices
        )
        choice = {"runner": runner, "step_time_s": None, "cached": False}
    device = jax.devices()[0]
    history: History = {
        "header": {
            "seed": seed,
            "batch_size": batch_size,
            "epochs": epochs,
            "train_examples": num_train,
            "test_examples": test_images.shape[0],
            "steps_per_epoch": steps_per_epoch,
            "backend": jax.default_backend(),
            "device_kind": device.device_kind,
            "device_count": jax.device_count(),
            "jax_version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "runner_requested": runner,
            "runner": choice["runner"],
            "runner_step_time_s": choice["step_time_s"],
            "runner_cached": choice["cached"],
            "compile_time_s": epoch_runner.compile_time_s,
            "skip_nonfinite": skip_nonfinite,
            "data_parallel_devices": 1 if mesh is None else mesh.size,
            "shard_optimizer_state": shard_optimizer_state,
        },
        "epochs": [],
    }

    if resumed is not None:
        history["epochs"] = resumed.records
    if tricks:
        tricks.start(
            state,
            history,
            model=model,
            # Without the rows shard_dataset pads with (the same array when there are none).
            train_images=train_images[:num_train],
            batch_size=batch_size,
            evaluate_test=lambda s: evaluate(eval_step, s, test_images, test_labels, batch_size),
        )
    last_epoch = (checkpoints.first_epoch if checkpoints else first_epoch) + epochs
    for epoch in range(first_epoch + 1, last_epoch + 1):
        if tricks and tricks.stopped():  # resumed from the checkpoint of an early stop
            break
        indices = epoch_indices(data_key, epoch, num_train, batch_size)
        bar = _ProgressBar(tqdm, steps_per_epoch, f"epoch {epoch}/{last_epoch}") if tqdm else None
        begin = time.perf_counter()
        start, totals = 0, None
        if resumed is not None and epoch == first_epoch + 1:
            start, totals = first_step % steps_per_epoch, resumed.totals
        for stop in checkpoints.segment_ends(epoch, start) if checkpoints else [steps_per_epoch]:
            state, totals = run_epoch(
                epoch_runner,
                state,
                train_images,
                train_labels,
                indices,
                chunk_steps=chunk_steps,
                on_chunk=bar.update if bar else None,
                start=start,
                stop=stop,
                totals=totals,
            )
            if stop < steps_per_epoch:
                # Saved before the next part donates the state; not counted as training time.
                begin += checkpoints.save(state, totals, history, *_trick_states(tricks))
            start = stop
        totals = jax.device_get(totals)
        epoch_time = time.perf_counter() - begin
        begin = time.perf_counter()
        test = evaluate(eval_step, state, test_images, test_labels, batch_size)
        eval_time = time.perf_counter() - begin
        step = epoch * steps_per_epoch
        applied = int(totals["steps"]) - int(totals["skipped"])
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": _mean(totals["loss"], applied),
            "train_accuracy": _mean(totals["accuracy"], applied),
            "train_grad_norm": _mean(totals["grad_norm"], applied),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "learning_rate": _learning_rate_at(learning_rate, step - 1),
            "epoch_time_s": epoch_time,
            "eval_time_s": eval_time,
            "images_per_s": steps_per_epoch * batch_size / epoch_time,
            "skipped_steps": int(totals["skipped"]),
            "runner": epoch_runner.name,
        }
        health = health_record(state.opt_state)
        if health is not None:
            record["health"] = health
        state, stop_early = tricks.after_epoch(state, record) if tricks else (state, False)
        history["epochs"].append(record)
        if bar:
            bar.close(record)
        if out_dir is not None:
            write_history(history, out_dir)
        # Every callback runs (a checkpoint must not be missed because another asked to stop).
        stops = [stop_early, *(callback(state, record) for callback in callbacks)]
        if checkpoints and checkpoints.due(epoch, final=any(stops) or epoch == last_epoch):
            checkpoints.save(state, None, history, *_trick_states(tricks))
        if any(stops):
            break
    if tricks:
        state = tricks.finish(state)
    return state, history


def write_history(history: History, out_dir: str | os.PathLike) -> str:
    """Writes ``history`` to ``out_dir/metrics.json`` atomically and returns the path.

    The JSON goes to a temporary file in ``out_dir``, is flushed to disk and then renamed over
    ``metrics.json``, so a reader (or a run killed mid-write) sees the old file or the new one,
    never a mix. Non-finite floats become ``null``, keeping the file strict JSON.

    Args:
        history: a history from :func:`fit`.
        out_dir: the directory; created if missing.

    Returns:
        The path of ``metrics.json``.

    Example:
        >>> import json, tempfile
        >>> path = write_history({"header": {}, "epochs": [{"train_loss": float("nan")}]},
        ...                      tempfile.mkdtemp())
        >>> json.load(open(path))["epochs"]
        [{'train_loss': None}]
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, METRICS_FILE)
    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=".metrics-", suffix=".json.tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(_strict_json(history), file, indent=2, allow_nan=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def _strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    return value


def _trick_states(tricks: Any) -> tuple[Any, Any]:
    """What a checkpoint saves of the epoch-level tricks: arrays and JSON."""
    return (tricks.states(), tricks.summary()) if tricks else (None, None)


def _mean(total: Any, count: int) -> float:
    return float(total) / count if count else math.nan


def _learning_rate_at(learning_rate: Any, count: int) -> float | None:
    if learning_rate is None:
        return None
    return float(resolve(learning_rate, jnp.asarray(count, jnp.int32)))


def _check_label_range(model, state, images, train_labels, test_labels) -> None:
    """Labels must index the model's logits; out-of-range labels would train on garbage."""
    logits = jax.eval_shape(
        lambda variables, x: model.apply(variables, x, train=False),
        _variables(state.params, state.batch_stats),
        jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype),
    )
    if logits.ndim != 2:
        raise ValueError(f"model must return logits of shape (B, classes), got {logits.shape}")
    classes = logits.shape[1]
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        low, high = (int(value) for value in jax.device_get((labels.min(), labels.max())))
        if low < 0 or high >= classes:
            raise ValueError(
                f"{name} must lie in [0, {classes - 1}] for a model with {classes} logits, "
                f"got values in [{low}, {high}]"
            )


def _import_tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(
            "fit(progress=True) draws its progress bar with tqdm, which is not installed: "
            "install it (pip install tqdm, or the jaxtricks[examples] extra) or pass "
            "progress=False"
        ) from err
    return tqdm


class _ProgressBar:
    """A tqdm bar over an epoch's steps, showing running means of the device-side totals.

    Each update shows the totals handed over at the previous update and starts copying the
    current ones to the host, so the host never waits on a transfer, and waits on the device
    only when it has run more than a chunk of steps ahead.
    """

    def __init__(self, tqdm, total: int, description: str):
        self._bar = tqdm(total=total, desc=description, unit="step", leave=True)
        self._done = 0
        self._pending: Totals | None = None

    def update(self, steps_done: int, totals: Totals) -> None:
        if self._pending is not None:
            self._bar.set_postfix(_running_means(jax.device_get(self._pending)), refresh=False)
        for leaf in jax.tree.leaves(totals):
            leaf.copy_to_host_async()
        self._pending = totals
        self._bar.update(steps_done - self._done)
        self._done = steps_done

    def close(self, record: dict[str, Any]) -> None:
        self._bar.set_postfix(
            loss=f"{record['train_loss']:.4f}",
            acc=f"{record['train_accuracy']:.4f}",
            test_loss=f"{record['test_loss']:.4f}",
            test_acc=f"{record['test_accuracy']:.4f}",
            refresh=False,
        )
        self._bar.close()


def _running_means(totals: dict[str, Any]) -> dict[str, str]:
    applied = int(totals["steps"]) - int(totals["skipped"])
    return {
        "loss": f"{_mean(totals['loss'], applied):.4f}",
        "acc": f"{_mean(totals['accuracy'], applied):.4f}",
        "skipped": str(int(totals["skipped"])),
    }
