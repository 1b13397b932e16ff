"""Epochs over a dataset held on the device, run by a Python loop or by a compiled loop.

The dataset is ``data = (x, y)``, pytrees of arrays sharing a leading axis of N examples. With
batch size B and S = ⌊N / B⌋ steps, epoch e visits the batches

    I_e = π_e[: S·B].reshape(S, B),   π_e = permutation(fold_in(key, e), N),

dropping the N - S·B examples left over, so every step has one shape. The arrays stay on the
device; each step gathers its rows x[I_e[i]], y[I_e[i]] inside compiled code, so no example is
copied from the host after the dataset is placed once.

Two runners compute the same steps in the same order, with bit-identical results:

- ``"loop"``: one compiled call per step from a Python loop;
- ``"scan"``: one compiled call per chunk of steps, a ``lax.fori_loop`` over the chunk.

Both keep running totals of the step metrics on the device (the loss, each metric and the
gradient norm summed over the applied steps; skipped steps and loss-scale overflows counted),
read by the host only when it asks. Which runner is faster depends on the backend and the
model (the compiled loop saves a dispatch per step, but XLA may compile a step inside a loop
less well than on its own), so :func:`choose_runner` measures both rather than assume; which
one ``fit`` uses by default is the backend's choice (:func:`jaxtricks.backend.speed_paths`).
"""

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxtricks.backend import speed_paths
from jaxtricks.training.caching import jit_with
from jaxtricks.training.state import TrainState

RUNNERS = ("loop", "scan")

# Step metrics that count steps not applied: summed over every step as int32, never averaged.
# A step is applied when each of them is 0.
COUNTED_METRICS = ("skipped", "overflow")

__all__ = [
    "COUNTED_METRICS",
    "RUNNERS",
    "EpochRunner",
    "choose_runner",
    "compile_epoch_runner",
    "epoch_indices",
    "run_epoch",
]

# Steps timed per runner and round when choosing; small, because on some backends one runner is
# an order of magnitude slower and the probe must not cost a noticeable part of an epoch.
_PROBE_STEPS = 3
_PROBE_ROUNDS = 2

# (backend, device kind, device count, state and batch signature) -> (runner, per-step seconds).
_CHOICES: dict[tuple, tuple[str, dict[str, float]]] = {}

Totals = dict[str, jax.Array]


def epoch_indices(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """The example indices of each step of one epoch, computed on the device.

    I_e = permutation(fold_in(key, e), N)[: S·B].reshape(S, B) with S = ⌊N / B⌋.

    Args:
        key: the PRNG key of the data order.
        epoch: the epoch number e.
        num_examples: N, the size of the training set.
        batch_size: B, at most N.

    Returns:
        An int32 array of shape ``(S, B)``; row i holds the examples of step i.

    Examples:
        >>> import jax
        >>> indices = epoch_indices(jax.random.key(0), 1, num_examples=10, batch_size=3)
        >>> indices.shape, len(set(indices.ravel().tolist()))
        ((3, 3), 9)
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}], got {batch_size}")
    return _epoch_indices(key, epoch, num_examples, batch_size)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _epoch_indices(key, epoch, num_examples, batch_size):
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    steps = num_examples // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def _zero_totals(metrics_like: dict[str, Any]) -> Totals:
    """Running totals of the step metrics: a float32 sum of each over the applied steps, and
    int32 counts of the steps not applied (:data:`COUNTED_METRICS`) and of all steps."""
    totals = {
        name: jnp.zeros(like.shape, jnp.int32 if name in COUNTED_METRICS else jnp.float32)
        for name, like in metrics_like.items()
    }
    totals["steps"] = jnp.zeros((), jnp.int32)
    return totals


def _take(data: Any, rows: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=0, mode="clip"), data)


def _one_step(train_step, state, totals, data, indices, i):
    rows = lax.dynamic_index_in_dim(indices, i, keepdims=False)
    state, metrics = train_step(state, _take(data, rows))
    # A skipped step's values describe a step that was not applied: counted, not averaged.
    applied = functools.reduce(
        jnp.logical_and, [metrics[name] == 0 for name in COUNTED_METRICS if name in metrics])
    totals = {
        name: total + (metrics[name] if name in COUNTED_METRICS
                       else jnp.where(applied, metrics[name], 0))
        for name, total in totals.items()
        if name != "steps"
    } | {"steps": totals["steps"] + 1}
    return state, totals


def _loop_body(train_step, state, totals, data, indices):
    return _one_step(train_step, state, totals, data, indices, totals["steps"])


# Jitted per train step through jit_with, so compiling again for the same step function and
# shapes (a second runner choice, a second fit) is a cache hit, and a step's executables are freed
# with it.
def _scan_steps(train_step, state, totals, data, indices, start, stop):
    def body(i, carry):
        return _one_step(train_step, *carry, data, indices, i)

    return lax.fori_loop(start, stop, body, (state, totals))


class EpochRunner(NamedTuple):
    """A runner compiled for one state and dataset signature; see :func:`compile_epoch_runner`."""

    name: str  # "loop" or "scan"
    compiled: Callable[..., tuple[TrainState, Totals]]  # the ahead-of-time compiled executable
    compile_time_s: float  # seconds spent lowering and compiling it
    totals_like: dict[str, Any]  # shapes, dtypes and shardings of the running totals

    def zero_totals(self) -> Totals:
        """Running totals at the start of an epoch: every sum and count zero, placed where the
        compiled runner takes them (on a mesh: replicated over it)."""
        return jax.tree.map(lambda like: jnp.zeros(like.shape, like.dtype, device=like.sharding),
                            self.totals_like)

    def advance(self, state, totals, data, indices, start, stop):
        """Runs steps ``start, ..., stop - 1`` of the epoch; see :func:`run_epoch`.

        ``totals`` must be the running totals after ``start`` steps, as :func:`run_epoch` keeps
        them: the loop runner reads the step index from ``totals["steps"]`` on the device, so a
        step sends nothing from the host.
        """
        if self.name == "scan":
            return self.compiled(state, totals, data, indices, start, stop)
        for _ in range(start, stop):
            state, totals = self.compiled(state, totals, data, indices)
        return state, totals


def compile_epoch_runner(
        train_step: Callable,
        runner: str,
        state: TrainState,
        data: Any,
        indices: jax.Array,
        *,
        donate: bool | None = None,
) -> EpochRunner:
    """Compiles one epoch runner ahead of time and measures how long that took.

    ``"loop"`` compiles a single step (gather rows I[i] for the i = totals["steps"] steps done,
    train, add to the totals); ``"scan"`` compiles ``lax.fori_loop(start, stop, step)`` with
    ``start`` and ``stop`` traced, so one executable serves chunks of every length.

    Args:
        train_step: a function from :func:`~jaxtricks.training.steps.make_train_step` (or any
            ``(state, batch) -> (state, metrics)`` whose metrics hold ``skipped``).
        runner: ``"loop"`` or ``"scan"``.
        state: a state of the shapes to train (only its shapes are used; it is not consumed).
        data: the training set ``(x, y)``, on the device.
        indices: an epoch's indices from :func:`epoch_indices`.
        donate: whether the loop runner donates the state it is given (the scan runner always
            does); None takes the backend's choice (:func:`jaxtricks.backend.speed_paths`).

    Returns:
        An :class:`EpochRunner`.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> from jaxtricks.training.steps import make_train_step
        >>> data = (jnp.ones((8, 3)), jnp.zeros((8,), jnp.int32))
        >>> state = create_train_state(nn.Dense(2), optax.sgd(0.1), jax.random.key(0), data[0])
        >>> indices = epoch_indices(jax.random.key(1), 0, num_examples=8, batch_size=4)
        >>> train_step = make_train_step(nn.Dense(2), optax.sgd(0.1))
        >>> runner = compile_epoch_runner(train_step, "scan", state, data, indices)
        >>> state, totals = run_epoch(runner, state, data, indices)
        >>> int(state.step), int(totals["steps"]), sorted(totals)
        (2, 2, ['accuracy', 'grad_norm', 'loss', 'skipped', 'steps'])
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    if donate is None:
        donate = speed_paths().donate_state
    batch = _take(data, indices[0])
    metrics_like = jax.eval_shape(train_step, state, batch)[1]
    if not isinstance(metrics_like, dict) or "skipped" not in metrics_like:
        raise ValueError("train_step must return (state, metrics) with metrics['skipped']")
    totals = _zero_totals(metrics_like)
    begin = time.perf_counter()
    if runner == "loop":
        loop_step = jit_with(_loop_body, train_step, donate_argnums=(0,) if donate else ())
        lowered = loop_step.lower(state, totals, data, indices)
    else:
        scan_steps = jit_with(_scan_steps, train_step, donate_argnums=(0,))
        lowered = scan_steps.lower(state, totals, data, indices, 0, 1)
    compiled = lowered.compile()
    totals_like = jax.tree.map(
        lambda total, sharding: jax.ShapeDtypeStruct(total.shape, total.dtype, sharding=sharding),
        totals, compiled.input_shardings[0][1],
    )
    return EpochRunner(runner, compiled, time.perf_counter() - begin, totals_like)


def run_epoch(
        runner: EpochRunner,
        state: TrainState,
        data: Any,
        indices: jax.Array,
        *,
        chunk_steps: int | None = None,
        on_chunk: Callable[[int, Totals], None] | None = None,
        start: int = 0,
        stop: int | None = None,
        totals: Totals | None = None,
) -> tuple[TrainState, Totals]:
    """Trains one epoch: step i on the batch ``indices[i]``, for every row of ``indices``.

    With ``start`` and ``stop`` it trains only steps ``start, ..., stop - 1``, so an epoch can
    be run in parts (to checkpoint in the middle of it, or to resume from such a checkpoint)
    with the same result, bit for bit, as in one call.

    Args:
        runner: from :func:`compile_epoch_runner` or :func:`choose_runner`.
        state: the state to train; it may be donated (see :func:`compile_epoch_runner`), so
            use the returned one.
        data: the training set ``(x, y)``, on the device.
        indices: the epoch's indices, shape ``(S, B)``.
        chunk_steps: steps per chunk; the ``"scan"`` runner makes one call per chunk, both
            runners call ``on_chunk`` after each. None means the whole part in one chunk.
        on_chunk: called as ``on_chunk(steps_done, totals)`` with the running totals still on
            the device, so reading them is the caller's choice of when to wait.
        start: the first step to run, in [0, S].
        stop: the step to stop before, in [start, S]; None means S, the end of the epoch.
        totals: the running totals after ``start`` steps, as an earlier part returned them;
            None means zero totals, which is right only for ``start=0``.

    Returns:
        ``(state, totals)``: the sums of each step metric over the applied steps, the counts of
        ``skipped`` steps (and ``overflow`` steps, with a loss scale) and of all ``steps``,
        still on the device.

    Examples:
        See :func:`compile_epoch_runner`.
    """
    num_steps = indices.shape[0]
    stop = num_steps if stop is None else stop
    chunk_steps = num_steps if chunk_steps is None else chunk_steps
    if isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int) or chunk_steps < 1:
        raise ValueError(f"chunk_steps must be an int >= 1, got {chunk_steps!r}")
    if not 0 <= start <= stop <= num_steps:
        raise ValueError(
            f"start and stop must satisfy 0 <= start <= stop <= {num_steps}, got {start}, {stop}"
        )
    if totals is None:
        if start:
            raise ValueError(f"totals: the running totals after start={start} steps are needed")
        totals = runner.zero_totals()
    for begin in range(start, stop, chunk_steps):
        end = min(begin + chunk_steps, stop)
        state, totals = runner.advance(state, totals, data, indices, begin, end)
        if on_chunk is not None:
            on_chunk(end, totals)
    return state, totals


def _signature(state: TrainState, data: Any, indices: jax.Array) -> tuple:
    """What a step's speed depends on: hardware, the state's and the data's shapes and
    shardings, the batch size."""
    device = jax.devices()[0]
    return (
        jax.default_backend(),
        device.device_kind,
        jax.device_count(),
        jax.tree.structure(state),
        tuple((leaf.shape, leaf.dtype, leaf.sharding) for leaf in jax.tree.leaves(state)),
        jax.tree.structure(data),
        tuple((leaf.shape[1:], leaf.dtype, leaf.sharding) for leaf in jax.tree.leaves(data)),
        indices.shape[1],
    )


def choose_runner(
        train_step: Callable,
        state: TrainState,
        data: Any,
        indices: jax.Array,
        *,
        donate: bool | None = None,
) -> tuple[EpochRunner, dict[str, Any]]:
    """Compiles both runners, times a few steps of each and returns the faster.

    Each runner is timed, after a warm-up step, over a few steps in interleaved rounds on a copy
    of ``state`` (the caller's state is never donated here), and keeps its best round. In a job
    of several processes every process takes process 0's timings, so all choose alike. The
    choice is cached for the process per backend, device and state/data signature; a cache hit
    compiles only the chosen runner.

    Args:
        train_step: a function from :func:`~jaxtricks.training.steps.make_train_step`.
        state: the state to train; copied, not consumed.
        data: the training set ``(x, y)``, on the device.
        indices: an epoch's indices from :func:`epoch_indices`.
        donate: as for :func:`compile_epoch_runner`.

    Returns:
        ``(runner, record)``: the chosen :class:`EpochRunner`, and a record with ``runner``
        (its name), ``step_time_s`` (seconds per step of each runner as measured),
        ``cached`` (whether the choice came from the cache) and ``compile_time_s`` (each
        runner compiled in this call).

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> from jaxtricks.training.steps import make_train_step
        >>> data = (jnp.ones((8, 3)), jnp.zeros((8,), jnp.int32))
        >>> state = create_train_state(nn.Dense(2), optax.sgd(0.1), jax.random.key(0), data[0])
        >>> indices = epoch_indices(jax.random.key(1), 0, num_examples=8, batch_size=4)
        >>> runner, record = choose_runner(
        ...     make_train_step(nn.Dense(2), optax.sgd(0.1)), state, data, indices)
        >>> runner.name in RUNNERS, sorted(record["step_time_s"])
        (True, ['loop', 'scan'])
    """
    key = _signature(state, data, indices)
    if key in _CHOICES:
        name, step_time = _CHOICES[key]
        runner = compile_epoch_runner(train_step, name, state, data, indices, donate=donate)
        record = {
            "runner": name,
            "step_time_s": dict(step_time),
            "cached": True,
            "compile_time_s": {name: runner.compile_time_s},
        }
        return runner, record
    runners = {
        name: compile_epoch_runner(train_step, name, state, data, indices, donate=donate)
        for name in RUNNERS
    }
    trial = jax.tree.map(lambda leaf: leaf.copy(), state)
    probe = min(_PROBE_STEPS, indices.shape[0])
    for runner in runners.values():
        trial, _ = runner.advance(trial, runner.zero_totals(), data, indices, 0, 1)
    jax.block_until_ready(trial)
    step_time = dict.fromkeys(RUNNERS, math.inf)
    for _ in range(_PROBE_ROUNDS):
        for name, runner in runners.items():
            begin = time.perf_counter()
            trial, totals = runner.advance(trial, runner.zero_totals(), data, indices, 0, probe)
            jax.block_until_ready((trial, totals))
            step_time[name] = min(step_time[name], (time.perf_counter() - begin) / probe)
    if jax.process_count() > 1:
        # Every process must run the same program: all take process 0's timings.
        from jax.experimental import multihost_utils

        times = multihost_utils.broadcast_one_to_all(
            np.array([step_time[name] for name in RUNNERS], np.float32))
        step_time = {name: float(t) for name, t in zip(RUNNERS, times, strict=True)}
    name = min(RUNNERS, key=step_time.__getitem__)
    _CHOICES[key] = (name, step_time)
    record = {
        "runner": name,
        "step_time_s": dict(step_time),
        "cached": False,
        "compile_time_s": {n: r.compile_time_s for n, r in runners.items()},
    }
    return runners[name], record
