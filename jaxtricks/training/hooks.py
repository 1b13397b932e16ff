"""What happens around the epochs of a run: hooks with one protocol.

:func:`~jaxtricks.training.fit.fit` trains epoch after epoch and hands a :class:`Run` (the
state, the history and what the run is made of) to its hooks at fixed points:

    on_train_begin(run)                         before the first epoch (after a resume)
    on_epoch_begin(run, epoch)
    on_pause(run, steps_done, totals)           inside an epoch, after every chunk of steps and
                                                at every step a hook's ``pause_steps`` names
    on_epoch_end(run, record)                   after the epoch's training and validation
    on_train_end(run)                           once, after the last epoch

A hook may add to the record, replace ``run.state`` or set ``run.stop_training``. Hooks run in
the order of their ``order`` attribute (then as given): evaluations first, so that later hooks
see their numbers, then averaging, the plateau, early stopping, the user's hooks, the
gradient-health log, the metrics file, checkpoints, and the progress display last. A hook
whose state must survive a resume saves it through :meth:`Hook.checkpoint_state` and gets it
back through :meth:`Hook.restore_checkpoint_state`; :class:`~jaxtricks.training.checkpoint.
CheckpointHook` stores them with the training state.

The choices hooks make (early stopping, keeping the best weights, reducing the learning rate)
watch training or validation metrics only: a monitor named ``test_...`` is refused, because a
number chosen on the test set is no longer a test result.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks.files import write_json
from jaxtricks.training.epochs import COUNTED_METRICS
from jaxtricks.training.history import EpochRecord, History
from jaxtricks.training.hyperparams import INJECTED_STATES
from jaxtricks.training.model import FunctionalModel
from jaxtricks.training.state import TrainState
from jaxtricks.tricks.averaging import ParamAveraging
from jaxtricks.tricks.diagnostics import GradientHealthState, UpdateHealthState
from jaxtricks.tricks.early_stopping import early_stopping
from jaxtricks.tricks.plateau import EpochPlateau, plateau_states, update_plateau

__all__ = [
    "AveragingHook",
    "EarlyStoppingHook",
    "EvaluationHook",
    "HealthHook",
    "Hook",
    "LambdaHook",
    "MetricsFileHook",
    "PlateauHook",
    "ProgressHook",
    "Run",
    "check_monitor",
    "format_record",
    "health_record",
    "learning_rate_of",
    "mean_totals",
]

Totals = dict[str, jax.Array]


@dataclasses.dataclass
class Run:
    """A training run as its hooks see it.

    Attributes:
        model: the model, as a :class:`~jaxtricks.training.model.FunctionalModel`.
        state: the current training state; a hook may replace it (the next epoch trains the
            replacement). It stays valid after the next epoch: a hook may keep it.
        history: the run's :class:`~jaxtricks.training.history.History` so far.
        epoch: the last epoch finished (the first epoch's number minus 1 before it).
        first_epoch: the epochs done before this run began (a resumed or continued state's).
        last_epoch: the epoch the run ends after unless stopped.
        steps_per_epoch: S = ⌊N / batch_size⌋.
        batch_size: examples per step (also per evaluation batch).
        train_data: the training set ``(x, y)`` on the device.
        evaluation_sets: name → ``(x, y)`` of the sets evaluated after each epoch, ``"val"``
            for the validation data; an :class:`EvaluationHook` adds its own.
        evaluate: ``evaluate(state, data) -> {"loss": ..., <metric>: ...}``, the run's
            evaluation of a state on a set (evaluation mode, every example once).
        config: what a resumed run must share with the run it resumes (seed, batch size,
            training set size, ...), as JSON values.
        hooks: the run's hooks, in the order they run.
        stop_training: set by a hook to end the run after the current epoch.
        zero_totals: ``zero_totals()`` gives running totals at the start of an epoch.
        resume_totals: set by a hook that restored a checkpoint taken inside an epoch: the
            running totals of that epoch so far (None otherwise).
    """

    model: FunctionalModel
    state: TrainState
    history: History
    epoch: int
    first_epoch: int
    last_epoch: int
    steps_per_epoch: int
    batch_size: int
    train_data: Any
    evaluation_sets: dict[str, Any]
    evaluate: Callable[[TrainState, Any], dict[str, float]]
    config: dict[str, Any]
    zero_totals: Callable[[], Totals]
    hooks: list[Hook] = dataclasses.field(default_factory=list)
    stop_training: bool = False
    resume_totals: Totals | None = None


class Hook:
    """Base class of the hooks: every method does nothing unless overridden.

    ``order`` places the hook among the others (lower runs first); a user's hook defaults to
    50, between early stopping (30) and the gradient-health log (60).
    """

    order: int = 50

    def on_train_begin(self, run: Run) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        """Called before epoch ``epoch`` trains."""

    def pause_steps(self, run: Run, epoch: int) -> Iterable[int]:
        """Steps k in (0, S) of epoch ``epoch`` after which the run must pause (call
        :meth:`on_pause`), e.g. to save a checkpoint in the middle of it."""
        del run, epoch
        return ()

    def on_pause(self, run: Run, steps_done: int, totals: Totals) -> None:
        """Called inside an epoch after ``steps_done`` of its steps, with the running totals
        still on the device (reading them waits for the device)."""

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        """Called after an epoch's training and validation; may add to ``record``."""

    def on_train_end(self, run: Run) -> None:
        """Called once after the last epoch (also when a hook stopped the run)."""

    def checkpoint_state(self) -> tuple[Any, dict[str, Any]] | None:
        """What a checkpoint keeps of the hook, ``(arrays, json)``; None: nothing."""
        return None

    def restore_checkpoint_state(self, run: Run, arrays: Any, values: dict[str, Any]) -> None:
        """Takes back what :meth:`checkpoint_state` returned when the checkpoint was saved."""
        del run, arrays, values


class LambdaHook(Hook):
    """A function called after each epoch as ``fn(state, record)``; a true result stops the run.

    ``fit(callbacks=[fn])`` wraps plain functions in it.

    Examples:
        >>> hook = LambdaHook(lambda state, record: record["loss"] < 0.1)
        >>> hook.order
        50
    """

    def __init__(self, fn: Callable[[TrainState, EpochRecord], Any]):
        if not callable(fn):
            raise ValueError(f"fn must be a function (state, record) -> bool, got {fn!r}")
        self.fn = fn

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        if self.fn(run.state, record):
            run.stop_training = True


def check_monitor(monitor: Any) -> str:
    """Raises ``ValueError`` unless ``monitor`` names a metric a choice may watch.

    A training metric (``loss``, ``accuracy``, ...) or a validation metric (``val_...``)
    qualifies, averaged ones (``..._averaged``) too; a ``test_...`` metric never does.

    Examples:
        >>> check_monitor("val_accuracy")
        'val_accuracy'
    """
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a metric name, got {monitor!r}")
    if monitor.startswith("test_"):
        raise ValueError(
            f"monitor must be a training or validation metric, got {monitor!r}: a number chosen "
            "on the test set is no longer a test result; monitor a val_ metric (pass "
            "validation_data or validation_split to fit)"
        )
    return monitor


def _monitored(record: EpochRecord, monitor: str) -> float:
    if monitor not in record.metrics:
        hint = (
            " (fit has no validation data: pass validation_data or validation_split)"
            if monitor.startswith("val_") and not any(m.startswith("val_") for m in record.metrics)
            else ""
        )
        raise ValueError(
            f"monitor: the run records no {monitor!r}{hint}; it records {sorted(record.metrics)}"
        )
    return record.metrics[monitor]


def _mode(mode: str, monitor: str) -> str:
    if mode == "auto":
        return "max" if "accuracy" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


class EvaluationHook(Hook):
    """Evaluates the state on another held-out set after each epoch, as ``<name>_<metric>``.

    For a test set that is only reported: ``EvaluationHook("test", x_test, y_test)`` records
    ``test_loss`` and ``test_accuracy`` each epoch, and no choice may watch them.

    Args:
        name: the set's name, an identifier other than ``val``.
        x: its inputs, a pytree of arrays with a leading example axis.
        y: its targets, likewise.
    """

    order = 0

    def __init__(self, name: str, x: Any, y: Any):
        if not isinstance(name, str) or not name.isidentifier() or name == "val":
            raise ValueError(f"name must be an identifier other than 'val', got {name!r}")
        self.name = name
        self.data = (x, y)

    def on_train_begin(self, run: Run) -> None:
        if self.name in run.evaluation_sets:
            raise ValueError(f"name: the run already evaluates a set called {self.name!r}")
        run.evaluation_sets[self.name] = self.data

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        record.add(run.evaluate(run.state, run.evaluation_sets[self.name]), prefix=f"{self.name}_")


class AveragingHook(Hook):
    """Keeps an average of the weights over epochs and evaluates it (lesson L5).

    After each epoch θ̄ ← update(θ̄, θ_e); when the model has batch statistics they are
    measured again for θ̄ on the training inputs
    (:func:`~jaxtricks.training.averaging.recompute_model_state`), then θ̄ is evaluated on
    every set the run evaluates: ``val_loss_averaged``, ``test_accuracy_averaged``, ... The
    training state keeps the raw weights; :meth:`averaged_state` gives the averaged ones.

    Args:
        averaging: an average from :mod:`jaxtricks.tricks.averaging` (``ema_params``,
            ``swa_params``, ``polyak_params``).
    """

    order = 10

    def __init__(self, averaging: ParamAveraging):
        if not isinstance(averaging, ParamAveraging):
            raise ValueError(f"averaging must be a ParamAveraging, got {averaging!r}")
        self.averaging = averaging
        self._update = jax.jit(averaging.update)
        self._average: Any = None
        self._model_state: Any = None

    def on_train_begin(self, run: Run) -> None:
        if "num_members" in run.config and jax.tree.leaves(run.state.model_state):
            raise ValueError(
                "AveragingHook: the members of an ensemble with batch statistics cannot be "
                "averaged here (their statistics would be measured for stacked weights); "
                "average a model trained by fit instead"
            )
        # Afresh for every run (a hook given to a second fit starts over); a checkpoint hook
        # (order 80) restores a resumed run's average after this.
        self._average = self.averaging.init(_copy(run.state.params))
        self._model_state = None

    def averaged_state(self, run: Run) -> TrainState:
        """The run's state with the averaged weights and their measured model state."""
        params = self.averaging.averaged(self._average)
        model_state = run.state.model_state if self._model_state is None else self._model_state
        return run.state._replace(params=params, model_state=model_state)

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        from jaxtricks.training.averaging import recompute_model_state

        begin = time.perf_counter()
        self._average = self._update(self._average, run.state.params)
        params = self.averaging.averaged(self._average)
        self._model_state = recompute_model_state(
            run.model, params, run.state.model_state, run.train_data[0],
            batch_size=run.batch_size,
        )
        averaged = self.averaged_state(run)
        for name, data in run.evaluation_sets.items():
            record.add(run.evaluate(averaged, data), prefix=f"{name}_", suffix="_averaged")
        record.metrics["averaged_eval_time_s"] = time.perf_counter() - begin

    def checkpoint_state(self) -> tuple[Any, dict[str, Any]]:
        return self._average, {}

    def restore_checkpoint_state(self, run: Run, arrays: Any, values: dict[str, Any]) -> None:
        self._average = arrays


class PlateauHook(Hook):
    """Reduces the learning rate when a monitored metric stops improving (lesson L6).

    After each epoch the plateau state inside the optimizer state observes the monitored
    metric (see :mod:`jaxtricks.tricks.plateau`), so the next epochs train with its new
    scale; the record gets the scale used during the epoch as ``plateau_scale``. The
    optimizer must contain ``scale_by_plateau(plateau)``.

    Args:
        plateau: the state machine given to ``scale_by_plateau``.
        monitor: the metric it watches, ``val_loss`` by default (see :func:`check_monitor`).
    """

    order = 20

    def __init__(self, plateau: EpochPlateau, *, monitor: str = "val_loss"):
        if not isinstance(plateau, EpochPlateau):
            raise ValueError(f"plateau must be an EpochPlateau, got {plateau!r}")
        self.plateau = plateau
        self.monitor = check_monitor(monitor)

    def on_train_begin(self, run: Run) -> None:
        if not plateau_states(run.state.opt_state):
            raise ValueError(
                "plateau: the optimizer holds no plateau scale; build it with "
                "optax.chain(..., scale_by_plateau(plateau))"
            )

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        metric = _monitored(record, self.monitor)
        record.metrics["plateau_scale"] = float(plateau_states(run.state.opt_state)[0].scale)
        opt_state = update_plateau(run.state.opt_state, self.plateau, metric)
        run.state = run.state._replace(opt_state=opt_state)


class EarlyStoppingHook(Hook):
    """Stops training when a monitored metric stops improving; keeps the best weights (L5).

    Keras' ``EarlyStopping``, on :func:`jaxtricks.tricks.early_stopping`'s pure state machine:
    after each epoch it observes the monitored metric with the weights (and model state) it
    was measured on; the run stops after the epoch where the machine says so. With
    ``restore_best`` the state returned by ``fit`` holds the best epoch's weights and model
    state (its step, optimizer state and key stay the last epoch's). The history's header
    gets ``early_stopping``: monitor, best_epoch, best_metric, stopped_epoch, restored_best.

    Args:
        monitor: the metric to watch, ``val_loss`` by default (see :func:`check_monitor`); an
            ``..._averaged`` metric watches (and keeps) the averaged weights.
        min_delta: the least change that counts as an improvement, >= 0.
        patience: epochs without improvement after which to stop, >= 1.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for a name with ``accuracy``).
        baseline: a value the metric must beat for the patience to restart; None: any.
        start_from_epoch: epochs of warm-up to ignore, >= 0.
        restore_best: keep and return the best epoch's weights.
    """

    order = 30

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 1, *,
                 mode: str = "auto", baseline: float | None = None, start_from_epoch: int = 0,
                 restore_best: bool = True):
        self.monitor = check_monitor(monitor)
        self.stopper = early_stopping(
            patience, min_delta, _mode(mode, self.monitor), baseline,
            start_from_epoch=start_from_epoch, restore_best=restore_best,
        )
        self._update = jax.jit(self.stopper.update)
        self._state: Any = None
        self._summary: dict[str, Any] = {}

    def on_train_begin(self, run: Run) -> None:
        # Afresh for every run, as for AveragingHook.
        self._state = self.stopper.init(_copy(run.state.params), _copy(run.state.model_state))
        self._summary = {
            "monitor": self.monitor,
            "best_epoch": None,
            "best_metric": None,
            "stopped_epoch": None,
            "restored_best": False,
            "first_epoch": run.first_epoch,
        }
        run.history.header["early_stopping"] = self._summary

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        metric = _monitored(record, self.monitor)
        watched = run.state
        if self.monitor.endswith("_averaged"):
            averaging = [hook for hook in run.hooks if isinstance(hook, AveragingHook)]
            watched = averaging[0].averaged_state(run)
        self._state = self._update(self._state, metric, watched.params, watched.model_state)
        best_epoch, best_metric, wait, stop = jax.device_get((
            self._state.best_epoch, self._state.best_metric,
            self._state.epochs_without_improvement, self._state.should_stop,
        ))
        record.metrics["epochs_without_improvement"] = int(wait)
        if best_epoch > 0:
            self._summary["best_epoch"] = self._summary["first_epoch"] + int(best_epoch)
            self._summary["best_metric"] = float(best_metric)
        if stop:
            self._summary["stopped_epoch"] = record.epoch
            run.stop_training = True

    def on_train_end(self, run: Run) -> None:
        if self._state.best_params is None or int(self._state.best_epoch) == 0:
            return
        self._summary["restored_best"] = True
        run.state = run.state._replace(
            params=self._state.best_params, model_state=self._state.best_batch_stats
        )

    def checkpoint_state(self) -> tuple[Any, dict[str, Any]]:
        return self._state, dict(self._summary)

    def restore_checkpoint_state(self, run: Run, arrays: Any, values: dict[str, Any]) -> None:
        self._state, self._summary = arrays, dict(values)
        run.history.header["early_stopping"] = self._summary
        run.stop_training = bool(self._state.should_stop)  # a run that had stopped stays so


def health_record(opt_state: Any) -> dict[str, Any] | None:
    """The module-level gradient-health values in ``opt_state`` as Python values, or None.

    Args:
      opt_state: an optimizer state (any pytree) holding at most one
        :class:`~jaxtricks.tricks.diagnostics.GradientHealthState` and at most one
        :class:`~jaxtricks.tricks.diagnostics.UpdateHealthState`, unbatched (not an
        ensemble's).

    Returns:
      None when it holds neither; else a dict with, from the gradient state, ``grad_norm``,
      ``module_grad_norms``, ``module_param_norms``, ``module_grad_ratios`` (``{module:
      float}``), ``vanishing`` and ``exploding`` (the flagged modules, sorted), and from the
      update state ``update_norm``, ``module_update_norms`` and ``module_update_ratios``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from jaxtricks.tricks.diagnostics import gradient_health
      >>> tx = optax.chain(gradient_health(vanish_threshold=1.0), optax.sgd(0.1))
      >>> params = {"a": {"w": jnp.ones(4)}, "b": {"w": jnp.ones(4)}}
      >>> grads = {"a": {"w": jnp.full(4, 0.25)}, "b": {"w": jnp.full(4, 2.0)}}
      >>> _, state = tx.update(grads, tx.init(params), params)
      >>> record = health_record(state)
      >>> record["module_grad_norms"], record["vanishing"]
      ({'a': 0.5, 'b': 4.0}, ['a'])
    """
    kinds = (GradientHealthState, UpdateHealthState)
    found = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, kinds))
        if isinstance(node, kinds)
    ]
    gradient = [node for node in found if isinstance(node, GradientHealthState)]
    update = [node for node in found if isinstance(node, UpdateHealthState)]
    if len(gradient) > 1 or len(update) > 1:
        raise ValueError(
            "opt_state must hold at most one gradient_health and one update_health state, found "
            f"{len(gradient)} and {len(update)}"
        )
    if not found:
        return None
    if any(jnp.ndim(node[0]) for node in found):
        raise ValueError(
            "opt_state holds batched health states (an ensemble's?); read one member's with "
            "jaxtricks.training.ensemble.ensemble_member first"
        )

    def floats(values):
        return {name: float(value) for name, value in values.items()}

    record: dict[str, Any] = {}
    if gradient:
        state = jax.device_get(gradient[0])
        record["grad_norm"] = float(state.grad_norm)
        record["module_grad_norms"] = floats(state.module_grad_norms)
        record["module_param_norms"] = floats(state.module_param_norms)
        record["module_grad_ratios"] = floats(state.module_grad_ratios)
        record["vanishing"] = sorted(name for name, flag in state.vanishing.items() if flag)
        record["exploding"] = sorted(name for name, flag in state.exploding.items() if flag)
    if update:
        state = jax.device_get(update[0])
        record["update_norm"] = float(state.update_norm)
        record["module_update_norms"] = floats(state.module_update_norms)
        record["module_update_ratios"] = floats(state.module_update_ratios)
    return record


def learning_rate_of(opt_state: Any) -> float | None:
    """The learning rate an optimizer state holds, or None when it holds none.

    Read from the first ``optax.inject_hyperparams`` state in ``opt_state`` that has a
    ``learning_rate`` (nested in ``optax.chain``, ``optax.MultiSteps``, ... too): its value at
    the state's step count, the schedule's if one was given. An optimizer built without
    ``inject_hyperparams`` keeps no learning rate in its state, so None.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> schedule = lambda count: 0.5 / (1 + count.astype(jnp.float32))
        >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> learning_rate_of(state)
        0.5
        >>> learning_rate_of(optax.adam(0.1).init({"w": jnp.zeros(2)})) is None
        True
    """
    for node in jax.tree.leaves(opt_state,
                                is_leaf=lambda node: isinstance(node, INJECTED_STATES)):
        if isinstance(node, INJECTED_STATES) and "learning_rate" in node.hyperparams:
            value = node.hyperparams["learning_rate"]
            if jnp.ndim(value) == 0:
                return float(value)
    return None


class MetricsFileHook(Hook):
    """Writes the history as strict JSON to ``path`` after each epoch, atomically.

    A reader (or a run killed mid-write) sees the previous epoch's file or the new one, never a
    partial file (:func:`jaxtricks.files.write_json`). In a job of several processes
    (``jax.distributed``) process 0 alone writes it: every process holds the same history.

    Args:
        path: the JSON file, e.g. ``runs/mnist/metrics.json``; its folder is created.
    """

    order = 70

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"path must be a file path, got {path!r}")
        self.path = os.fspath(path)

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        if jax.process_index() == 0:
            write_json(self.path, run.history.to_dict())


def format_record(record: EpochRecord, last_epoch: int) -> str:
    """One line for an epoch: ``epoch 2/4 - 31.2 s - loss 0.0412 - val_loss 0.0370 - ...``."""
    parts = [f"epoch {record.epoch}/{last_epoch}", f"{record.epoch_time_s:.1f} s"]
    for name, value in record.metrics.items():
        if name.endswith("_s") or name == "epochs_without_improvement":
            continue
        parts.append(f"{name} {value:.4g}")
    if record.skipped_steps:
        parts.append(f"skipped {record.skipped_steps}")
    return " - ".join(parts)


class ProgressHook(Hook):
    """Shows the run's progress: a tqdm bar per epoch, or one line per epoch without tqdm.

    The bar shows the running loss of the epoch; at the epoch's end a line gives the epoch's
    numbers (:func:`format_record`). In a job of several processes only process 0 shows it.

    Args:
        bar: ``True`` for a tqdm bar (tqdm must be installed), ``False`` for one line per
            epoch, None for a bar when tqdm is installed.
        stream: where the bar and lines go; ``sys.stderr`` by default.
    """

    order = 90

    def __init__(self, bar: bool | None = None, stream: Any = None):
        if bar is not None and not isinstance(bar, bool):
            raise ValueError(f"bar must be a bool or None, got {bar!r}")
        self._tqdm = None
        if bar is not False:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                if bar:
                    raise ImportError(
                        "ProgressHook(bar=True) needs tqdm: pip install tqdm (or the jaxtricks"
                        "[progress] extra), or pass bar=None for one line per epoch"
                    ) from None
            else:
                self._tqdm = tqdm
        self.stream = stream
        self._bar: Any = None

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        if self._tqdm is not None and jax.process_index() == 0:
            self._bar = self._tqdm(
                total=run.steps_per_epoch, desc=f"epoch {epoch}/{run.last_epoch}", unit="step",
                leave=False, file=self.stream or sys.stderr,
            )

    def on_pause(self, run: Run, steps_done: int, totals: Totals) -> None:
        if self._bar is None:
            return
        means, _, _ = mean_totals(jax.device_get(totals))
        self._bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
        self._bar.update(steps_done - self._bar.n)

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if jax.process_index() == 0:
            print(format_record(record, run.last_epoch), file=self.stream or sys.stderr,
                  flush=True)


class HealthHook(Hook):
    """Adds the gradient-health record (:func:`health_record`) of the epoch's last step to
    ``record.info["health"]`` when the optimizer holds ``gradient_health`` or
    ``update_health``. ``fit`` adds it to every run."""

    order = 60

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        health = health_record(run.state.opt_state)
        if health is not None:
            record.info["health"] = health


def mean_totals(totals: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any], int]:
    """``(metrics, info, skipped)`` of running totals read back from the device.

    Each sum becomes its mean over the applied steps (NaN when every step was skipped). Sums
    of several values (an ensemble's K members) become their means' mean in ``metrics`` and
    the K means in ``info``; ``skipped`` counts the skipped steps (of all members). Loss-scale
    overflows, when counted, are the metric ``overflow_steps``.

    Examples:
        >>> import numpy as np
        >>> mean_totals({"loss": np.float32(3.0), "skipped": np.int32(1), "steps": np.int32(4)})
        ({'loss': 1.0}, {}, 1)
        >>> mean_totals({"loss": np.float32(3.0), "skipped": np.int32(0),
        ...              "overflow": np.int32(1), "steps": np.int32(4)})[0]
        {'loss': 1.0, 'overflow_steps': 1.0}
    """
    skipped = np.asarray(totals["skipped"])
    overflow = np.asarray(totals.get("overflow", 0))
    applied = int(totals["steps"]) - skipped - overflow
    record = EpochRecord(0, 0, {})
    # The loss first and the gradient norm last, whatever order the totals come back in.
    names = sorted(set(totals) - {*COUNTED_METRICS, "steps"},
                   key=lambda name: (name != "loss", name == "grad_norm"))
    for name in names:
        value = totals[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(applied > 0, np.asarray(value, np.float64) / np.maximum(applied, 1),
                            np.nan)
        record.add({name: mean.tolist()})
    if "overflow" in totals:
        record.metrics["overflow_steps"] = float(overflow.sum())
    return record.metrics, record.info, int(skipped.sum())
