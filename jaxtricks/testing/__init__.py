"""Property tests for your own transforms, initializers and schedules: checks and strategies.

A guide for a reader who wrote a gradient transformation (an ``optax.GradientTransformation``)
and wants to know it keeps the contract Optax and training rely on.

**Install.** The checks need only chex, which jaxtricks depends on; the Hypothesis strategies
need the ``testing`` extra: ``pip install "jaxtricks[testing]"``. ``import jaxtricks.testing``
works without Hypothesis; using a strategy (``problems``, ``pytrees``, ...) then raises an
``ImportError`` that names the extra. ``import jaxtricks`` imports neither this package nor
Hypothesis; ``jt.testing`` loads it on first use.

**Check one case by hand.** :func:`check_transform` runs ``init`` and one ``update`` per
gradient, as training does, and checks (all by default; ``checks=[...]`` picks some): the
updates keep the gradients' structure, shapes and dtypes (``"dtypes"``), the state keeps
``init``'s (``"state"``), finite inputs give finite outputs (``"finite"``), ``jit`` equals eager
(``"jit"``) and is not compiled again on the second call (``"retrace"``), ``vmap`` over
problems equals a loop (``"vmap"``), ``None`` and zero-size leaves pass through
(``"empty_leaves"``), and, given ``reference=``, the updates equal another transformation's
within a dtype-aware tolerance (``"reference"``). Here a sign descent of one's own, checked
against Optax's, and a slip that promotes bfloat16 gradients to float32:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from jaxtricks.testing import check_transform
    >>> def sign_descent(learning_rate, constant=float):
    ...     def update(grads, state, params=None):
    ...         step = constant(-learning_rate)
    ...         return jax.tree.map(lambda g: step * jnp.sign(g), grads), state
    ...     return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
    >>> grads = [{"w": jnp.full((2, 3), 0.5), "b": jnp.array([1, -1, 0], jnp.bfloat16)}] * 2
    >>> check_transform(sign_descent(0.01), params, grads,
    ...                 reference=optax.chain(optax.scale_by_sign(), optax.scale(-0.01)))
    >>> with jax.numpy_dtype_promotion("standard"):
    ...     check_transform(sign_descent(0.01, jnp.float32), params, grads, checks=["dtypes"])
    Traceback (most recent call last):
    AssertionError: property 'dtypes' failed (step 0): ...

A failure names the property, the step and, where it is about one array, the leaf's path.

**Let Hypothesis draw the cases.** :func:`~jaxtricks.testing.strategies.problems` draws
parameters and a few gradients on one random pytree mixing float32, bfloat16, float16 and
complex64 leaves with ``None`` and zero-size ones; ``problems(specs(REAL_DTYPES))`` leaves
complex numbers out (for a transform that orders values, as clipping does). A test:

    from hypothesis import given, settings
    from jaxtricks.testing import check_transform, problems

    TX = sign_descent(0.01)  # built once: compiled functions are cached per transform

    @settings(max_examples=10, deadline=None)  # the first examples pay for compilation
    @given(problem=problems())
    def test_sign_descent(problem):
        check_transform(TX, problem.params, problem.grads)

``examples/test_own_transform.py`` is one that runs (``pytest examples/test_own_transform.py``).
Every random structure compiles ``jit(update)`` and ``vmap(update)`` anew; for many examples
draw from two fixed structures, ``problems(st.sampled_from(TEMPLATES))``, and run the cheap
checks on random trees.

**More of the same.** ``extra_args={"value": loss}`` reaches every ``update`` (Optax's
``GradientTransformationExtraArgs``, such as ``reduce_on_plateau``); ``batched=True`` checks
problems you stacked yourself; ``ulps=`` widens or narrows the tolerance
(:func:`default_ulps`, :func:`tolerance`, :func:`assert_trees_close`); :func:`run_transform`
gives the whole trajectory for properties of your own (zero gradients change nothing, a bound
holds). For an initializer with ``jax.nn.initializers``' signature ``(key, shape, dtype)``,
:func:`check_initializer` checks the shape, dtype, finiteness, that the key decides the
values, and ``jit``; for a schedule ``count -> value``, :func:`check_schedule` checks a
finite, non-negative scalar of the right dtype, also under ``jit`` and ``vmap``;
:func:`~jaxtricks.testing.strategies.learning_rates` and
:func:`~jaxtricks.testing.strategies.schedules` draw learning rates and jaxtricks' schedules.

What is where: :mod:`~jaxtricks.testing.checks` (chex) holds the checks,
:mod:`~jaxtricks.testing.strategies` (Hypothesis) the strategies; both are re-exported here.
"""

import importlib
from typing import Any

from jaxtricks.testing.checks import (
    INITIALIZER_CHECKS,
    SCHEDULE_CHECKS,
    TRANSFORM_CHECKS,
    Trajectory,
    assert_trees_close,
    check_initializer,
    check_schedule,
    check_transform,
    default_ulps,
    run_transform,
    tolerance,
)

# Hypothesis is an extra: these names load jaxtricks.testing.strategies, which explains how to
# install it when it is missing.
_STRATEGIES = (
    "DTYPES",
    "LIMIT",
    "REAL_DTYPES",
    "SCHEDULE_NAMES",
    "SHAPES",
    "TEMPLATES",
    "Leaf",
    "Problem",
    "ScheduleCase",
    "leaves",
    "learning_rates",
    "problems",
    "pytrees",
    "schedules",
    "specs",
    "values",
)

__all__ = [
    "INITIALIZER_CHECKS",
    "SCHEDULE_CHECKS",
    "TRANSFORM_CHECKS",
    "Trajectory",
    "assert_trees_close",
    "check_initializer",
    "check_schedule",
    "check_transform",
    "default_ulps",
    "run_transform",
    "tolerance",
    *_STRATEGIES,
]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        return getattr(importlib.import_module("jaxtricks.testing.strategies"), name)
    raise AttributeError(f"module 'jaxtricks.testing' has no attribute {name!r}")
