"""Ensembles: K models trained side by side in one compiled program (lesson L5, model averaging).

An ensemble is K training states stacked along a new leading axis, ``S = (s_1, ..., s_K)``; every
array of a :class:`~jaxtricks.training.state.TrainState` gains an axis of size K. One step trains
all members on the same batch,

    S' = vmap(step, in_axes=(0, None))(S, batch),

so K models cost one compilation and run as one program whose matrix products carry an extra
batch axis. The members differ in where they start (initial parameters and dropout keys) and,
in a sweep, in their hyperparameters. The ensemble predicts by averaging the members'
probabilities,

    p(y | x) = (1/K) Σ_k softmax(f_k(x))_y,

and is scored by ``accuracy = mean_i [argmax_y p(y | x_i) = y_i]`` and
``loss = -mean_i log p(y_i | x_i)``; each member is also scored on its own.

**Seeds.** With ``(k_init, k_data) = split(key(seed))`` as in
:func:`~jaxtricks.training.fit.fit`, member k starts from the state ``fit(seed=seed + k)``
would start from (all from ``seed``'s with ``shared_init``), and every member sees the batches
``fit(seed=seed)`` sees: the data order of epoch e is ``permutation(fold_in(k_data, e))``.

**Pieces.** :func:`fit_ensemble` is :func:`~jaxtricks.training.fit.fit`'s loop
(:func:`~jaxtricks.training.fit.train_epochs`, the same epoch runners and hooks) over the
stacked state, with the vmapped step of :func:`make_ensemble_train_step` and the evaluation of
:func:`make_ensemble_eval_step`. Members are Linen modules: an NNX module holds one set of
weights, and is vmapped with ``nnx.vmap`` instead.

**Sweeps.** A hyperparameter injected with ``optax.inject_hyperparams`` is an array in the
optimizer state, so giving member k its own value ``h_k`` sweeps K values in the same single
compile (``hyperparams={"learning_rate": [h_1, ..., h_K]}``). A model attribute such as the
dropout rate is a Python constant of the compiled program instead, so sweeping it needs one
compile per value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks.backend import speed_paths, use_speed_paths
from jaxtricks.training.caching import jit_with, shared
from jaxtricks.training.epochs import choose_runner, compile_epoch_runner, epoch_indices
from jaxtricks.training.fit import make_hooks, split_validation, train_epochs
from jaxtricks.training.history import History
from jaxtricks.training.hooks import Hook, Run
from jaxtricks.training.hyperparams import set_hyperparams
from jaxtricks.training.model import FunctionalModel, functional_model
from jaxtricks.training.state import TrainState, as_optimizer, create_train_state
from jaxtricks.training.steps import (
    LossFn,
    check_examples,
    check_labels,
    check_skip_nonfinite,
    evaluate,
    make_objective,
    make_train_step,
)

__all__ = [
    "create_ensemble",
    "ensemble_member",
    "ensemble_probabilities",
    "evaluate_ensemble",
    "fit_ensemble",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
]

Batch = tuple[Any, Any]
Metrics = dict[str, jax.Array]

def _linen(model: Any) -> FunctionalModel:
    fm = functional_model(model)
    if fm.kind != "linen":
        raise ValueError(
            "model: an ensemble's members must be a flax.linen.Module (their weights are stacked "
            f"along a new axis); got an {fm.kind} module: vmap it with nnx.vmap instead"
        )
    return fm


def _check_keys(keys: Any) -> jax.Array:
    """Raises ``ValueError`` unless ``keys`` is a 1-D array of K >= 1 typed PRNG keys."""
    typed = isinstance(keys, jax.Array) and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if not typed or keys.ndim != 1 or keys.shape[0] == 0:
        raise ValueError(
            "keys must be a 1-D array of K >= 1 PRNG keys, e.g. jax.random.split(key, K), "
            f"got {keys!r}"
        )
    return keys


def _check_hyperparams(hyperparams: Any, num_members: int) -> dict[str, np.ndarray]:
    """``{name: K finite numbers}`` as float arrays; ``ValueError`` naming what is wrong."""
    if hyperparams is None:
        return {}
    if not isinstance(hyperparams, Mapping):
        raise ValueError(
            "hyperparams must be a mapping from an injected hyperparameter's name to one value "
            f"per member, got {type(hyperparams).__name__}"
        )
    checked = {}
    for name, values in hyperparams.items():
        array = np.asarray(values)
        if (
            array.shape != (num_members,)
            or not np.issubdtype(array.dtype, np.number)
            or not np.all(np.isfinite(array))
        ):
            raise ValueError(
                f"hyperparams[{name!r}] must hold {num_members} finite numbers, one per member, "
                f"got {values!r}"
            )
        checked[name] = array
    return checked


def create_ensemble(
        model: Any,
        optimizer: Any,
        keys: jax.Array,
        sample_input: Any,
        *,
        hyperparams: Mapping[str, Sequence[float]] | None = None,
) -> TrainState:
    """K training states at step 0, stacked along a leading axis.

    Math: ``S = vmap(create_train_state)(keys)``: member k is
    ``create_train_state(model, optimizer, keys[k], sample_input)``; with ``hyperparams``, member
    k's injected hyperparameter ``h`` is set to ``hyperparams[h][k]``.

    Args:
      model: a Flax Linen module.
      optimizer: an Optax transformation; wrap it with ``optax.inject_hyperparams`` to give
        members their own hyperparameters.
      keys: K typed PRNG keys, one per member, e.g. ``jax.random.split(key, K)``.
      sample_input: a batch of inputs fixing the parameter shapes.
      hyperparams: ``{name: K values}`` for hyperparameters injected by
        ``optax.inject_hyperparams`` as numbers (not schedules); None keeps the optimizer's.

    Returns:
      A :class:`~jaxtricks.training.state.TrainState` whose every array has a leading axis K.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> states = create_ensemble(nn.Dense(3), tx, jax.random.split(jax.random.key(0), 4),
      ...                          jnp.zeros((1, 5)), hyperparams={"learning_rate": [1, 2, 3, 4]})
      >>> states.params["kernel"].shape, states.opt_state.hyperparams["learning_rate"]
      ((4, 5, 3), Array([1., 2., 3., 4.], dtype=float32))
    """
    fm = _linen(model)
    optimizer = as_optimizer(optimizer)
    keys = _check_keys(keys)
    values = _check_hyperparams(hyperparams, keys.shape[0])
    states = jax.vmap(lambda key: create_train_state(fm, optimizer, key, sample_input))(keys)
    if values:
        states = states._replace(
            opt_state=set_hyperparams(states.opt_state, values, argument="hyperparams"))
    return states


def ensemble_member(states: TrainState, index: int) -> TrainState:
    """Member ``index`` of an ensemble, as an ordinary training state.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> states = create_ensemble(nn.Dense(3), optax.sgd(0.1),
      ...                          jax.random.split(jax.random.key(0), 2), jnp.zeros((1, 5)))
      >>> ensemble_member(states, 1).params["kernel"].shape
      (5, 3)
    """
    size = jax.tree.leaves(states)[0].shape[0]
    if isinstance(index, bool) or not isinstance(index, int) or not -size <= index < size:
        raise ValueError(f"index must be an int in [{-size}, {size - 1}], got {index!r}")
    return jax.tree.map(lambda leaf: leaf[index], states)


def make_ensemble_train_step(
        model: Any,
        optimizer: Any,
        *,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
        skip_nonfinite: bool | Literal["strict"] = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the compiled step that trains every member of an ensemble on one shared batch.

    Math: ``S' = vmap(step, in_axes=(0, None))(S, batch)`` with ``step`` from
    :func:`~jaxtricks.training.steps.make_train_step`.

    Args:
      model: the members' Flax Linen module.
      optimizer: their Optax transformation (injected hyperparameters may differ per member:
        they live in the state).
      loss_fn: as for :func:`~jaxtricks.training.steps.make_train_step`.
      metrics: as for :func:`~jaxtricks.training.steps.make_train_step`.
      skip_nonfinite: as there; each member skips its own non-finite steps.

    Returns:
      ``ensemble_step(states, batch) -> (states, metrics)``, ``jit``-compiled, donating
      ``states``; each metric has shape ``(K,)``. Equal arguments give the same function.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> tx = optax.sgd(0.1)
      >>> states = create_ensemble(nn.Dense(2), tx, jax.random.split(jax.random.key(0), 3),
      ...                          jnp.zeros((1, 4)))
      >>> step = make_ensemble_train_step(nn.Dense(2), tx)
      >>> states, metrics = step(states, (jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)))
      >>> states.step.tolist(), metrics["loss"].shape
      ([1, 1, 1], (3,))
    """
    # Under vmap each member's guard has its own predicate, and a batched lax.cond runs both
    # branches: the quick row-sum test of the strict guard would only add to the exact one.
    with use_speed_paths(speed_paths()._replace(finite_check_by_sums=False)):
        train_step = make_train_step(_linen(model), optimizer, loss_fn=loss_fn, metrics=metrics,
                                     skip_nonfinite=skip_nonfinite, donate=False)
    return shared(_build_ensemble_step, train_step)


def _build_ensemble_step(train_step):
    return jax.jit(jax.vmap(train_step, in_axes=(0, None)), donate_argnums=0)


def make_ensemble_eval_step(
        model: Any,
        *,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
) -> Callable[[TrainState, Batch, jax.Array], Metrics]:
    """Builds the compiled evaluation of an ensemble: each member, and their average.

    Math: member k is scored as :func:`~jaxtricks.training.steps.make_eval_step` scores one
    model (``member_loss``, ``member_<metric>``, K sums each). With the default loss the
    ensemble predicts the averaged probabilities ``p = (1/K) Σ_k softmax(f_k(x))`` and is
    scored by ``loss = -log p(y | x)`` (computed as a log-sum-exp) and ``accuracy = [argmax p =
    y]``; with a loss of one's own, the ensemble's output is the members' mean output, scored
    by the loss and metrics as given.

    Args:
      model: the members' Flax Linen module.
      loss_fn: as for :func:`~jaxtricks.training.steps.make_eval_step`.
      metrics: as there.

    Returns:
      ``eval_step(states, (x, y), mask) -> sums``, ``jit``-compiled: the masked sums of the
      ensemble's ``loss`` and metrics, of ``member_loss`` and each ``member_<metric>`` (shape
      ``(K,)``), and ``count``; :func:`~jaxtricks.training.steps.evaluate` turns them into
      means.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> from jaxtricks.training.steps import evaluate
      >>> states = create_ensemble(nn.Dense(2), optax.sgd(0.1),
      ...                          jax.random.split(jax.random.key(0), 3), jnp.zeros((1, 4)))
      >>> scores = evaluate(make_ensemble_eval_step(nn.Dense(2)), states, jnp.ones((5, 4)),
      ...                   jnp.zeros(5, jnp.int32), batch_size=4)
      >>> sorted(scores), len(scores["member_accuracy"])
      (['accuracy', 'loss', 'member_accuracy', 'member_loss'], 3)
    """
    return shared(_build_ensemble_eval_step, _linen(model), make_objective(loss_fn, metrics))


def _log_mean_softmax(outputs: jax.Array) -> jax.Array:
    """``log (1/K) Σ_k softmax(z_k)`` over the leading member axis, in log space."""
    log_p = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    return jax.nn.logsumexp(log_p, axis=0) - math.log(outputs.shape[0])


def _build_ensemble_eval_step(fm: FunctionalModel, objective):
    def eval_step(states: TrainState, batch: Batch, mask: jax.Array) -> Metrics:
        x, y = batch

        def outputs_of(state):
            return fm.apply(state.params, state.model_state, x, train=False, key=None)[0]

        outputs = jax.vmap(outputs_of)(states)

        def masked_sum(values):
            return jnp.sum(jnp.where(mask, values.astype(jnp.float32), 0.0), axis=-1)

        functions = (("loss", objective.loss_fn), *objective.metrics)
        sums = {}
        for name, fn in functions:
            sums[f"member_{name}"] = masked_sum(jax.vmap(fn, in_axes=(0, None))(outputs, y))
        if objective.integer_labels:
            log_p = _log_mean_softmax(outputs)
            sums["loss"] = masked_sum(-jnp.take_along_axis(log_p, y[:, None], axis=-1)[:, 0])
            sums["accuracy"] = masked_sum(jnp.argmax(log_p, axis=-1) == y)
        else:
            mean_output = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), outputs)
            for name, fn in functions:
                sums[name] = masked_sum(fn(mean_output, y))
        sums["count"] = jnp.sum(mask, dtype=jnp.int32)
        return sums

    return jax.jit(eval_step)


def _probabilities(fm, states, x):
    return jnp.exp(_log_mean_softmax(
        jax.vmap(lambda s: fm.apply(s.params, s.model_state, x, train=False, key=None)[0])(states)
    ))


def ensemble_probabilities(model: Any, states: TrainState, x: Any) -> jax.Array:
    """The ensemble's averaged class probabilities ``(1/K) Σ_k softmax(f_k(x))``.

    Args:
      model: the members' Flax Linen module, applied in evaluation mode.
      states: the ensemble, e.g. from :func:`fit_ensemble`.
      x: a batch of inputs ``(N, ...)``.

    Returns:
      A float32 array ``(N, C)`` whose rows sum to 1.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> states = create_ensemble(nn.Dense(3), optax.sgd(0.1),
      ...                          jax.random.split(jax.random.key(0), 2), jnp.zeros((1, 5)))
      >>> p = ensemble_probabilities(nn.Dense(3), states, jnp.ones((4, 5)))
      >>> p.shape, bool(jnp.allclose(p.sum(axis=1), 1.0))
      ((4, 3), True)
    """
    return jit_with(_probabilities, _linen(model))(states, jnp.asarray(x))


def evaluate_ensemble(model: Any, states: TrainState, x: Any, y: Any, *,
                      batch_size: int = 1000) -> dict[str, Any]:
    """Scores every member and the ensemble (averaged probabilities) on a labelled split.

    :func:`~jaxtricks.training.steps.evaluate` with :func:`make_ensemble_eval_step`.

    Returns:
      ``{"loss": float, "accuracy": float, "member_loss": [K floats],
      "member_accuracy": [K floats]}``.
    """
    return evaluate(make_ensemble_eval_step(model), states, x, y, batch_size=batch_size)


def fit_ensemble(
        model: Any,
        optimizer: Any,
        x: Any,
        y: Any,
        *,
        num_members: int,
        epochs: int,
        batch_size: int = 128,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
        callbacks: Iterable[Hook | Callable[..., Any]] = (),
        seed: int = 0,
        hyperparams: Mapping[str, Sequence[float]] | None = None,
        shared_init: bool = False,
        skip_nonfinite: bool | Literal["strict"] = True,
        progress: bool = True,
        runner: str | None = None,
) -> tuple[TrainState, History]:
    """Trains ``num_members`` models together, one compiled program per step, and scores them.

    :func:`~jaxtricks.training.fit.fit`'s loop over K stacked states (see the module
    docstring): member k starts from the state ``fit(seed=seed + k)`` would start from
    (``seed``'s own when ``shared_init``), all members see the batches ``fit(seed=seed)``
    sees, and after each epoch every member and the ensemble are evaluated on the validation
    data. The arguments ``x``, ``y``, ``epochs``, ``batch_size``, ``validation_data``,
    ``validation_split``, ``loss_fn``, ``metrics``, ``callbacks``, ``seed``,
    ``skip_nonfinite``, ``progress`` and ``runner`` are as for
    :func:`~jaxtricks.training.fit.fit` (hooks see the stacked state).

    Args:
      model: a Flax Linen module.
      optimizer: an Optax transformation; wrap it with ``optax.inject_hyperparams`` for a
        sweep.
      num_members: K, the number of models, >= 1.
      hyperparams: ``{name: K values}``: member k trains with the injected hyperparameter
        ``name`` set to the k-th value (a sweep in one compile); see :func:`create_ensemble`.
      shared_init: start every member from the same state (``seed``'s), so that a sweep
        compares hyperparameters and nothing else.

    Returns:
      ``(states, history)``: the trained ensemble (leading axis K; see
      :func:`ensemble_member`) and its history. A record's ``loss`` and metrics are the
      members' training means averaged over the members, with each member's in
      ``record.info`` under the same name; ``val_loss`` and ``val_<metric>`` score the
      ensemble's prediction, ``val_member_loss`` and ``val_member_<metric>`` the members'
      (mean in ``metrics``, K values in ``info``). The header adds ``member_seeds``,
      ``num_members``, ``shared_init`` and ``hyperparams``.

    Examples:
      >>> import flax.linen as nn, jax.numpy as jnp, optax
      >>> y = jnp.arange(64) % 2
      >>> x = jnp.where(y[:, None] == 1, 1.0, -1.0) * jnp.ones((64, 4))
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> states, history = fit_ensemble(
      ...     nn.Dense(2), tx, x, y, num_members=3, epochs=2, batch_size=16,
      ...     validation_data=(x, y), hyperparams={"learning_rate": [0.0, 0.01, 0.1]},
      ...     shared_init=True, progress=False)
      >>> states.step.tolist()
      [8, 8, 8]
      >>> [round(v, 2) for v in history.epochs[-1].info["val_member_loss"]]  # lr 0: untrained
      [0.16, 0.15, 0.08]
    """
    fm = _linen(model)
    tx = as_optimizer(optimizer)
    objective = make_objective(loss_fn, metrics)
    (x, y), validation = split_validation(x, y, validation_data, validation_split)
    num_examples = check_examples(("x", x), ("y", y))
    for name, value, low, high in (("num_members", num_members, 1, None),
                                   ("epochs", epochs, 1, None),
                                   ("batch_size", batch_size, 1, num_examples),
                                   ("seed", seed, 0, 2**63 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                high is not None and value > high):
            raise ValueError(f"{name} must be an int in [{low}, {high or 'inf'}], got {value!r}")
    check_skip_nonfinite(skip_nonfinite)
    for name, flag in (("shared_init", shared_init), ("progress", progress)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    values = _check_hyperparams(hyperparams, num_members)
    runner = speed_paths().runner if runner is None else runner

    member_seeds = [seed] * num_members if shared_init else [seed + k for k in range(num_members)]
    # k_init of each member's seed, as fit(seed=s) splits it.
    init_keys = jnp.stack([jax.random.split(jax.random.key(s))[0] for s in member_seeds])
    data_key = jax.random.split(jax.random.key(seed))[1]
    data = jax.device_put((x, y))
    validation = None if validation is None else jax.device_put(validation)
    states = create_ensemble(fm, tx, init_keys, jax.tree.map(lambda a: a[:1], data[0]),
                             hyperparams={name: list(value) for name, value in values.items()}
                             or None)
    if objective.integer_labels:
        classes = jax.eval_shape(
            lambda s: fm.apply(s.params, s.model_state, data[0], train=False, key=None)[0],
            ensemble_member(states, 0),
        ).shape[-1]
        check_labels(y, classes, "y")
        if validation is not None:
            check_labels(validation[1], classes, "validation y")
    # The arguments as given: the default loss (None) scores the ensemble by its averaged
    # probabilities, an explicit loss function by its members' mean output.
    train_step = make_ensemble_train_step(fm, tx, loss_fn=loss_fn, metrics=metrics,
                                          skip_nonfinite=skip_nonfinite)
    eval_step = make_ensemble_eval_step(fm, loss_fn=loss_fn, metrics=metrics)
    steps_per_epoch = num_examples // batch_size
    indices = epoch_indices(data_key, 1, num_examples, batch_size)
    if runner == "auto":
        epoch_runner, choice = choose_runner(train_step, states, data, indices)
    else:
        epoch_runner = compile_epoch_runner(train_step, runner, states, data, indices)
        choice = {"runner": runner}
    config = {
        "seed": seed,
        "batch_size": batch_size,
        "train_examples": num_examples,
        "validation_examples": 0 if validation is None else check_examples(("", validation)),
        "skip_nonfinite": skip_nonfinite,
        "num_members": num_members,
    }
    run = Run(
        model=fm,
        state=states,
        history=History(header={
            **config,
            "member_seeds": member_seeds,
            "shared_init": shared_init,
            "hyperparams": {name: value.tolist() for name, value in values.items()},
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "backend": jax.default_backend(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "runner": choice["runner"],
            "compile_time_s": epoch_runner.compile_time_s,
        }),
        epoch=0,
        first_epoch=0,
        last_epoch=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        train_data=data,
        evaluation_sets={} if validation is None else {"val": validation},
        evaluate=lambda s, d: evaluate(eval_step, s, *d, batch_size=batch_size),
        config=config,
        zero_totals=epoch_runner.zero_totals,
        hooks=make_hooks(callbacks, progress, health=False),
    )
    train_epochs(run, epoch_runner, data, data_key)
    return run.state, run.history
