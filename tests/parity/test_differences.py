"""Every deliberate difference from Optax and ``jax.nn.initializers``, one case per function.

docs/optax_parity.md lists them in one table; each row's id is a key of :data:`DIFFERENCES`,
whose cases show both halves of the row: jaxtricks refuses the value with an error that names
the argument, and the reference accepts the same value without a word (and, for a schedule or
a transform, computes with it). A row of the table without cases here, or cases without a row,
fails :func:`test_the_table_lists_exactly_these_differences`.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest
from optax_suite import documented_differences

import jaxtricks as jt

PARAMS = {"w": jnp.ones(3)}
GRADS = {"w": jnp.array([0.5, -1.0, 2.0])}


class Case(NamedTuple):
    """jaxtricks' call that raises, and the reference's that does not."""

    ours: Any  # () -> anything; must raise ``error`` whose message names ``argument``
    theirs: Any  # () -> anything; must return
    argument: str
    error: type = ValueError


def _step(make):
    """``make()`` run as a transform for one update, or called at a few counts as a schedule."""

    def run():
        built = make()
        # The reference's arithmetic mixes weakly and strongly typed values.
        with jax.numpy_dtype_promotion("standard"):
            if isinstance(built, optax.GradientTransformation):
                return built.update(GRADS, built.init(PARAMS), PARAMS)
            return [built(count) for count in (0, 5, 50)]

    return run


def _both(ours, theirs, argument, error=ValueError):
    return Case(ours, _step(theirs), argument, error)


def _same(build, argument, error=ValueError):
    """The same call with ``m`` as jaxtricks or as Optax."""
    return _both(lambda: build(jt), lambda: build(optax), argument, error)


def _initializer(build, argument):
    """The same initializer call with ``m`` as jaxtricks or as ``jax.nn.initializers``."""
    return Case(
        lambda: build(jt)(jax.random.key(0), (4, 3)),
        lambda: build(jax.nn.initializers)(jax.random.key(0), (4, 3)),
        argument,
    )


def _scheduled_sgd(m):
    """One step of SGD whose learning-rate schedule returns a vector, not a number."""
    tx = m.sgd(lambda count: jnp.full(3, 0.1))
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)


def _integer_step(m):
    """One SGD step on integer parameters and gradients (Optax's update is 0: ⌊−0.1⌋ → 0)."""
    params = {"w": jnp.ones(3, jnp.int32)}
    tx = m.sgd(0.1)
    with jax.numpy_dtype_promotion("standard"):
        return tx.update(params, (optax.EmptyState(), optax.EmptyState()), params)


def _plateau(**kwargs):
    """Three updates of Optax's reduce_on_plateau with ``kwargs``, on a flat loss."""
    tx = optax.contrib.reduce_on_plateau(**kwargs)
    state = tx.init(PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(3):
            updates, state = tx.update(GRADS, state, value=1.0)
    return updates


DIFFERENCES: dict[str, list[Case]] = {
    "negative-learning-rate": [
        _same(lambda m: m.sgd(-0.1), "learning_rate"),
        _same(lambda m: m.adam(math.nan), "learning_rate"),
        _same(lambda m: m.scale_by_learning_rate(-1.0), "learning_rate"),
    ],
    "adam-betas": [
        _same(lambda m: m.adam(0.1, b1=1.0), "b1"),
        _same(lambda m: m.adamw(0.1, b2=1.0), "b2"),
        _same(lambda m: m.scale_by_adam(b1=-0.5), "b1"),
    ],
    "rms-decay": [
        _same(lambda m: m.rmsprop(0.1, decay=1.0), "decay"),
        _same(lambda m: m.scale_by_rms(decay=1.5), "decay"),
        _same(lambda m: m.scale_by_stddev(decay=-0.1), "decay"),
    ],
    "momentum-range": [
        _same(lambda m: m.sgd(0.1, momentum=1.5), "momentum"),
        _same(lambda m: m.rmsprop(0.1, momentum=-0.5), "momentum"),
        _same(lambda m: m.trace(2.0), "decay"),
    ],
    "eps": [
        _same(lambda m: m.adam(0.1, eps=0.0), "eps"),
        _same(lambda m: m.adam(0.1, eps_root=-1e-8), "eps_root"),
        _same(lambda m: m.rmsprop(0.1, eps=-1e-8), "eps"),
        _same(lambda m: m.adagrad(0.1, eps=0.0), "eps"),
        _same(lambda m: m.normalize_by_update_norm(eps=0.0), "eps"),
    ],
    "negative-initial-accumulator": [
        _same(
            lambda m: m.adagrad(0.1, initial_accumulator_value=-0.1), "initial_accumulator_value"
        ),
        _same(lambda m: m.rmsprop(0.1, initial_scale=-1.0), "initial_scale"),
    ],
    "negative-weight-decay": [
        _same(lambda m: m.adamw(0.1, weight_decay=-1e-4), "weight_decay"),
        _same(lambda m: m.add_decayed_weights(-0.1), "weight_decay"),
    ],
    "clipping-threshold": [
        _same(lambda m: m.clip(0.0), "max_delta"),
        _same(lambda m: m.clip(-1.0), "max_delta"),
        _same(lambda m: m.clip_by_global_norm(0.0), "max_norm"),
    ],
    "normalize-scale-factor": [
        _same(lambda m: m.normalize_by_update_norm(0.0), "scale_factor"),
        _same(lambda m: m.normalize_by_update_norm(math.inf), "scale_factor"),
    ],
    "non-scalar-hyperparameter": [
        _same(lambda m: m.sgd(True), "learning_rate"),
        _same(lambda m: m.adam(jnp.array([0.1, 0.2, 0.3])), "learning_rate"),
        _same(lambda m: m.clip(jnp.array([1.0, 0.5, 2.0])), "max_delta"),
    ],
    "schedule-not-scalar": [
        Case(
            lambda: _scheduled_sgd(jt),
            lambda: _scheduled_sgd(optax),
            "schedule must return a scalar",
        ),
    ],
    "integer-params": [
        Case(
            lambda: jt.sgd(0.1).init({"w": jnp.ones(3, jnp.int32)}),
            lambda: optax.sgd(0.1).init({"w": jnp.ones(3, jnp.int32)}),
            "params",
            TypeError,
        ),
        Case(lambda: _integer_step(jt), lambda: _integer_step(optax), "updates", TypeError),
    ],
    "exponential-transition-steps": [
        _same(lambda m: m.exponential_decay(1.0, 0, 0.5), "transition_steps"),
        _same(lambda m: m.exponential_decay(1.0, -1, 0.5), "transition_steps"),
    ],
    "exponential-decay-rate": [
        _same(lambda m: m.exponential_decay(1.0, 2, 0.0), "decay_rate"),
        _same(lambda m: m.exponential_decay(1.0, 2, -0.5), "decay_rate"),
    ],
    "exponential-transition-begin": [
        _same(lambda m: m.exponential_decay(1.0, 2, 0.5, transition_begin=-3), "transition_begin"),
    ],
    "warmup-steps": [
        _same(lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, -5, 10), "warmup_steps"),
    ],
    "onecycle-pct-start": [
        _same(lambda m: m.cosine_onecycle_schedule(10, 1.0, pct_start=1.0), "pct_start"),
        _same(lambda m: m.cosine_onecycle_schedule(10, 1.0, pct_start=-0.5), "pct_start"),
    ],
    "integer-steps": [
        _same(lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 10.5, 100), "warmup_steps"),
        _same(lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100.0), "decay_steps"),
        _same(lambda m: m.cosine_onecycle_schedule(100.0, 1.0), "transition_steps"),
        _same(lambda m: m.join_schedules([m.constant_schedule(1.0)] * 2, [2.5]), "boundaries"),
    ],
    "join-boundaries": [
        _same(lambda m: m.join_schedules([m.constant_schedule(1.0)] * 3, [5]), "boundaries"),
        _same(lambda m: m.join_schedules([m.constant_schedule(1.0)] * 3, [5, 2]), "boundaries"),
    ],
    "apply-if-finite-errors": [
        _same(lambda m: m.apply_if_finite(m.sgd(0.1), -1), "max_consecutive_errors"),
        _same(lambda m: m.apply_if_finite(m.sgd(0.1), 2.5), "max_consecutive_errors"),
    ],
    "plateau-counts": [
        Case(lambda: jt.reduce_on_plateau(patience=0), lambda: _plateau(patience=0), "patience"),
        Case(lambda: jt.reduce_on_plateau(cooldown=-1), lambda: _plateau(cooldown=-1), "cooldown"),
        Case(
            lambda: jt.reduce_on_plateau(accumulation_size=0),
            lambda: _plateau(accumulation_size=0),
            "accumulation_size",
        ),
        Case(lambda: jt.reduce_on_plateau(min_scale=2.0), lambda: _plateau(min_scale=2.0),
             "min_scale"),
    ],
    "initializer-scale": [
        _initializer(lambda m: m.variance_scaling(0.0, "fan_in", "normal"), "scale"),
        _initializer(lambda m: m.normal(-0.1), "stddev"),
        _initializer(lambda m: m.uniform(0.0), "scale"),
        _initializer(lambda m: m.truncated_normal(0.0), "stddev"),
        _initializer(lambda m: m.orthogonal(-1.0), "scale"),
    ],
    "truncated-normal-bounds": [
        _initializer(lambda m: m.truncated_normal(1.0, None, 2.0, -2.0), "upper"),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "case"),
    [(row, case) for row, cases in DIFFERENCES.items() for case in cases],
    ids=[f"{row}-{i}" for row, cases in DIFFERENCES.items() for i in range(len(cases))],
)
def test_jaxtricks_refuses_what_the_reference_silently_accepts(row, case):
    case.theirs()
    with pytest.raises(case.error) as info:
        case.ours()
    assert case.argument in str(info.value), str(info.value)


def test_the_table_lists_exactly_these_differences():
    assert list(documented_differences()) == list(DIFFERENCES)
