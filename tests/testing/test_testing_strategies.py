"""jaxtricks.testing's strategies draw what they promise, and reach every kind of leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis.errors import NoSuchExample

import jaxtricks as jt
from jaxtricks.testing import (
    DTYPES,
    LIMIT,
    SCHEDULE_NAMES,
    SHAPES,
    TEMPLATES,
    Leaf,
    learning_rates,
    problems,
    pytrees,
    schedules,
    specs,
)
from jaxtricks.testing.strategies import BFLOAT16, COMPLEX64, FLOAT32

# find() searches for one example: no database, so that a run does not depend on earlier ones.
SEARCH = settings(database=None, max_examples=1000)
# These test the strategies, not the code under test: a fixed number of examples, and no
# deadline, since the first example may pay for compiling.
DRAWS = settings(max_examples=20, deadline=None)


def tree_leaves(tree):
    """The leaves, None ones included."""
    return jax.tree.leaves(tree, is_leaf=lambda x: x is None)


@DRAWS
@given(tree=pytrees())
def test_a_pytree_holds_finite_normal_values_of_the_menu_s_shapes_and_dtypes(tree):
    assert tree is not None
    for x in jax.tree.leaves(tree):
        assert isinstance(x, np.ndarray) and x.shape in SHAPES and x.dtype in DTYPES
        parts = (x.real, x.imag) if np.iscomplexobj(x) else (x,)
        for part in parts:
            part = part.astype(np.float64)
            assert np.all(np.isfinite(part)) and np.all(np.abs(x) <= LIMIT * (1 + 1e-6))
            nonzero = part[part != 0]
            assert np.all(np.abs(nonzero) >= float(jnp.finfo(x.dtype).tiny))


@pytest.mark.parametrize(
    "condition",
    [
        lambda spec: any(leaf.dtype == COMPLEX64 for leaf in jax.tree.leaves(spec)),
        lambda spec: {leaf.dtype for leaf in jax.tree.leaves(spec)} >= {FLOAT32, BFLOAT16},
        lambda spec: any(leaf is None for leaf in tree_leaves(spec)),
        lambda spec: any(0 in leaf.shape for leaf in jax.tree.leaves(spec)),
        lambda spec: isinstance(spec, dict) and any(isinstance(v, tuple) for v in spec.values()),
    ],
    ids=["complex64", "mixed_float32_bfloat16", "none", "zero_size", "nested"],
)
def test_specs_reach_every_kind_of_tree(condition):
    find(specs(), condition, settings=SEARCH)


def test_the_templates_hold_every_dtype_a_none_and_zero_size_leaves():
    leaves = [leaf for template in TEMPLATES for leaf in tree_leaves(template)]
    assert {leaf.dtype for leaf in leaves if leaf is not None} == set(DTYPES)
    assert None in leaves
    assert any(isinstance(leaf, Leaf) and 0 in leaf.shape for leaf in leaves)


@DRAWS
@given(problem=problems(steps=2, batch=3))
def test_a_problem_s_trees_share_one_structure_and_the_batch_axis(problem):
    structure = jax.tree.structure(problem.params)
    assert len(problem.grads) == 2
    for tree in (problem.params, *problem.grads):
        assert jax.tree.structure(tree) == structure
        assert all(x.shape[0] == 3 for x in jax.tree.leaves(tree))
    for g, p in zip(jax.tree.leaves(problem.grads[0]), jax.tree.leaves(problem.params),
                    strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype


@DRAWS
@given(rate=learning_rates(0.7, 1.1))
def test_a_learning_rate_is_a_float32_number_in_its_bounds(rate):
    # Neither bound is a float32 number: float32(0.7) lies below 0.7, float32(1.1) above 1.1.
    assert 0.7 <= rate <= 1.1 and float(np.float32(rate)) == rate


def test_a_learning_rate_never_rounds_past_its_bounds():
    # Hypothesis tries the bounds early: a bound rounded to float32 the wrong way is found.
    with pytest.raises(NoSuchExample):
        find(learning_rates(0.7, 1.1), lambda rate: not 0.7 <= rate <= 1.1, settings=SEARCH)


def test_learning_rates_may_be_schedules_and_refuse_bad_bounds():
    find(learning_rates(scheduled=True), callable, settings=SEARCH)
    with pytest.raises(ValueError, match="min_value, max_value"):
        learning_rates(1.0, 0.1)


@DRAWS
@given(case=schedules(max_value=0.5, horizon=32))
def test_a_schedule_s_values_lie_in_zero_to_max_value(case):
    values = np.asarray(jax.vmap(case.schedule)(jnp.arange(32)), np.float64)
    assert np.all(values >= 0) and np.all(values <= 0.5 * (1 + 1e-6)), (case, values)


def test_every_schedule_name_is_drawn_and_unknown_names_are_refused():
    for name in SCHEDULE_NAMES:
        case = find(schedules([name]), lambda case: True, settings=SEARCH)
        assert case.call.startswith(getattr(jt, name).__name__)
    with pytest.raises(ValueError, match="names: expected some of"):
        schedules(["linear"])
    with pytest.raises(ValueError, match="names: expected some of"):
        schedules([])


@DRAWS
@given(spec=specs([FLOAT32, BFLOAT16], shapes=[(2, 0), (1,)], max_leaves=3))
def test_a_spec_draws_only_the_dtypes_and_shapes_asked_for(spec):
    leaves = jax.tree.leaves(spec)
    assert len(tree_leaves(spec)) <= 3
    assert all(leaf.dtype in (FLOAT32, BFLOAT16) and leaf.shape in ((2, 0), (1,))
               for leaf in leaves)
