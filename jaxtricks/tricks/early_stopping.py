"""Early stopping: stop when a monitored metric stops improving and keep the best weights (L5).

Each epoch e = 1, 2, ... reports a metric m_e (a validation loss, an accuracy, ...) and the
parameters θ_e it was measured on. With s = +1 to minimize and s = −1 to maximize, epoch e
*improves* on the best metric so far when

    s·m_e < s·best − δ                      (δ = min_delta ≥ 0; NaN never improves)

and then best ← m_e, best_epoch ← e and, with ``restore_best``, θ_best ← θ_e. The count of
epochs without improvement, w, restarts at 0 on an improvement that also beats the baseline b
(when one is given: s·m_e < s·b − δ), and grows by one otherwise. Training should stop once

    w ≥ patience.

Epochs e ≤ ``start_from_epoch`` are a warm-up: they are counted but neither improve nor wait.
Once ``should_stop`` is set, further updates leave the state unchanged, so ``epoch`` is the
epoch at which it stopped, also when a ``lax.scan`` runs the state machine over a whole
sequence of metrics. This follows Keras' ``EarlyStopping``; unlike Flax's, it keeps the best
weights and can maximize.

Everything is a select (``jnp.where``), never Python control flow on a value, so ``update``
runs under ``jit``, ``vmap`` and ``lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks.tricks.checks import check_choice, check_int, check_nonnegative, check_range
from jaxtricks.tricks.tree import check_same_structure

MODES = ("min", "max")


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping`."""

    best_metric: jax.Array  # shape=(), float32; +inf ("min") or -inf ("max") before any
    best_epoch: jax.Array  # shape=(), int32; the epoch of best_metric, 0 before any
    epochs_without_improvement: jax.Array  # shape=(), int32; w, saturating
    epoch: jax.Array  # shape=(), int32; metrics seen, frozen once should_stop
    should_stop: jax.Array  # shape=(), bool; sticky
    best_params: Any  # like params, θ at best_epoch (init's before any); None if not restore_best
    best_batch_stats: Any  # like batch_stats, the same; None if not restore_best or no stats


class EarlyStopping(NamedTuple):
    """A pure early-stopping state machine; see :func:`early_stopping`."""

    init: Callable[..., EarlyStoppingState]  # (params, batch_stats=None) -> state
    update: Callable[..., EarlyStoppingState]  # (state, metric, params=None, batch_stats=None)


def improves(metric: jax.Array, reference: jax.Array, min_delta: Any, mode: str) -> jax.Array:
    """Whether ``metric`` beats ``reference`` by more than ``min_delta`` in direction ``mode``.

    Math: ``s·metric < s·reference − δ`` with s = +1 for ``"min"``, −1 for ``"max"``.
    """
    sign = 1 if mode == "min" else -1
    return sign * metric < sign * reference - min_delta


def as_metric(metric: Any) -> jax.Array:
    """``metric`` as a float32 scalar; ``ValueError`` for anything with a shape."""
    if np.shape(metric) != ():
        raise ValueError(f"metric must be a scalar, got shape {np.shape(metric)}")
    return jnp.asarray(metric).astype(jnp.float32)


def early_stopping(
    patience: int,
    min_delta: Any = 0.0,
    mode: str = "min",
    baseline: Any | None = None,
    *,
    start_from_epoch: int = 0,
    restore_best: bool = True,
) -> EarlyStopping:
    """Early stopping on a metric reported once per epoch, keeping the best parameters.

    Math: epoch e improves when ``s·m_e < s·best − δ`` (s = +1 for ``"min"``, −1 for
    ``"max"``); the epochs without improvement w restart at 0 on an improvement that also
    beats ``baseline`` and grow by one otherwise; ``should_stop = w ≥ patience``.

    Args:
      patience: epochs without improvement after which to stop, an integer >= 1.
      min_delta: δ >= 0, the least change that counts as an improvement.
      mode: ``"min"`` for a loss, ``"max"`` for an accuracy.
      baseline: a value the metric must beat (by δ) for w to restart; None: any improvement.
      start_from_epoch: the first epochs to ignore (warm-up), an integer >= 0.
      restore_best: keep the parameters (and batch statistics) of the best epoch in the
        state; False keeps only the metric and the epoch, which costs no memory.

    Returns:
      An :class:`EarlyStopping` with ``init(params, batch_stats=None)`` and
      ``update(state, metric, params=None, batch_stats=None)``, both pure; ``update`` needs
      the parameters (and statistics) only with ``restore_best``, in the structure given to
      ``init``.

    Examples:
      >>> import jax.numpy as jnp
      >>> stopper = early_stopping(patience=2)
      >>> state = stopper.init({"w": jnp.zeros(())})
      >>> for epoch, loss in enumerate([3.0, 1.0, 2.0, 2.5, 0.5], start=1):
      ...     state = stopper.update(state, loss, {"w": jnp.asarray(float(epoch))})
      >>> bool(state.should_stop), int(state.epoch), int(state.best_epoch)
      (True, 4, 2)
      >>> float(state.best_metric), float(state.best_params["w"])
      (1.0, 2.0)
    """
    patience = check_int("patience", patience, 1)
    check_nonnegative("min_delta", min_delta)
    check_choice("mode", mode, MODES)
    if baseline is not None:
        check_range("baseline", baseline)
    start_from_epoch = check_int("start_from_epoch", start_from_epoch, 0)
    if not isinstance(restore_best, bool):
        raise ValueError(f"restore_best must be a bool, got {restore_best!r}")

    def init_fn(params, batch_stats=None):
        worst = jnp.inf if mode == "min" else -jnp.inf
        return EarlyStoppingState(
            best_metric=jnp.asarray(worst, jnp.float32),
            best_epoch=jnp.zeros((), jnp.int32),
            epochs_without_improvement=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            should_stop=jnp.asarray(False),
            best_params=params if restore_best else None,
            best_batch_stats=batch_stats if restore_best else None,
        )

    def update_fn(state, metric, params=None, batch_stats=None):
        metric = as_metric(metric)
        delta = jnp.asarray(min_delta).astype(jnp.float32)
        if restore_best:
            check_same_structure("params", params, "the params given to init", state.best_params)
            check_same_structure(
                "batch_stats", batch_stats, "the batch_stats given to init", state.best_batch_stats
            )
        active = jnp.logical_not(state.should_stop)
        epoch = optax.safe_increment(state.epoch)
        monitored = active & (epoch > start_from_epoch)
        improved = monitored & improves(metric, state.best_metric, delta, mode)
        restart = improved
        if baseline is not None:
            floor = jnp.asarray(baseline).astype(jnp.float32)
            restart = improved & improves(metric, floor, delta, mode)
        wait = jnp.where(restart, 0, optax.safe_increment(state.epochs_without_improvement))
        wait = jnp.where(monitored, wait, state.epochs_without_improvement)

        def keep_best(new, old):
            if old is None:
                return None
            return jax.tree.map(lambda n, o: jnp.where(improved, n, o), new, old)

        return EarlyStoppingState(
            best_metric=jnp.where(improved, metric, state.best_metric),
            best_epoch=jnp.where(improved, epoch, state.best_epoch),
            epochs_without_improvement=wait,
            epoch=jnp.where(active, epoch, state.epoch),
            should_stop=state.should_stop | (monitored & (wait >= patience)),
            best_params=keep_best(params, state.best_params),
            best_batch_stats=keep_best(batch_stats, state.best_batch_stats),
        )

    return EarlyStopping(init_fn, update_fn)
