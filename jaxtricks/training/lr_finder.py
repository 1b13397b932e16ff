"""The learning-rate range test: a short run that raises the learning rate step by step.

Smith's test (2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``) trains a copy of the
model for n steps while the learning rate grows exponentially from η_min to η_max,

    η_i = η_min · (η_max / η_min)^(i / (n − 1)),   i = 0, ..., n − 1,

and records the loss ℓ_i of each step's batch (computed before step i's update, so it shows
the effect of η_0, ..., η_{i−1}). Too small a rate leaves the loss flat, a good one makes it
fall, too large a one makes it blow up. The curve is smoothed by an exponential moving average
corrected for its start at zero (as fastai does),

    a_i = β a_{i−1} + (1 − β) ℓ_i,   a_{−1} = 0,   s_i = a_i / (1 − β^{i+1}),

and the test stops after the first step where

    s_i > κ · min_{j<i} s_j     (diverged; κ = ``diverge_factor``)

or where ℓ_i or s_i is not finite, or the train step's non-finite guard skipped the step
(non-finite). The moving average lags the raw loss by about β / (1 − β) steps (49
for β = 0.98), a fixed distance in log η: the smoothed minimum sits to the right of the raw
one.

Two suggestions are read off the smoothed curve (:func:`suggest_learning_rates`):

- **steepest**: the η_i where s falls fastest, argmin_i ds/d(log η) over the points after the
  curve's first 10 % and up to its minimum (the earliest points average few samples, so their
  slope is mostly noise; past the minimum the curve only rises);
- **minimum / 10**: (the η at the minimum of s) / 10, one decade before the loss turns up.

The test runs on its own copy of the state (built from ``seed`` as
:func:`~jaxtricks.training.fit.fit` builds it, or given), on the batches ``fit`` would visit in
its first epochs, with the step of :func:`~jaxtricks.training.steps.make_train_step`; the learning
rate lives in the optimizer state (``optax.inject_hyperparams``) and is set before every step
(:func:`~jaxtricks.training.hyperparams.set_hyperparams`), so the sweep compiles one step.

References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
    (arXiv:1506.01186, 2015), section 3.3.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtricks.training.caching import jit_with, shared
from jaxtricks.training.epochs import epoch_indices
from jaxtricks.training.hyperparams import set_hyperparams
from jaxtricks.training.model import functional_model
from jaxtricks.training.state import TrainState, as_optimizer, create_train_state
from jaxtricks.training.steps import (
    LossFn,
    check_examples,
    check_labels,
    make_objective,
    make_train_step,
)

__all__ = ["LRFinderResult", "LRSuggestions", "find_learning_rate", "suggest_learning_rates"]

STOP_REASONS = ("completed", "diverged", "nonfinite")

# Steps run between two looks at the stop flag: each look waits for the device, and a test that
# stopped wastes at most this many steps.
_CHECK_EVERY = 10


class LRSuggestions(NamedTuple):
    """Learning rates read off a range test's smoothed curve; see :func:`suggest_learning_rates`."""

    steepest: float | None  # η where the smoothed loss falls fastest; None: it never falls
    min_over_10: float | None  # (η at the smoothed minimum) / 10; None: no finite point
    steepest_index: int | None  # the point of ``steepest``
    minimum_index: int | None  # the point of the smoothed minimum


def suggest_learning_rates(learning_rates: Any, smoothed_losses: Any, *,
                           skip_start: float = 0.1) -> LRSuggestions:
    """The steepest-descent and minimum/10 learning rates of a range-test curve.

    Over the finite start of the curve (points 0, ..., m − 1, up to the first non-finite one),
    with k* = argmin_i s_i (the first, if tied):

        min_over_10 = η_{k*} / 10,
        steepest    = η_j,  j = argmin_{⌊skip_start · m⌋ ≤ i ≤ k*} ds/d(log η) at i,

    the slope taken by ``np.gradient`` (central differences inside the curve, one-sided at its
    ends). ``steepest`` is None when that window is empty or the slope in it is never negative.

    Args:
        learning_rates: η_i, positive, increasing, one per point.
        smoothed_losses: s_i, one per point.
        skip_start: the fraction of the m finite points left out at the start, in [0, 1).

    Returns:
        :class:`LRSuggestions`.

    Examples:
        >>> import numpy as np
        >>> lrs = np.logspace(-6, 0, 7)
        >>> s = suggest_learning_rates(lrs, [2.3, 2.3, 2.1, 1.0, 0.5, 0.4, 3.0])
        >>> s.steepest, s.min_over_10, s.steepest_index, s.minimum_index
        (0.001, 0.01, 3, 5)
    """
    rates = np.asarray(learning_rates, np.float64)
    values = np.asarray(smoothed_losses, np.float64)
    if rates.ndim != 1 or values.shape != rates.shape:
        raise ValueError(
            "learning_rates and smoothed_losses must be 1-D of one length, got shapes "
            f"{rates.shape} and {values.shape}"
        )
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0) and np.all(np.diff(rates) > 0)):
        raise ValueError("learning_rates must be finite, positive and increasing")
    if not (isinstance(skip_start, int | float) and 0 <= skip_start < 1):
        raise ValueError(f"skip_start must be a fraction in [0, 1), got {skip_start!r}")
    nonfinite = np.flatnonzero(~np.isfinite(values))
    m = int(nonfinite[0]) if nonfinite.size else values.size
    if m == 0:
        return LRSuggestions(None, None, None, None)
    minimum = int(np.argmin(values[:m]))
    if m < 2:
        return LRSuggestions(None, float(rates[minimum] / 10), None, minimum)
    slopes = np.gradient(values[:m], np.log(rates[:m]))
    start = math.floor(skip_start * m)
    window = slopes[start:minimum + 1]
    if window.size == 0 or np.min(window) >= 0:
        return LRSuggestions(None, float(rates[minimum] / 10), None, minimum)
    steepest = start + int(np.argmin(window))
    return LRSuggestions(float(rates[steepest]), float(rates[minimum] / 10), steepest, minimum)


class LRFinderResult(NamedTuple):
    """What :func:`find_learning_rate` measured: the curve, why it ended, the suggestions."""

    learning_rates: np.ndarray  # (m,) float64: η_i of each step run
    losses: np.ndarray  # (m,) float32: ℓ_i, each step's batch loss
    smoothed_losses: np.ndarray  # (m,) float32: s_i, bias-corrected moving average of ℓ
    suggestion_steepest: float | None  # η of the steepest fall of s (None: s never falls)
    suggestion_min_over_10: float | None  # (η at the minimum of s) / 10
    steepest_index: int | None  # the step of suggestion_steepest
    minimum_index: int | None  # the step of the minimum of s
    stopped_early: bool  # a stop condition ended the test (stop_reason is not "completed")
    stop_reason: str  # "completed", "diverged" or "nonfinite"
    settings: dict[str, Any]  # the arguments that define the test (num_steps, min_lr, ...)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready Python values (non-finite losses stay floats)."""
        return {
            **{name: value for name, value in self._asdict().items()
               if not isinstance(value, np.ndarray)},
            "learning_rates": self.learning_rates.tolist(),
            "losses": self.losses.astype(np.float64).tolist(),
            "smoothed_losses": self.smoothed_losses.astype(np.float64).tolist(),
        }


class _Sweep(NamedTuple):
    """The carry of the test, on the device."""

    state: TrainState
    step: jax.Array  # shape=(), int32: points recorded
    average: jax.Array  # shape=(), float32: a_i
    bias: jax.Array  # shape=(), float32: β^{i+1}
    best: jax.Array  # shape=(), float32: min_j s_j so far (+inf before the first)
    losses: jax.Array  # (n,) float32: ℓ_i (NaN where not run)
    smoothed: jax.Array  # (n,) float32: s_i (NaN where not run)
    stop: jax.Array  # shape=(), int32: index into STOP_REASONS (0 while running)


def _sweep_step(train_step, carry: _Sweep, data, indices, learning_rates, smoothing,
                diverge_factor) -> _Sweep:
    i = carry.step
    state = carry.state._replace(opt_state=set_hyperparams(
        carry.state.opt_state, {"learning_rate": learning_rates[i]}))
    batch = jax.tree.map(lambda leaf: jnp.take(leaf, indices[i], axis=0, mode="clip"), data)
    state, metrics = train_step(state, batch)
    loss = metrics["loss"]
    average = smoothing * carry.average + (1 - smoothing) * loss
    bias = carry.bias * smoothing
    value = average / (1 - bias)
    nonfinite = ~jnp.isfinite(value) | (metrics["skipped"] > 0)
    diverged = jnp.isfinite(diverge_factor) & (value > diverge_factor * carry.best)
    stop = jnp.where(nonfinite, 2, jnp.where(diverged, 1, 0)).astype(jnp.int32)
    # Once stopped, the steps until the host looks again record nothing; the state they train
    # is never read.
    running = carry.stop == 0
    # jnp.where(running, new, old); mypy cannot pick jnp.where's overload through partial.
    keep = cast(Callable[[jax.Array, jax.Array], jax.Array],
                functools.partial(jnp.where, running))
    return _Sweep(
        state=state,
        step=keep(i + 1, i),
        average=keep(average, carry.average),
        bias=keep(bias, carry.bias),
        best=keep(jnp.minimum(carry.best, value), carry.best),
        losses=keep(carry.losses.at[i].set(loss), carry.losses),
        smoothed=keep(carry.smoothed.at[i].set(value), carry.smoothed),
        stop=keep(stop, carry.stop),
    )


def _check_number(name: str, value: Any, low: float, *, low_open: bool = False,
                  high: float | None = None, high_open: bool = False) -> float:
    number = isinstance(value, int | float | np.integer | np.floating)
    ok = number and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, "
        bounds += "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low or (
            high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


def _injected_optimizer(optimizer: Any, first_rate: float) -> optax.GradientTransformation:
    """``optimizer`` if it is a transformation, else the factory ``optimizer(learning_rate)``
    injected (one transformation per factory, so repeated tests compile once)."""
    if isinstance(optimizer, optax.GradientTransformation) or hasattr(
            optimizer, "gradient_transformation"):
        return as_optimizer(optimizer)
    if not callable(optimizer):
        raise ValueError(
            "optimizer must be an optax.GradientTransformation whose learning_rate is injected "
            "(optax.inject_hyperparams), or a function learning_rate -> transformation, got "
            f"{type(optimizer).__name__}"
        )
    made = optimizer(first_rate)
    if not isinstance(made, optax.GradientTransformation):
        raise ValueError(
            "optimizer: the function must return an optax.GradientTransformation, got "
            f"{type(made).__name__}"
        )
    return shared(_inject, optimizer, first_rate)


def _inject(factory: Callable[[Any], optax.GradientTransformation], first_rate: float
            ) -> optax.GradientTransformation:
    # The factory may name its argument otherwise (lambda lr: ...); inject_hyperparams passes
    # the hyperparameter by its name.
    return optax.inject_hyperparams(lambda learning_rate: factory(learning_rate))(
        learning_rate=first_rate)


def find_learning_rate(
        model: Any,
        optimizer: Any,
        x: Any,
        y: Any,
        *,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_steps: int = 200,
        batch_size: int = 128,
        smoothing: float = 0.98,
        diverge_factor: float | None = 4.0,
        skip_start: float = 0.1,
        seed: int = 0,
        loss_fn: LossFn | None = None,
        initial_state: TrainState | None = None,
) -> LRFinderResult:
    """Runs the learning-rate range test (see the module docstring) and suggests a rate.

    Args:
        model: a Flax Linen or NNX module, as for :func:`~jaxtricks.training.fit.fit`.
        optimizer: a function ``learning_rate -> optax.GradientTransformation`` (e.g.
            ``jt.adam``; it is injected with ``optax.inject_hyperparams``), or a transformation
            whose ``learning_rate`` is already injected as a number (not a schedule).
        x: training inputs, a pytree of arrays with a leading axis of N examples.
        y: training targets, likewise.
        min_lr: η_0 > 0.
        max_lr: η_{n−1} > ``min_lr``.
        num_steps: n >= 2, the most steps to run; batches run through the data in epochs as
            ``fit``'s do (epochs 1, 2, ... of the order ``seed`` gives).
        batch_size: examples per step, in [1, N].
        smoothing: β in [0, 1) of the moving average (0: no smoothing).
        diverge_factor: κ > 1; the test stops once the smoothed loss exceeds κ times its
            lowest value so far. None: only a non-finite loss stops it (for a loss that can be
            negative, where the ratio means nothing).
        skip_start: the fraction of the curve left out of the steepest-slope search, in
            [0, 1) (see :func:`suggest_learning_rates`).
        seed: in [0, 2**63); the initial state and the batch order, as ``fit(seed=seed)``.
        loss_fn: as for :func:`~jaxtricks.training.steps.make_train_step`; None: softmax
            cross-entropy of integer labels.
        initial_state: start from this state's parameters, model state, step and dropout key
            instead of a fresh one; its optimizer state is replaced by the injected optimizer's
            fresh one. It is neither changed nor donated.

    Returns:
        An :class:`LRFinderResult`.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> import jaxtricks as jt
        >>> x = jax.random.normal(jax.random.key(0), (256, 4))
        >>> y = x @ jnp.array([1.0, -2.0, 0.5, 3.0])
        >>> result = find_learning_rate(
        ...     nn.Dense(1), jt.sgd, x, y, min_lr=1e-4, max_lr=1e2, num_steps=60, batch_size=32,
        ...     loss_fn=lambda outputs, y: (outputs[:, 0] - y) ** 2)
        >>> result.stop_reason, result.stopped_early
        ('diverged', True)
        >>> bool(1e-4 < result.suggestion_steepest < 10 * result.suggestion_min_over_10)
        True

    References:
        L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    fm = functional_model(model)
    min_lr = _check_number("min_lr", min_lr, 0.0, low_open=True)
    max_lr = _check_number("max_lr", max_lr, min_lr, low_open=True)
    num_steps = _check_int("num_steps", num_steps, 2)
    smoothing = _check_number("smoothing", smoothing, 0.0, high=1.0, high_open=True)
    if diverge_factor is not None:
        diverge_factor = _check_number("diverge_factor", diverge_factor, 1.0, low_open=True)
    _check_number("skip_start", skip_start, 0.0, high=1.0, high_open=True)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    num_examples = check_examples(("x", x), ("y", y))
    batch_size = _check_int("batch_size", batch_size, 1, num_examples)
    if initial_state is not None and not isinstance(initial_state, TrainState):
        raise ValueError(f"initial_state must be a TrainState, got {type(initial_state).__name__}")
    objective = make_objective(loss_fn)
    tx = _injected_optimizer(optimizer, min_lr)

    init_key, data_key = jax.random.split(jax.random.key(seed))
    data = jax.device_put((x, y))
    sample = jax.tree.map(lambda leaf: leaf[:1], data[0])
    if initial_state is None:
        state = create_train_state(fm, tx, init_key, sample)
    else:
        state = initial_state._replace(opt_state=jax.jit(tx.init)(initial_state.params))
    try:
        opt_state = set_hyperparams(state.opt_state, {"learning_rate": min_lr},
                                    argument="optimizer.hyperparams")
    except ValueError as err:
        raise ValueError(f"{err}; or pass a function learning_rate -> optimizer") from None
    state = state._replace(opt_state=opt_state)
    if objective.integer_labels:
        outputs = jax.eval_shape(
            lambda s, x: fm.apply(s.params, s.model_state, x, train=False, key=None)[0],
            state, sample)
        check_labels(y, outputs.shape[-1], "y")
    train_step = make_train_step(fm, tx, loss_fn=loss_fn, metrics={}, donate=False)

    steps_per_epoch = num_examples // batch_size
    epochs = math.ceil(num_steps / steps_per_epoch)
    indices = jnp.concatenate([epoch_indices(data_key, epoch, num_examples, batch_size)
                               for epoch in range(1, epochs + 1)])[:num_steps]
    rates = min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))
    nan = jnp.full((num_steps,), jnp.nan, jnp.float32)
    carry = _Sweep(state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                   jnp.ones((), jnp.float32), jnp.full((), jnp.inf, jnp.float32), nan, nan,
                   jnp.zeros((), jnp.int32))
    arguments = (data, indices, jnp.asarray(rates, jnp.float32), jnp.float32(smoothing),
                 jnp.float32(jnp.inf if diverge_factor is None else diverge_factor))
    sweep_step = jit_with(_sweep_step, train_step)
    done = 0
    while done < num_steps:
        for _ in range(min(_CHECK_EVERY, num_steps - done)):
            carry = sweep_step(carry, *arguments)
        done += _CHECK_EVERY
        if int(carry.stop):
            break
    count, stop, losses, smoothed = jax.device_get(
        (carry.step, carry.stop, carry.losses, carry.smoothed))
    count = int(count)
    rates, losses, smoothed = rates[:count], losses[:count], smoothed[:count]
    suggestions = suggest_learning_rates(rates, smoothed, skip_start=skip_start)
    return LRFinderResult(
        learning_rates=rates,
        losses=losses,
        smoothed_losses=smoothed,
        suggestion_steepest=suggestions.steepest,
        suggestion_min_over_10=suggestions.min_over_10,
        steepest_index=suggestions.steepest_index,
        minimum_index=suggestions.minimum_index,
        stopped_early=bool(stop),
        stop_reason=STOP_REASONS[int(stop)],
        settings={
            "min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps,
            "batch_size": batch_size, "smoothing": smoothing, "diverge_factor": diverge_factor,
            "skip_start": skip_start, "seed": seed, "train_examples": num_examples,
        },
    )
