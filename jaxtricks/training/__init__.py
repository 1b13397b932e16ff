"""Layer 3, training: small public pieces and ``fit``, which composes them.

- :mod:`~jaxtricks.training.model`: a Flax Linen or NNX module as two pure functions.
- :mod:`~jaxtricks.training.state`: the checkpointable :class:`TrainState`.
- :mod:`~jaxtricks.training.steps`: the compiled train and eval steps for any loss and metrics.
- :mod:`~jaxtricks.training.precision`: mixed-precision policies (bfloat16, float16 with
  dynamic loss scaling) the steps and ``fit`` take.
- :mod:`~jaxtricks.training.epochs`: epochs of steps over a dataset on the device.
- :mod:`~jaxtricks.training.hooks`: what happens around epochs (early stopping, averaging,
  plateau, progress, metrics file, evaluation of other sets, user callbacks), one protocol.
- :mod:`~jaxtricks.training.fit`: :func:`fit` and its epoch loop :func:`train_epochs`.
- :mod:`~jaxtricks.training.lr_finder`: the learning-rate range test
  (:func:`find_learning_rate`), a short run over a train step that suggests a learning rate.
- :mod:`~jaxtricks.training.hyperparams`: hyperparameters injected into an optimizer's state,
  set from outside it (:func:`set_hyperparams`).
- :mod:`~jaxtricks.training.checkpoint`, :mod:`~jaxtricks.training.sharding`,
  :mod:`~jaxtricks.training.ensemble`, :mod:`~jaxtricks.training.averaging`: checkpoints
  (Orbax, loaded on first use), data parallelism, ensembles, batch statistics for averaged
  weights.
"""

from jaxtricks.training.averaging import recompute_batch_stats, recompute_model_state
from jaxtricks.training.checkpoint import (
    Checkpoint,
    CheckpointHook,
    CheckpointManager,
    DamagedCheckpointError,
)
from jaxtricks.training.ensemble import (
    create_ensemble,
    ensemble_member,
    ensemble_probabilities,
    evaluate_ensemble,
    fit_ensemble,
    make_ensemble_eval_step,
    make_ensemble_train_step,
)
from jaxtricks.training.epochs import (
    RUNNERS,
    EpochRunner,
    choose_runner,
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
)
from jaxtricks.training.fit import fit, make_hooks, split_validation, train_epochs
from jaxtricks.training.history import EpochRecord, History
from jaxtricks.training.hooks import (
    AveragingHook,
    EarlyStoppingHook,
    EvaluationHook,
    HealthHook,
    Hook,
    LambdaHook,
    MetricsFileHook,
    PlateauHook,
    ProgressHook,
    Run,
    health_record,
    learning_rate_of,
)
from jaxtricks.training.hyperparams import set_hyperparams
from jaxtricks.training.lr_finder import (
    LRFinderResult,
    LRSuggestions,
    find_learning_rate,
    suggest_learning_rates,
)
from jaxtricks.training.model import FunctionalModel, functional_model
from jaxtricks.training.precision import (
    PRECISIONS,
    LossScaleState,
    Precision,
    as_precision,
    precision_policy,
)
from jaxtricks.training.sharding import (
    batch_sharding,
    make_mesh,
    opt_state_sharding,
    per_device_bytes,
    place_sharded,
    replicate,
    replicated_sharding,
    shard_batch,
    shard_dataset,
    shard_train_state,
    train_state_sharding,
    zero1_sharding,
)
from jaxtricks.training.state import TrainState, as_optimizer, create_train_state
from jaxtricks.training.steps import (
    accuracy,
    evaluate,
    make_eval_step,
    make_train_step,
    softmax_cross_entropy,
)

__all__ = [
    "PRECISIONS",
    "RUNNERS",
    "AveragingHook",
    "Checkpoint",
    "CheckpointHook",
    "CheckpointManager",
    "DamagedCheckpointError",
    "EarlyStoppingHook",
    "EpochRecord",
    "EpochRunner",
    "EvaluationHook",
    "FunctionalModel",
    "HealthHook",
    "History",
    "Hook",
    "LRFinderResult",
    "LRSuggestions",
    "LambdaHook",
    "LossScaleState",
    "MetricsFileHook",
    "PlateauHook",
    "Precision",
    "ProgressHook",
    "Run",
    "TrainState",
    "accuracy",
    "as_optimizer",
    "as_precision",
    "batch_sharding",
    "choose_runner",
    "compile_epoch_runner",
    "create_ensemble",
    "create_train_state",
    "ensemble_member",
    "ensemble_probabilities",
    "epoch_indices",
    "evaluate",
    "evaluate_ensemble",
    "find_learning_rate",
    "fit",
    "fit_ensemble",
    "functional_model",
    "health_record",
    "learning_rate_of",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
    "make_eval_step",
    "make_hooks",
    "make_mesh",
    "make_train_step",
    "opt_state_sharding",
    "per_device_bytes",
    "place_sharded",
    "precision_policy",
    "recompute_batch_stats",
    "recompute_model_state",
    "replicate",
    "replicated_sharding",
    "run_epoch",
    "set_hyperparams",
    "shard_batch",
    "shard_dataset",
    "shard_train_state",
    "softmax_cross_entropy",
    "split_validation",
    "suggest_learning_rates",
    "train_epochs",
    "train_state_sharding",
    "zero1_sharding",
]
