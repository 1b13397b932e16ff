"""What :func:`~jaxtricks.training.fit.fit` does after each epoch for its epoch-level tricks.

After epoch e has been trained and evaluated, in this order:

1. averaging: θ̄ ← update(θ̄, θ_e), once per epoch; when the model has batch norm, the
   statistics are measured again for θ̄ on the training images
   (:func:`~jaxtricks.training.averaging.recompute_batch_stats`); then θ̄ is evaluated on the
   test split (``test_loss_averaged``, ``test_accuracy_averaged``).
2. reduce on plateau: the scale c used during epoch e is logged (``plateau_scale``), then the
   optimizer state's plateau state observes the monitored metric m_e, so epoch e + 1 trains
   with the new scale.
3. early stopping: the state machine observes m_e with the parameters it was measured on (θ̄
   and its statistics for an ``*_averaged`` metric, θ_e otherwise); training stops after the
   epoch once it says so, and at the end the best epoch's parameters and batch statistics
   replace the last ones in the returned state (step, optimizer state and key stay the last
   epoch's).

A checkpoint of a run holds the early-stopping and averaging states (:meth:`_EpochTricks.states`,
arrays saved with the training state) and the early-stopping summary (JSON), so a resumed run
goes on with the same best epoch, best parameters, patience count and average: it ends as the
uninterrupted run would have. Both change only at epochs' ends, so a checkpoint taken inside an
epoch holds them as the last epoch left them. The plateau state lives in the optimizer state and
is checkpointed with it.
"""

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtricks.training.averaging import recompute_batch_stats
from jaxtricks.training.state import TrainState
from jaxtricks.tricks._checks import check_choice
from jaxtricks.tricks.averaging import ParamAveraging
from jaxtricks.tricks.early_stopping import EarlyStopping
from jaxtricks.tricks.plateau import EpochPlateau, plateau_states, update_plateau

MONITORS = ("test_loss", "test_accuracy", "train_loss", "train_accuracy")
AVERAGED_MONITORS = ("test_loss_averaged", "test_accuracy_averaged")


def _run_epoch_tricks(
        early_stopping: Any,
        averaging: Any,
        reduce_on_plateau: Any,
        monitor: Any,
) -> "_EpochTricks | None":
    """Checks ``fit``'s trick arguments (named as ``fit`` names them); the run's tricks, or
    None when none is asked for."""
    for name, value, kind in (
        ("early_stopping", early_stopping, EarlyStopping),
        ("averaging", averaging, ParamAveraging),
        ("reduce_on_plateau", reduce_on_plateau, EpochPlateau),
    ):
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{name} must be a {kind.__name__} or None, got {value!r}")
    monitors = MONITORS if averaging is None else MONITORS + AVERAGED_MONITORS
    check_choice("monitor", monitor, monitors)
    if early_stopping is None and averaging is None and reduce_on_plateau is None:
        return None
    return _EpochTricks(early_stopping, averaging, reduce_on_plateau, monitor)


def _copy(tree: Any) -> Any:
    """Fresh buffers: the training state's are donated to the next epoch."""
    return jax.tree.map(jnp.copy, tree)


class _EpochTricks:
    """The states of early stopping, averaging and reduce-on-plateau across a run's epochs."""

    def __init__(self, early_stopping, averaging, plateau, monitor):
        self._early_stopping = early_stopping
        self._averaging = averaging
        self._plateau = plateau
        self._monitor = monitor
        if early_stopping is not None:
            self._stop_update = jax.jit(early_stopping.update)
        if averaging is not None:
            self._average_update = jax.jit(averaging.update)
        self._summary: dict[str, Any] = {
            "monitor": monitor,
            "best_epoch": None,
            "best_metric": None,
            "stopped_epoch": None,
            "restored_best": False,
        }
        self._first_epoch = 0

    def init_states(self, state: TrainState, first_epoch: int) -> None:
        """Starts the early-stopping and averaging states from ``state``, the run's first,
        whose step is ``first_epoch`` epochs."""
        self._first_epoch = first_epoch
        if self._averaging is not None:
            self._average = self._averaging.init(_copy(state.params))
        if self._early_stopping is not None:
            self._stopping = self._early_stopping.init(
                _copy(state.params), _copy(state.batch_stats)
            )

    def states(self) -> dict[str, Any]:
        """The states a checkpoint saves: a pytree of arrays ({} when neither trick is on)."""
        tree = {}
        if self._early_stopping is not None:
            tree["early_stopping"] = self._stopping
        if self._averaging is not None:
            tree["averaging"] = self._average
        return tree

    def summary(self) -> dict[str, Any]:
        """What a checkpoint saves as JSON beside :meth:`states`."""
        return {"first_epoch": self._first_epoch, "early_stopping": dict(self._summary)}

    def load(self, states: dict[str, Any], summary: dict[str, Any]) -> None:
        """Takes up the states and summary of a checkpoint (as :meth:`states` and
        :meth:`summary` gave them when it was saved)."""
        if "early_stopping" in states:
            self._stopping = states["early_stopping"]
        if "averaging" in states:
            self._average = states["averaging"]
        # A checkpoint of a run with no early stopping or averaging may carry no summary.
        self._first_epoch = summary.get("first_epoch", self._first_epoch)
        self._summary.update(summary.get("early_stopping", {}))

    def stopped(self) -> bool:
        """Whether early stopping has already asked to stop (in a run resumed after it did)."""
        return self._early_stopping is not None and bool(self._stopping.should_stop)

    def start(
            self,
            state: TrainState,
            history: dict[str, Any],
            *,
            model: nn.Module,
            train_images: jax.Array,
            batch_size: int,
            evaluate_test: Callable[[TrainState], dict[str, float]],
    ) -> None:
        """Gets ready to run after each epoch; ``history`` gets the early-stopping summary."""
        if self._plateau is not None and not plateau_states(state.opt_state):
            raise ValueError(
                "reduce_on_plateau needs its scale in the optimizer: build the optimizer with "
                "optax.chain(..., scale_by_plateau(reduce_on_plateau))"
            )
        self._model = model
        self._train_images = train_images
        self._batch_size = batch_size
        self._evaluate_test = evaluate_test
        if self._early_stopping is not None:
            history["early_stopping"] = self._summary

    def after_epoch(self, state: TrainState, record: dict[str, Any]) -> tuple[TrainState, bool]:
        """Runs the tricks on the epoch just recorded; adds to ``record``.

        Returns the state (its optimizer state advanced by the plateau) and whether early
        stopping asks to stop.
        """
        monitored = (state.params, state.batch_stats)
        if self._averaging is not None:
            begin = time.perf_counter()
            self._average = self._average_update(self._average, state.params)
            params = self._averaging.averaged(self._average)
            batch_stats = state.batch_stats
            if batch_stats:
                batch_stats = recompute_batch_stats(
                    self._model,
                    params,
                    self._train_images,
                    batch_size=self._batch_size,
                    batch_stats_template=batch_stats,
                )
            test = self._evaluate_test(state._replace(params=params, batch_stats=batch_stats))
            record["test_loss_averaged"] = test["loss"]
            record["test_accuracy_averaged"] = test["accuracy"]
            record["averaged_eval_time_s"] = time.perf_counter() - begin
            if self._monitor in AVERAGED_MONITORS:
                monitored = (params, batch_stats)
        metric = record[self._monitor]
        if self._plateau is not None:
            record["plateau_scale"] = float(plateau_states(state.opt_state)[0].scale)
            opt_state = update_plateau(state.opt_state, self._plateau, metric)
            # Kept where the compiled epoch runner expects them (a mesh may replicate them).
            state = state._replace(opt_state=opt_state)
        if self._early_stopping is None:
            return state, False
        self._stopping = self._stop_update(self._stopping, metric, *monitored)
        best_epoch, best_metric, wait, stop = jax.device_get(
            (
                self._stopping.best_epoch,
                self._stopping.best_metric,
                self._stopping.epochs_without_improvement,
                self._stopping.should_stop,
            )
        )
        record["epochs_without_improvement"] = int(wait)
        if best_epoch > 0:
            self._summary["best_epoch"] = self._first_epoch + int(best_epoch)
            self._summary["best_metric"] = float(best_metric)
        if stop:
            self._summary["stopped_epoch"] = record["epoch"]
        return state, bool(stop)

    def finish(self, state: TrainState) -> TrainState:
        """The state to return: with the best epoch's parameters when early stopping keeps
        them and some epoch improved."""
        if self._early_stopping is None or self._stopping.best_params is None:
            return state
        if int(self._stopping.best_epoch) == 0:
            return state
        self._summary["restored_best"] = True
        return state._replace(
            params=self._stopping.best_params, batch_stats=self._stopping.best_batch_stats
        )
