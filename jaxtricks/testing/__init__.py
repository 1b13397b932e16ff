"""Property tests for your own transforms, initializers and schedules: checks and strategies.

- :mod:`~jaxtricks.testing.checks` (chex; no extra needed): :func:`check_transform` runs a
  gradient transformation and checks that dtypes are kept, the state's layout is stable,
  outputs are finite, ``jit`` equals eager without a retrace on the second call, ``vmap``
  equals a loop, ``None`` and zero-size leaves pass through, and (given one) a reference
  transformation's updates are matched; :func:`check_initializer` and :func:`check_schedule`
  do the same for initializers and schedules. Comparisons allow a dtype-aware number of
  rounding errors (:func:`default_ulps`, :func:`tolerance`, :func:`assert_trees_close`).
- :mod:`~jaxtricks.testing.strategies` (Hypothesis, the ``testing`` extra:
  ``pip install "jaxtricks[testing]"``): random pytrees mixing float32, bfloat16, float16 and
  complex64 leaves with zero-size and ``None`` leaves (:func:`pytrees`, :func:`problems`),
  learning rates and schedules. It is imported when one of its names is first used, so the
  checks work without Hypothesis.

``import jaxtricks`` does not import this package; ``jaxtricks.testing`` (or ``jt.testing``)
does. A test of your own transform::

    from hypothesis import given, settings
    from jaxtricks.testing import check_transform, problems

    @settings(deadline=None)  # the first examples pay for compilation
    @given(problem=problems())
    def test_my_transform(problem):
        check_transform(my_transform(0.1), problem.params, problem.grads)

(``examples/property_test.py`` is one that runs.)
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
