"""Reducing the learning rate when a validation metric stops improving (lesson L6).

A scale c multiplies the optimizer's updates. Once per epoch the metric m_e is observed; with
s = +1 to minimize and s = −1 to maximize, the epoch improves when ``s·m_e < s·best − δ``
(then best ← m_e). The epochs without improvement w restart at 0 on an improvement, and also
during the ``cooldown`` epochs that follow a reduction; otherwise they grow by one. When

    w ≥ patience:    c ← max(factor·c, min_scale),   w ← 0,   cooldown restarts,

so the scale drops by ``factor`` after ``patience`` epochs without improvement and never goes
below ``min_scale``. For an optimizer whose step is linear in the learning rate η (SGD, Adam,
heavy-ball momentum with η applied last), scaling the update is scaling η.

The pieces: :func:`reduce_on_plateau` is the pure state machine (``init``, ``update(state,
metric)``); :func:`scale_by_plateau` puts its state in the optimizer's state and multiplies
the updates by its scale; :func:`update_plateau` advances that state with a metric, between
steps. The scale thus lives, and is checkpointed, with the optimizer state, while the metric
comes once per epoch from outside the compiled step.

``optax.contrib.reduce_on_plateau`` (Optax 0.2.8) is not reused: its ``update`` needs the
metric as ``value=`` on every call, so the training step itself would have to receive a
validation metric at each step; it only minimizes, and its bookkeeping (averaging the values
over ``accumulation_size`` calls) runs per step rather than per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks._checks import check_choice, check_int, check_nonnegative, check_range
from jaxtricks.tricks.early_stopping import MODES, _as_metric, _improves


class PlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau` (and of :func:`scale_by_plateau`)."""

    scale: jax.Array  # shape=(), float32; c, the multiplier of the updates
    best_metric: jax.Array  # shape=(), float32; +inf ("min") or -inf ("max") before any
    epochs_without_improvement: jax.Array  # shape=(), int32; w, saturating
    cooldown_left: jax.Array  # shape=(), int32; epochs still ignored after a reduction
    count: jax.Array  # shape=(), int32; metrics observed, saturating


class ReduceOnPlateau(NamedTuple):
    """A pure reduce-on-plateau state machine; see :func:`reduce_on_plateau`."""

    init: Callable[[], PlateauState]
    update: Callable[[PlateauState, Any], PlateauState]  # (state, metric) -> state


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    *,
    mode: str = "min",
    min_delta: Any = 0.0,
    cooldown: int = 0,
    min_scale: Any = 0.0,
) -> ReduceOnPlateau:
    """A learning-rate scale that drops by ``factor`` when the metric stops improving.

    Math: per observed metric, w ← 0 on an improvement (``s·m < s·best − δ``) or in cooldown,
    else w ← w + 1; when ``w ≥ patience``, ``c ← max(factor·c, min_scale)``, w ← 0 and the
    next ``cooldown`` observations are ignored. c starts at 1.

    Args:
      factor: the multiplier of a reduction, in (0, 1).
      patience: observations without improvement before a reduction, an integer >= 1.
      mode: ``"min"`` for a loss, ``"max"`` for an accuracy.
      min_delta: δ >= 0, the least change that counts as an improvement.
      cooldown: observations ignored after each reduction, an integer >= 0.
      min_scale: the floor of c, in [0, 1].

    Returns:
      A :class:`ReduceOnPlateau` with ``init() -> PlateauState`` and
      ``update(state, metric) -> PlateauState``, both pure (``jit`` and ``lax.scan`` work).

    Example:
      >>> plateau = reduce_on_plateau(factor=0.5, patience=2)
      >>> state = plateau.init()
      >>> for loss in [1.0, 1.0, 1.0, 0.5, 0.7, 0.6]:
      ...     state = plateau.update(state, loss)
      >>> float(state.scale), int(state.epochs_without_improvement)
      (0.25, 0)
    """
    check_range("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    patience = check_int("patience", patience, 1)
    check_choice("mode", mode, MODES)
    check_nonnegative("min_delta", min_delta)
    cooldown = check_int("cooldown", cooldown, 0)
    check_range("min_scale", min_scale, 0.0, 1.0)

    def init_fn():
        return PlateauState(
            scale=jnp.ones((), jnp.float32),
            best_metric=jnp.asarray(jnp.inf if mode == "min" else -jnp.inf, jnp.float32),
            epochs_without_improvement=jnp.zeros((), jnp.int32),
            cooldown_left=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
        )

    def update_fn(state, metric):
        metric = _as_metric(metric)
        delta = jnp.asarray(min_delta).astype(jnp.float32)
        improved = _improves(metric, state.best_metric, delta, mode)
        in_cooldown = state.cooldown_left > 0
        wait = jnp.where(
            improved | in_cooldown, 0, optax.safe_increment(state.epochs_without_improvement)
        )
        reduce = wait >= patience
        reduced = jnp.maximum(
            state.scale * jnp.asarray(factor).astype(jnp.float32),
            jnp.asarray(min_scale).astype(jnp.float32),
        )
        return PlateauState(
            scale=jnp.where(reduce, reduced, state.scale),
            best_metric=jnp.where(improved, metric, state.best_metric),
            epochs_without_improvement=jnp.where(reduce, 0, wait),
            cooldown_left=jnp.where(reduce, cooldown, jnp.maximum(state.cooldown_left - 1, 0)),
            count=optax.safe_increment(state.count),
        )

    return ReduceOnPlateau(init_fn, update_fn)


def scale_by_plateau(plateau: ReduceOnPlateau) -> optax.GradientTransformation:
    """Multiplies the updates by the plateau scale c held in the optimizer state.

    Math: ``u ← c·u``. The transform never changes c; :func:`update_plateau` does, once per
    epoch, from the validation metric. Put it last in an ``optax.chain`` (after the learning
    rate) so that it scales the step.

    Args:
      plateau: the :class:`ReduceOnPlateau` whose ``init`` gives the initial state.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`PlateauState`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> plateau = reduce_on_plateau(factor=0.5, patience=1)
      >>> tx = optax.chain(optax.sgd(1.0), scale_by_plateau(plateau))
      >>> opt_state = tx.init(jnp.zeros(2))
      >>> opt_state = update_plateau(opt_state, plateau, 1.0)
      >>> opt_state = update_plateau(opt_state, plateau, 2.0)
      >>> updates, opt_state = tx.update(jnp.ones(2), opt_state)
      >>> updates.tolist()
      [-0.5, -0.5]
    """
    if not isinstance(plateau, ReduceOnPlateau):
        raise ValueError(
            f"plateau must be a ReduceOnPlateau from reduce_on_plateau(), "
            f"got {type(plateau).__name__}"
        )

    def init_fn(params):
        del params
        return plateau.init()

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(lambda u: (state.scale.astype(u.dtype) * u), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _is_plateau_state(node: Any) -> bool:
    return isinstance(node, PlateauState)


def plateau_states(opt_state: Any) -> list[PlateauState]:
    """Every :class:`PlateauState` inside an optimizer state, in tree order.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.1), scale_by_plateau(reduce_on_plateau()))
      >>> [float(s.scale) for s in plateau_states(tx.init(jnp.zeros(1)))]
      [1.0]
    """
    nodes = jax.tree.leaves(opt_state, is_leaf=_is_plateau_state)
    return [node for node in nodes if _is_plateau_state(node)]


def update_plateau(opt_state: Any, plateau: ReduceOnPlateau, metric: Any) -> Any:
    """Advances every :class:`PlateauState` in ``opt_state`` by one observed metric.

    Math: each state s becomes ``plateau.update(s, metric)``; the rest of the optimizer
    state is returned as it was.

    Args:
      opt_state: an optimizer state holding :func:`scale_by_plateau`'s state.
      plateau: the state machine to apply (the one given to :func:`scale_by_plateau`).
      metric: a scalar, typically the epoch's validation loss.

    Returns:
      The optimizer state with its plateau states advanced.

    Raises:
      ValueError: when ``opt_state`` holds no :class:`PlateauState`.

    Example:
      See :func:`scale_by_plateau`.
    """
    if not plateau_states(opt_state):
        raise ValueError(
            "opt_state holds no PlateauState: build the optimizer with scale_by_plateau(plateau)"
        )
    return jax.tree.map(
        lambda node: plateau.update(node, metric) if _is_plateau_state(node) else node,
        opt_state,
        is_leaf=_is_plateau_state,
    )
