"""Reducing the learning rate when a metric stops improving (lesson L6).

Two forms. :func:`reduce_on_plateau` is Optax's (``optax.contrib.reduce_on_plateau``: the same
signature, defaults and ``optax.contrib.ReduceLROnPlateauState``): a transform that receives
the monitored value as ``update(..., value=...)`` on every call, averages
``accumulation_size`` of them, and reduces its scale when the average has not improved on the
best by a relative ``rtol`` (and absolute ``atol``) for ``patience`` averages. It minimizes.

The epoch-level form, for a metric computed outside the compiled step once per epoch (how
``jaxtricks.training.fit`` uses it): a scale c multiplies the optimizer's updates. Once per
epoch the metric m_e is observed; with s = +1 to minimize and s = −1 to maximize, the epoch
improves when ``s·m_e < s·best − δ`` (then best ← m_e). The epochs without improvement w
restart at 0 on an improvement, and also during the ``cooldown`` epochs that follow a
reduction; otherwise they grow by one. When

    w ≥ patience:    c ← max(factor·c, min_scale),   w ← 0,   cooldown restarts,

so the scale drops by ``factor`` after ``patience`` epochs without improvement and never goes
below ``min_scale``. For an optimizer whose step is linear in the learning rate η (SGD, Adam,
heavy-ball momentum with η applied last), scaling the update is scaling η.

Its pieces: :func:`epoch_plateau` is the pure state machine (``init``, ``update(state,
metric)``); :func:`scale_by_plateau` puts its state in the optimizer's state and multiplies
the updates by its scale; :func:`update_plateau` advances that state with a metric, between
steps. The scale thus lives, and is checkpointed, with the optimizer state, while the metric
comes once per epoch from outside the compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.checks import (
    check_choice,
    check_count,
    check_int,
    check_nonnegative,
    check_range,
)
from jaxtricks.tricks.early_stopping import MODES, as_metric, improves
from jaxtricks.tricks.tree import like


class PlateauState(NamedTuple):
    """State of :func:`epoch_plateau` (and of :func:`scale_by_plateau`)."""

    scale: jax.Array  # shape=(), float32; c, the multiplier of the updates
    best_metric: jax.Array  # shape=(), float32; +inf ("min") or -inf ("max") before any
    epochs_without_improvement: jax.Array  # shape=(), int32; w, saturating
    cooldown_left: jax.Array  # shape=(), int32; epochs still ignored after a reduction
    # Optax's field name; mypy objects that it shadows the method tuple.count.
    count: jax.Array  # type: ignore[assignment]  # shape=(), int32; metrics observed, saturating


class EpochPlateau(NamedTuple):
    """A pure reduce-on-plateau state machine for per-epoch metrics; see :func:`epoch_plateau`."""

    init: Callable[[], PlateauState]
    update: Callable[[PlateauState, Any], PlateauState]  # (state, metric) -> state


def epoch_plateau(
    factor: float = 0.1,
    patience: int = 10,
    *,
    mode: str = "min",
    min_delta: Any = 0.0,
    cooldown: int = 0,
    min_scale: Any = 0.0,
) -> EpochPlateau:
    """A learning-rate scale that drops by ``factor`` when a per-epoch metric stops improving.

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
      An :class:`EpochPlateau` with ``init() -> PlateauState`` and
      ``update(state, metric) -> PlateauState``, both pure (``jit`` and ``lax.scan`` work).

    Examples:
      >>> plateau = epoch_plateau(factor=0.5, patience=2)
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
        metric = as_metric(metric)
        delta = jnp.asarray(min_delta).astype(jnp.float32)
        improved = improves(metric, state.best_metric, delta, mode)
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

    return EpochPlateau(init_fn, update_fn)


def scale_by_plateau(plateau: EpochPlateau) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by the plateau scale c held in the optimizer state.

    Math: ``u ← c·u``. The transform never changes c; :func:`update_plateau` does, once per
    epoch, from the validation metric. Put it last in an ``optax.chain`` (after the learning
    rate) so that it scales the step.

    Args:
      plateau: the :class:`EpochPlateau` whose ``init`` gives the initial state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`PlateauState`.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> plateau = epoch_plateau(factor=0.5, patience=1)
      >>> tx = optax.chain(optax.sgd(1.0), scale_by_plateau(plateau))
      >>> opt_state = tx.init(jnp.zeros(2))
      >>> opt_state = update_plateau(opt_state, plateau, 1.0)
      >>> opt_state = update_plateau(opt_state, plateau, 2.0)
      >>> updates, opt_state = tx.update(jnp.ones(2), opt_state)
      >>> updates.tolist()
      [-0.5, -0.5]
    """
    if not isinstance(plateau, EpochPlateau):
        raise ValueError(
            f"plateau must be an EpochPlateau from epoch_plateau(), got {type(plateau).__name__}"
        )

    def init_fn(params):
        del params
        return plateau.init()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = jax.tree.map(lambda u: (state.scale.astype(u.dtype) * u), updates)
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _is_plateau_state(node: Any) -> bool:
    return isinstance(node, PlateauState)


def plateau_states(opt_state: Any) -> list[PlateauState]:
    """Every :class:`PlateauState` inside an optimizer state, in tree order.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.1), scale_by_plateau(epoch_plateau()))
      >>> [float(s.scale) for s in plateau_states(tx.init(jnp.zeros(1)))]
      [1.0]
    """
    nodes = jax.tree.leaves(opt_state, is_leaf=_is_plateau_state)
    return [node for node in nodes if _is_plateau_state(node)]


def update_plateau(opt_state: Any, plateau: EpochPlateau, metric: Any) -> Any:
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

    Examples:
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


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Scales the updates down when a monitored value stops improving (Optax's contrib one).

    Math: each call adds ``value`` to a running mean ``a`` of ``accumulation_size`` values.
    When the mean is complete it is judged: it improves when ``a < (1 − rtol)·best − atol``
    (then best ← a, p ← 0), else p ← p + 1. Outside cooldown, when ``p = patience`` the
    scale becomes ``max(factor·c, min_scale)``, p ← 0 and ``cooldown`` judgements follow in
    which p stays 0 and c does not move. The updates are multiplied by c, which starts at 1.

    Args:
      factor: the multiplier of a reduction, in (0, 1).
      patience: judgements without improvement before a reduction, an integer ≥ 1.
      rtol: relative tolerance of an improvement, in [0, 1].
      atol: absolute tolerance of an improvement, ≥ 0; ``rtol`` and ``atol`` are not both 0.
      cooldown: judgements after a reduction that are not counted, an integer ≥ 0.
      accumulation_size: values averaged per judgement, an integer ≥ 1 (1 for a validation
        loss; more for a noisy per-batch training loss).
      min_scale: the floor of c, in [0, 1].

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
      params=None, *, value)`` needs the monitored value, and whose state is an
      ``optax.contrib.ReduceLROnPlateauState(scale, best_value, plateau_count,
      cooldown_count, count, avg_value)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = reduce_on_plateau(factor=0.5, patience=2)
      >>> state = tx.init(jnp.zeros(1))
      >>> for loss in [1.0, 1.0, 1.0]:
      ...     u, state = tx.update(jnp.ones(1), state, value=loss)
      >>> u.tolist(), float(state.scale)
      ([0.5], 0.5)
    """
    check_range("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    check_count("patience", patience, 1)
    check_range("rtol", rtol, 0.0, 1.0)
    check_nonnegative("atol", atol)
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol must not both be 0: nothing would count as a plateau")
    check_count("cooldown", cooldown, 0)
    check_count("accumulation_size", accumulation_size, 1)
    check_range("min_scale", min_scale, 0.0, 1.0)

    def init_fn(params):
        # Optax's choice of dtypes; it orders them with jnp.promote_types, which strict
        # promotion refuses for mixed trees (float32 with bfloat16), though nothing is computed.
        with jax.numpy_dtype_promotion("standard"):
            low = optax.tree.dtype(params, "lowest")
            high = optax.tree.dtype(params, "highest")
        return optax.contrib.ReduceLROnPlateauState(
            scale=jnp.ones((), low),
            best_value=jnp.asarray(jnp.inf, high),
            plateau_count=jnp.zeros((), jnp.int32),
            cooldown_count=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            avg_value=jnp.zeros((), high),
        )

    def judge(state, average):
        """The state after one complete average has been judged."""
        best = state.best_value
        improved = average < like(1 - rtol, best) * best - like(atol, best)
        plateau = jnp.where(improved, 0, optax.safe_increment(state.plateau_count))
        cooling = state.cooldown_count > 0
        reduce = ~cooling & (plateau == patience)
        scale = state.scale
        reduced = jnp.maximum(scale * like(factor, scale), like(min_scale, scale))
        return optax.contrib.ReduceLROnPlateauState(
            scale=jnp.where(reduce, reduced, state.scale),
            best_value=jnp.where(improved, average.astype(best.dtype), best),
            plateau_count=jnp.where(cooling | reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(
                cooling, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0)
            ).astype(jnp.int32),
            count=jnp.zeros((), jnp.int32),
            avg_value=jnp.zeros_like(state.avg_value),
        )

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        count = optax.safe_increment(state.count)
        average = (
            state.count.astype(state.avg_value.dtype) * state.avg_value
            + jnp.asarray(value).astype(state.avg_value.dtype)
        ) / count.astype(state.avg_value.dtype)
        accumulating = state._replace(count=count, avg_value=average)
        judged = judge(state, average)
        new_state = jax.tree.map(
            lambda j, a: jnp.where(count == accumulation_size, j, a), judged, accumulating
        )
        updates = jax.tree.map(lambda g: new_state.scale.astype(g.dtype) * g, updates)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
