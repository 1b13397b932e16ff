"""Training: a checkpointable state, compiled train and eval steps, epoch runners and ``fit``."""

from jaxtricks.training.epochs import (
    RUNNERS,
    EpochRunner,
    choose_runner,
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
    zero_totals,
)
from jaxtricks.training.fit import fit, write_history
from jaxtricks.training.state import TrainState, create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step, make_train_step

__all__ = [
    "RUNNERS",
    "EpochRunner",
    "TrainState",
    "choose_runner",
    "compile_epoch_runner",
    "create_train_state",
    "epoch_indices",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_train_step",
    "run_epoch",
    "write_history",
    "zero_totals",
]
