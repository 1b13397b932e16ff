"""Training: a checkpointable state, compiled train and eval steps, epoch runners, ``fit``,
checkpoints, data-parallel sharding, ensembles, batch statistics for averaged weights, and the
XLA:CPU and host-allocator settings for fast training on the CPU."""

from jaxtricks.training.averaging import recompute_batch_stats
from jaxtricks.training.checkpoint import Checkpoint, CheckpointManager, DamagedCheckpointError
from jaxtricks.training.ensemble import (
    create_ensemble,
    ensemble_member,
    ensemble_probabilities,
    evaluate_ensemble,
    fit_ensemble,
    make_ensemble_train_step,
)
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
from jaxtricks.training.health_log import health_record
from jaxtricks.training.host_allocator import configure_host_allocator
from jaxtricks.training.sharding import (
    batch_sharding,
    make_mesh,
    opt_state_sharding,
    per_device_bytes,
    replicate,
    replicated_sharding,
    shard_batch,
    shard_dataset,
    shard_train_state,
    train_state_sharding,
    zero1_sharding,
)
from jaxtricks.training.state import TrainState, create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step, make_train_step
from jaxtricks.training.xla_cpu import configure_xla_cpu

__all__ = [
    "RUNNERS",
    "Checkpoint",
    "CheckpointManager",
    "DamagedCheckpointError",
    "EpochRunner",
    "TrainState",
    "batch_sharding",
    "choose_runner",
    "compile_epoch_runner",
    "configure_host_allocator",
    "configure_xla_cpu",
    "create_ensemble",
    "create_train_state",
    "ensemble_member",
    "ensemble_probabilities",
    "epoch_indices",
    "evaluate",
    "evaluate_ensemble",
    "fit",
    "fit_ensemble",
    "health_record",
    "make_ensemble_train_step",
    "make_eval_step",
    "make_mesh",
    "make_train_step",
    "opt_state_sharding",
    "per_device_bytes",
    "recompute_batch_stats",
    "replicate",
    "replicated_sharding",
    "run_epoch",
    "shard_batch",
    "shard_dataset",
    "shard_train_state",
    "train_state_sharding",
    "write_history",
    "zero1_sharding",
    "zero_totals",
]
