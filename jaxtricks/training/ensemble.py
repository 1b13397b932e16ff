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

**Sweeps.** A hyperparameter injected with ``optax.inject_hyperparams`` is an array in the
optimizer state, so giving member k its own value ``h_k`` sweeps K values in the same single
compile (``hyperparams={"learning_rate": [h_1, ..., h_K]}``). A model attribute such as the
dropout rate is a Python constant of the compiled program instead, so sweeping it needs one
compile per value.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxtricks.training.epochs import epoch_indices
from jaxtricks.training.state import (
    TrainState,
    _check_model,
    _check_optimizer,
    _shared,
    create_train_state,
)
from jaxtricks.training.steps import _check_split, _check_train_test, _variables, make_train_step
from jaxtricks.tricks._checks import check_int

__all__ = [
    "create_ensemble",
    "ensemble_member",
    "ensemble_probabilities",
    "evaluate_ensemble",
    "fit_ensemble",
    "make_ensemble_train_step",
]

Batch = tuple[jax.Array, ...]
Metrics = dict[str, jax.Array]
History = dict[str, Any]

_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


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


def _set_hyperparams(opt_state: Any, values: dict[str, np.ndarray]) -> Any:
    """The stacked optimizer state with each injected hyperparameter set to its K values."""
    found: set[str] = set()
    available: set[str] = set()
    scheduled: set[str] = set()

    def replace(node):
        if not isinstance(node, _INJECTED):
            return node
        hyperparams = dict(node.hyperparams)
        available.update(hyperparams)
        scheduled.update(getattr(node, "hyperparams_states", {}))
        for name, value in values.items():
            if name in hyperparams:
                hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
                found.add(name)
        return node._replace(hyperparams=hyperparams)

    new_state = jax.tree.map(replace, opt_state, is_leaf=lambda node: isinstance(node, _INJECTED))
    for name in values:
        if name in scheduled:
            raise ValueError(
                f"hyperparams[{name!r}]: the optimizer computes it from a schedule every step, "
                "which would overwrite the values; inject it as a number to sweep it"
            )
        if name not in found:
            raise ValueError(
                f"hyperparams[{name!r}]: the optimizer has no injected hyperparameter of that "
                f"name (wrap it with optax.inject_hyperparams); it has {sorted(available)}"
            )
    return new_state


def create_ensemble(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        keys: jax.Array,
        sample_input: jax.Array,
        *,
        hyperparams: Mapping[str, Sequence[float]] | None = None,
) -> TrainState:
    """K training states at step 0, stacked along a leading axis.

    Math: ``S = vmap(create_train_state)(keys)``: member k is
    ``create_train_state(model, optimizer, keys[k], sample_input)``; with ``hyperparams``, member
    k's injected hyperparameter ``h`` is set to ``hyperparams[h][k]``.

    Args:
      model: a Flax Linen module, as for :func:`~jaxtricks.training.state.create_train_state`.
      optimizer: an Optax gradient transformation; wrap it with ``optax.inject_hyperparams`` to
        give members their own hyperparameters.
      keys: K typed PRNG keys, one per member, e.g. ``jax.random.split(key, K)``.
      sample_input: a batch of inputs fixing the parameter shapes.
      hyperparams: ``{name: K values}`` for hyperparameters injected by
        ``optax.inject_hyperparams`` as numbers (not schedules); None keeps the optimizer's.

    Returns:
      A :class:`~jaxtricks.training.state.TrainState` whose every array has a leading axis K.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(3)(x)
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> states = create_ensemble(Net(), tx, jax.random.split(jax.random.key(0), 4),
      ...                          jnp.zeros((1, 5)), hyperparams={"learning_rate": [1, 2, 3, 4]})
      >>> states.params["Dense_0"]["kernel"].shape, states.opt_state.hyperparams["learning_rate"]
      ((4, 5, 3), Array([1., 2., 3., 4.], dtype=float32))
    """
    _check_model(model)
    _check_optimizer(optimizer)
    keys = _check_keys(keys)
    values = _check_hyperparams(hyperparams, keys.shape[0])
    states = jax.vmap(lambda key: create_train_state(model, optimizer, key, sample_input))(keys)
    if values:
        states = states._replace(opt_state=_set_hyperparams(states.opt_state, values))
    return states


def ensemble_member(states: TrainState, index: int) -> TrainState:
    """Member ``index`` of an ensemble, as an ordinary training state.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(3)(x)
      >>> states = create_ensemble(Net(), optax.sgd(0.1), jax.random.split(jax.random.key(0), 2),
      ...                          jnp.zeros((1, 5)))
      >>> ensemble_member(states, 1).params["Dense_0"]["kernel"].shape
      (5, 3)
    """
    size = jax.tree.leaves(states)[0].shape[0]
    index = check_int("index", index, low=-size, high=size - 1)
    return jax.tree.map(lambda leaf: leaf[index], states)


def make_ensemble_train_step(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        *,
        skip_nonfinite: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the compiled step that trains every member of an ensemble on one shared batch.

    Math: ``S' = vmap(step, in_axes=(0, None))(S, batch)`` with ``step`` from
    :func:`~jaxtricks.training.steps.make_train_step`.

    Args:
      model: the members' Flax Linen module.
      optimizer: their Optax gradient transformation (injected hyperparameters may differ per
        member: they live in the state).
      skip_nonfinite: as in :func:`~jaxtricks.training.steps.make_train_step`; each member
        skips its own non-finite steps.

    Returns:
      ``ensemble_step(states, batch) -> (states, metrics)``, ``jit``-compiled, donating
      ``states``; each metric has shape ``(K,)``. Equal arguments give the same function.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(2)(x)
      >>> tx = optax.sgd(0.1)
      >>> states = create_ensemble(Net(), tx, jax.random.split(jax.random.key(0), 3),
      ...                          jnp.zeros((1, 4)))
      >>> step = make_ensemble_train_step(Net(), tx)
      >>> states, metrics = step(states, (jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)))
      >>> states.step.tolist(), metrics["loss"].shape
      ([1, 1, 1], (3,))
    """
    train_step = make_train_step(model, optimizer, skip_nonfinite=skip_nonfinite)
    return _shared(_build_ensemble_step, train_step)


def _build_ensemble_step(train_step):
    return jax.jit(jax.vmap(train_step, in_axes=(0, None)), donate_argnums=0)


def _member_logits(model: nn.Module, states: TrainState, images: jax.Array) -> jax.Array:
    """``(K, N, C)`` float32 logits of every member, in evaluation mode."""

    def logits(state):
        variables = _variables(state.params, state.batch_stats)
        return model.apply(variables, images, train=False).astype(jnp.float32)

    return jax.vmap(logits)(states)


def _ensemble_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked sums of the members' and the ensemble's losses and correct predictions.

    ``log p(y | x) = logsumexp_k log softmax(f_k(x))_y - log K``, the log of the averaged
    probabilities computed without leaving log space.
    """
    log_probabilities = jax.nn.log_softmax(logits, axis=-1)
    ensemble = jax.nn.logsumexp(log_probabilities, axis=0) - math.log(logits.shape[0])

    def nll(log_p, labels):
        return -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]

    def masked_sum(values, mask):
        return jnp.sum(jnp.where(mask, values, jnp.zeros_like(values)), axis=-1)

    # The members' arrays lead with K; labels and mask get that axis explicitly.
    member_labels = jnp.broadcast_to(labels, logits.shape[:-1])
    member_mask = jnp.broadcast_to(mask, logits.shape[:-1])
    return {
        "member_loss_sum": masked_sum(nll(log_probabilities, member_labels), member_mask),
        "member_correct": masked_sum(jnp.argmax(logits, axis=-1) == member_labels, member_mask),
        "ensemble_loss_sum": masked_sum(nll(ensemble, labels), mask),
        "ensemble_correct": masked_sum(jnp.argmax(ensemble, axis=-1) == labels, mask),
        "count": jnp.sum(mask.astype(jnp.int32)),
    }


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(model, states, images, labels, mask):
    return _ensemble_sums(_member_logits(model, states, images), labels, mask)


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model, states, images):
    return jnp.mean(jax.nn.softmax(_member_logits(model, states, images), axis=-1), axis=0)


def ensemble_probabilities(model: nn.Module, states: TrainState, images: jax.Array) -> jax.Array:
    """The ensemble's averaged class probabilities ``(1/K) Σ_k softmax(f_k(x))``.

    Args:
      model: the members' Flax Linen module, applied with ``train=False``.
      states: the ensemble, e.g. from :func:`fit_ensemble`.
      images: a floating batch ``(N, ...)``.

    Returns:
      A float32 array ``(N, C)`` whose rows sum to 1.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(3)(x)
      >>> states = create_ensemble(Net(), optax.sgd(0.1), jax.random.split(jax.random.key(0), 2),
      ...                          jnp.zeros((1, 5)))
      >>> p = ensemble_probabilities(Net(), states, jnp.ones((4, 5)))
      >>> p.shape, bool(jnp.allclose(p.sum(axis=1), 1.0))
      ((4, 3), True)
    """
    _check_model(model)
    return _probabilities(model, states, jnp.asarray(images))


def evaluate_ensemble(
        model: nn.Module,
        states: TrainState,
        images: Any,
        labels: Any,
        *,
        batch_size: int = 1000,
) -> dict[str, Any]:
    """Scores every member and the ensemble (averaged probabilities) on a labelled split.

    Math: member k: ``mean_i -log softmax(f_k(x_i))_{y_i}`` and its accuracy; ensemble:
    ``mean_i -log p(y_i | x_i)`` and ``mean_i [argmax p(· | x_i) = y_i]`` with
    ``p = (1/K) Σ_k softmax(f_k)``. Batches are padded to one shape and the padding masked out.

    Args:
      model: the members' Flax Linen module, applied with ``train=False``.
      states: the ensemble.
      images: float array ``(N, ...)``.
      labels: integer array ``(N,)``.
      batch_size: examples per compiled batch, >= 1 (at most N are used).

    Returns:
      ``{"ensemble_loss": float, "ensemble_accuracy": float, "member_loss": [K floats],
      "member_accuracy": [K floats]}``.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(2)(x)
      >>> states = create_ensemble(Net(), optax.sgd(0.1), jax.random.split(jax.random.key(0), 3),
      ...                          jnp.zeros((1, 4)))
      >>> result = evaluate_ensemble(Net(), states, jnp.ones((5, 4)), jnp.zeros(5, jnp.int32))
      >>> sorted(result), len(result["member_accuracy"])
      (['ensemble_accuracy', 'ensemble_loss', 'member_accuracy', 'member_loss'], 3)
    """
    _check_model(model)
    images, labels = _check_split("images", images, "labels", labels)
    batch_size = min(check_int("batch_size", batch_size, low=1), images.shape[0])
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, jnp.int32)
    totals = None
    for start in range(0, images.shape[0], batch_size):
        chunk_images = images[start : start + batch_size]
        chunk_labels = labels[start : start + batch_size]
        padding = batch_size - chunk_images.shape[0]
        mask = jnp.arange(batch_size) < chunk_images.shape[0]
        if padding:
            chunk_images = jnp.concatenate(
                [chunk_images, jnp.zeros((padding, *images.shape[1:]), images.dtype)]
            )
            chunk_labels = jnp.concatenate([chunk_labels, jnp.zeros((padding,), jnp.int32)])
        sums = _eval_batch(model, states, chunk_images, chunk_labels, mask)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {
        "ensemble_loss": float(totals["ensemble_loss_sum"]) / count,
        "ensemble_accuracy": int(totals["ensemble_correct"]) / count,
        "member_loss": [float(value) / count for value in totals["member_loss_sum"]],
        "member_accuracy": [int(value) / count for value in totals["member_correct"]],
    }


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _train_epoch(ensemble_step, states, images, labels, indices):
    """One epoch as one ``lax.scan`` over its batches; per-step metrics of shape ``(S, K)``."""

    def body(states, rows):
        batch = (jnp.take(images, rows, axis=0), jnp.take(labels, rows, axis=0))
        return ensemble_step(states, batch)

    return lax.scan(body, states, indices)


def _check_labels(model, states, images, train_labels, test_labels) -> None:
    """Labels must index the model's logits; out-of-range labels would train on garbage."""
    first = ensemble_member(states, 0)
    logits = jax.eval_shape(
        lambda variables, x: model.apply(variables, x, train=False),
        _variables(first.params, first.batch_stats),
        jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype),
    )
    classes = logits.shape[-1]
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        low, high = int(np.min(labels)), int(np.max(labels))
        if low < 0 or high >= classes:
            raise ValueError(
                f"{name} must be in [0, {classes}) for a model with {classes} logits, got "
                f"values in [{low}, {high}]"
            )


def _mean_applied(values: np.ndarray, applied: np.ndarray) -> list[float]:
    """Per member: the mean over the steps it applied (NaN when it skipped them all)."""
    counts = applied.sum(axis=0)
    sums = np.where(applied, values, 0.0).sum(axis=0)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts, strict=True)]


def fit_ensemble(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        train_images: Any,
        train_labels: Any,
        test_images: Any,
        test_labels: Any,
        *,
        num_members: int,
        epochs: int,
        batch_size: int = 128,
        seed: int = 0,
        hyperparams: Mapping[str, Sequence[float]] | None = None,
        shared_init: bool = False,
        skip_nonfinite: bool = True,
        eval_batch_size: int = 1000,
) -> tuple[TrainState, History]:
    """Trains ``num_members`` models together, one compiled program per epoch, and scores them.

    Member k starts from the state ``fit(seed=seed + k)`` would start from (``seed``'s own when
    ``shared_init``), all members see the batches ``fit(seed=seed)`` sees, and after each
    epoch every member and the ensemble (averaged probabilities) are evaluated on the test
    split; see the module docstring.

    Args:
      model: a Flax Linen module, as for :func:`~jaxtricks.training.fit.fit`.
      optimizer: an Optax gradient transformation; wrap it with ``optax.inject_hyperparams``
        for a sweep.
      train_images: float array ``(N, ...)``, already scaled.
      train_labels: integer array ``(N,)`` in [0, number of logits).
      test_images: float array ``(M, ...)`` with the training images' feature shape.
      test_labels: integer array ``(M,)``.
      num_members: K, the number of models, >= 1.
      epochs: epochs to train, >= 1.
      batch_size: examples per step, in [1, N]; the N mod batch_size left over are dropped
        each epoch.
      seed: non-negative int; member k's start derives from ``seed + k``, the data order from
        ``seed``.
      hyperparams: ``{name: K values}``: member k trains with the injected hyperparameter
        ``name`` set to the k-th value (a sweep in one compile); see :func:`create_ensemble`.
      shared_init: start every member from the same state (``seed``'s), so that a sweep
        compares hyperparameters and nothing else.
      skip_nonfinite: as in :func:`~jaxtricks.training.steps.make_train_step`, per member.
      eval_batch_size: examples per compiled evaluation batch, >= 1.

    Returns:
      ``(states, history)``: the trained ensemble (leading axis K; see
      :func:`ensemble_member`) and a history. ``history["header"]`` holds seed, member_seeds,
      num_members, shared_init, hyperparams (name -> K values), batch_size, epochs,
      train_examples, test_examples, steps_per_epoch, skip_nonfinite, backend and
      compile_time_s (compiling the epoch program, which is compiled once). Each record of
      ``history["epochs"]`` holds epoch, step, member_train_loss and member_train_accuracy
      (K means over the epoch's applied steps), member_skipped_steps (K counts),
      member_test_loss, member_test_accuracy (K each), ensemble_test_loss,
      ensemble_test_accuracy, epoch_time_s and eval_time_s.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, train):
      ...         return nn.Dense(2)(x)
      >>> labels = jnp.arange(64, dtype=jnp.int32) % 2
      >>> images = jnp.where(labels[:, None] == 1, 1.0, -1.0) * jnp.ones((64, 4))
      >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> states, history = fit_ensemble(
      ...     Net(), tx, images, labels, images, labels, num_members=3, epochs=2, batch_size=16,
      ...     hyperparams={"learning_rate": [0.0, 0.01, 0.1]}, shared_init=True)
      >>> states.step.tolist()
      [8, 8, 8]
      >>> [round(loss, 2) for loss in history["epochs"][-1]["member_test_loss"]]  # lr 0: untrained
      [0.72, 0.57, 0.15]
    """
    _check_model(model)
    _check_optimizer(optimizer)
    train_images, train_labels, test_images, test_labels = _check_train_test(
        train_images, train_labels, test_images, test_labels
    )
    num_train = train_images.shape[0]
    num_members = check_int("num_members", num_members, low=1)
    epochs = check_int("epochs", epochs, low=1)
    batch_size = check_int("batch_size", batch_size, low=1, high=num_train)
    seed = check_int("seed", seed, low=0)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, low=1)
    for name, flag in (("shared_init", shared_init), ("skip_nonfinite", skip_nonfinite)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    values = _check_hyperparams(hyperparams, num_members)

    member_seeds = [seed] * num_members if shared_init else [seed + k for k in range(num_members)]
    # k_init of each member's seed, as fit(seed=s) splits it.
    init_keys = jnp.stack([jax.random.split(jax.random.key(s))[0] for s in member_seeds])
    data_key = jax.random.split(jax.random.key(seed))[1]
    train_images, test_images = jnp.asarray(train_images), jnp.asarray(test_images)
    train_labels = jnp.asarray(train_labels, jnp.int32)
    test_labels = jnp.asarray(test_labels, jnp.int32)
    states = create_ensemble(
        model,
        optimizer,
        init_keys,
        train_images[:1],
        hyperparams=values or None,
    )
    _check_labels(model, states, train_images, train_labels, test_labels)
    ensemble_step = make_ensemble_train_step(model, optimizer, skip_nonfinite=skip_nonfinite)
    steps_per_epoch = num_train // batch_size
    begin = time.perf_counter()
    indices = epoch_indices(data_key, 1, num_train, batch_size)
    train_epoch = _train_epoch.lower(
        ensemble_step, states, train_images, train_labels, indices
    ).compile()
    history: History = {
        "header": {
            "seed": seed,
            "member_seeds": member_seeds,
            "num_members": num_members,
            "shared_init": shared_init,
            "hyperparams": {name: value.tolist() for name, value in values.items()},
            "batch_size": batch_size,
            "epochs": epochs,
            "train_examples": num_train,
            "test_examples": test_images.shape[0],
            "steps_per_epoch": steps_per_epoch,
            "skip_nonfinite": skip_nonfinite,
            "backend": jax.default_backend(),
            "compile_time_s": time.perf_counter() - begin,
        },
        "epochs": [],
    }
    for epoch in range(1, epochs + 1):
        indices = epoch_indices(data_key, epoch, num_train, batch_size)
        begin = time.perf_counter()
        states, metrics = train_epoch(states, train_images, train_labels, indices)
        metrics = jax.device_get(metrics)
        epoch_time = time.perf_counter() - begin
        begin = time.perf_counter()
        scores = evaluate_ensemble(
            model, states, test_images, test_labels, batch_size=eval_batch_size
        )
        applied = metrics["skipped"] == 0
        history["epochs"].append(
            {
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "member_train_loss": _mean_applied(metrics["loss"], applied),
                "member_train_accuracy": _mean_applied(metrics["accuracy"], applied),
                "member_skipped_steps": metrics["skipped"].sum(axis=0).tolist(),
                "member_test_loss": scores["member_loss"],
                "member_test_accuracy": scores["member_accuracy"],
                "ensemble_test_loss": scores["ensemble_loss"],
                "ensemble_test_accuracy": scores["ensemble_accuracy"],
                "epoch_time_s": epoch_time,
                "eval_time_s": time.perf_counter() - begin,
            }
        )
    return states, history
