"""Properties every gradient transformation and optimizer holds on random pytrees.

For each entry of ``TRANSFORMS`` (every public transform and optimizer, in the settings
below), ``jaxtricks.testing.check_transform`` checks that updates have the gradients'
structure, shapes and dtypes, the state keeps its own from step to step, finite inputs give
finite outputs, ``None`` and zero-size leaves pass through, ``jit`` agrees with eager execution
without retracing on the second call, and ``vmap`` over independent problems agrees with a
loop over them. Trees mix float32, bfloat16, float16 and complex64 leaves (float64 and float32
under ``jax.enable_x64``). On top of that: zero gradients do not move the parameters,
``optax.chain`` is associative, clipping never exceeds its threshold and normalization gives
unit norm.

Tolerances are in units of the dtype's machine epsilon, since the same formula evaluated in
two ways (fused by XLA or op by op, batched or not) may round differently: 4 for ``jit``
against eager and 2 for ``vmap`` against a loop, tighter than ``check_transform``'s defaults.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from per_case import per_case

import jaxtricks as jt
from jaxtricks.testing import check_transform, problems, run_transform, specs
from jaxtricks.testing.strategies import (
    COMPLEX64,
    DTYPES,
    FLOAT16,
    FLOAT32,
    FLOAT64,
    REAL_DTYPES,
    TEMPLATES,
    Leaf,
)

LR = 0.1
# ε of the adaptive transforms: their defaults (1e-8) round to 0 in float16, where a zero
# gradient then gives 0 · ∞ = NaN (as in Optax). 1e-4 is a normal float16 number.
EPS = 1e-4

# Built once, so that the checks' jit(tx.update) wraps the same function from one example to
# the next and its compilation cache hits.
TRANSFORMS = {
    "scale_by_momentum": jt.scale_by_momentum(0.9),
    "scale_by_momentum_nesterov": jt.scale_by_momentum(0.9, nesterov=True),
    "scale_by_velocity": jt.scale_by_velocity(LR, 0.9),
    "scale_by_adagrad": jt.scale_by_adagrad(),
    "scale_by_rms": jt.scale_by_rms(eps=EPS),
    "scale_by_rms_centered": jt.scale_by_rms(eps=EPS, centered=True),
    "scale_by_adam": jt.scale_by_adam(eps=EPS),
    "normalize_by_global_norm": jt.normalize_by_global_norm(),
    "clip_by_value": jt.clip_by_value(1.0),
    "clip": jt.clip(1.0),
    "clip_by_norm": jt.clip_by_norm(1.0),
    "clip_by_global_norm": jt.clip_by_global_norm(1.0),
    "add_decayed_weights": jt.add_decayed_weights(0.1),
    "add_l2_penalty": jt.add_l2_penalty(0.1),
    "scale_by_learning_rate": jt.scale_by_learning_rate(LR),
    "scale_by_learning_rate_schedule": jt.scale_by_learning_rate(jt.cosine_decay(LR, 4)),
    "skip_nonfinite": jt.skip_nonfinite(jt.adam(LR, eps=EPS)),
    "sgd": jt.sgd(LR),
    "momentum": jt.momentum(LR, 0.9),
    "momentum_lesson": jt.momentum(LR, 0.9, form="lesson"),
    "nesterov": jt.nesterov(LR, 0.9),
    "adagrad": jt.adagrad(LR),
    "rmsprop": jt.rmsprop(LR, eps=EPS),
    "rmsprop_centered_momentum": jt.rmsprop(
        LR, eps=EPS, centered=True, momentum=0.9, nesterov=True
    ),
    "adam": jt.adam(LR, eps=EPS),
    "adamw": jt.adamw(LR, eps=EPS, weight_decay=0.1),
    "normalized_sgd": jt.normalized_sgd(LR),
    "chain_of_clip_and_sgd": optax.chain(jt.clip_by_global_norm(1.0), jt.sgd(LR)),
    "trace": jt.trace(0.9),
    "trace_nesterov": jt.trace(0.9, nesterov=True),
    "scale_by_stddev": jt.scale_by_stddev(eps=EPS),
    "scale_by_rss": jt.scale_by_rss(eps=EPS),
    "normalize_by_update_norm": jt.normalize_by_update_norm(),
    "apply_if_finite": jt.apply_if_finite(jt.adam(LR, eps=EPS), 2),
    "flatten_by_dtype": jt.flatten_by_dtype(jt.adam(LR, eps=EPS)),
    "gradient_health": jt.gradient_health(),
    "update_health": jt.update_health(),
    "scale_by_plateau": jt.scale_by_plateau(jt.epoch_plateau()),
    "reduce_on_plateau": jt.reduce_on_plateau(patience=1),
}
NAMES = sorted(TRANSFORMS)
# Optax's extra arguments of update: the loss, which reduce_on_plateau watches.
EXTRA_ARGS = {"reduce_on_plateau": {"value": jnp.asarray(1.0)}}
# Dtypes some transforms refuse, as Optax's do, and what their trees hold instead: jnp.clip
# (Optax's clip) refuses complex numbers, which have no order; reduce_on_plateau keeps its
# state in the tree's lowest and highest dtypes, which a tree holding both bfloat16 and
# float16 does not have (neither promotes to the other; Optax raises a ValueError).
REPLACED = {
    "clip_by_value": {COMPLEX64: FLOAT32},
    "clip": {COMPLEX64: FLOAT32},
    "reduce_on_plateau": {FLOAT16: FLOAT32},
}
# These add λw, so a zero gradient still moves the parameters.
DECAYING = {"add_decayed_weights", "add_l2_penalty", "adamw"}
THRESHOLDS = st.floats(0.01, 20.0)


def allowed_dtypes(names):
    """The dtypes that random trees for the transforms called ``names`` hold."""
    refused = {dtype for name in names for dtype in REPLACED.get(name, {})}
    return tuple(dtype for dtype in DTYPES if dtype not in refused)


def allowed(name, spec):
    """The spec with the dtypes the transform refuses replaced."""
    replaced = REPLACED.get(name, {})
    return jax.tree.map(lambda leaf: Leaf(leaf.shape, replaced.get(leaf.dtype, leaf.dtype)), spec)


def extra_args(names):
    """The extra arguments the transforms called ``names`` need, all together."""
    return {key: value for name in names for key, value in EXTRA_ARGS.get(name, {}).items()}


def random_problems(names, **kwargs):
    """Problems on random trees of the dtypes every transform of ``names`` takes."""
    return problems(specs(allowed_dtypes(names)), **kwargs)


def template_problems(name, **kwargs):
    """Problems on the fixed templates, with the dtypes the transform refuses replaced."""
    return problems(st.sampled_from([allowed(name, t) for t in TEMPLATES]), **kwargs)


def wide(x):
    """The array in float64 (complex128 for a complex one)."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def flushed(dtype):
    """The absolute error of a result that XLA flushed to zero for being subnormal: below the
    dtype's smallest normal number, in each of a complex number's two parts."""
    tiny = float(jnp.finfo(dtype).tiny)
    return tiny * np.sqrt(2) if jnp.issubdtype(dtype, jnp.complexfloating) else tiny


def norm64(tree):
    """The global Euclidean norm, computed in float64 by NumPy."""
    return float(np.sqrt(sum(np.sum(np.abs(wide(x)) ** 2) for x in jax.tree.leaves(tree))))


# --- every transform ----------------------------------------------------------------------


# Public factories of gradient transformations the suite runs through others: the optimizers
# get_optimizer builds by name are in TRANSFORMS by their own names.
COVERED_ELSEWHERE = {"get_optimizer"}


def test_every_public_transform_factory_is_in_the_suite():
    factories = {
        name for name in jt.tricks.__all__
        if inspect.isfunction(getattr(jt, name))
        and "GradientTransformation" in str(inspect.signature(getattr(jt, name)).return_annotation)
    }
    assert len(factories) > 30  # the annotation test finds them: it would not find none
    # A key names the factory it tests, or the factory and a variant ("scale_by_rms_centered"):
    # it counts for the longest factory name it starts with, so "clip_by_value" is not "clip".
    covered = set()
    for key in TRANSFORMS:
        owners = [name for name in factories if key == name or key.startswith(f"{name}_")]
        covered.update([max(owners, key=len)] if owners else [])
    missing = sorted(factories - covered - COVERED_ELSEWHERE)
    assert not missing, f"add to TRANSFORMS: {missing}"


# The health diagnostics report ‖g_m‖ / ‖θ_m‖, documented as +inf for a module whose
# parameters are all zero, which random trees draw; every other leaf of theirs is checked.
INFINITE_BY_DESIGN = {"gradient_health", "update_health"}


def checks_for(name, *checks):
    """``checks``, without "finite" for a transform whose state may hold +inf by design."""
    return [c for c in checks if not (c == "finite" and name in INFINITE_BY_DESIGN)]


@pytest.mark.parametrize("name", NAMES)
@per_case
@given(data=st.data())
def test_contract_on_random_trees(name, data):
    """Dtypes, state layout, finiteness, None and zero-size leaves, on any random tree."""
    problem = data.draw(random_problems([name]))
    check_transform(
        TRANSFORMS[name], problem.params, problem.grads,
        checks=checks_for(name, "dtypes", "state", "finite", "empty_leaves"),
        extra_args=extra_args([name]),
    )


@pytest.mark.parametrize("name", NAMES)
@per_case
@given(data=st.data())
def test_jit_equals_eager_without_retracing(name, data):
    """On the templates, so that each transform compiles twice whatever the examples."""
    problem = data.draw(template_problems(name))
    check_transform(
        TRANSFORMS[name], problem.params, problem.grads,
        checks=checks_for(name, "jit", "retrace", "dtypes", "state", "finite"), ulps=4,
        extra_args=extra_args([name]),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@per_case
@given(problem=problems(specs((FLOAT64, FLOAT32))))
def test_float64_is_kept_under_x64(name, problem):
    with jax.enable_x64(True):
        check_transform(
            TRANSFORMS[name], problem.params, problem.grads,
            checks=checks_for(name, "dtypes", "state", "finite"), extra_args=extra_args([name]),
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@per_case
@given(data=st.data())
def test_vmap_over_independent_problems_equals_a_loop(name, data):
    problem = data.draw(template_problems(name, steps=2, batch=3))
    check_transform(
        TRANSFORMS[name], problem.params, problem.grads, checks=["vmap"], batched=True, ulps=2,
        extra_args=extra_args([name]),
    )


@pytest.mark.parametrize("name", sorted(set(NAMES) - DECAYING))
@per_case
@given(data=st.data())
def test_zero_gradients_leave_the_parameters_unchanged(name, data):
    problem = data.draw(random_problems([name]))
    zeros = jax.tree.map(np.zeros_like, problem.params)
    run = run_transform(
        TRANSFORMS[name], problem.params, [zeros, zeros], extra_args=extra_args([name])
    )
    for params in run.params[1:]:
        chex.assert_trees_all_equal(params, run.params[0])


@given(names=st.lists(st.sampled_from(NAMES), min_size=3, max_size=3), data=st.data())
def test_chain_is_associative(names, data):
    problem = data.draw(random_problems(names))
    a, b, c = (TRANSFORMS[name] for name in names)
    extra = extra_args(names)
    expected = run_transform(optax.chain(a, b, c), problem.params, problem.grads,
                             extra_args=extra).updates
    for tx in (optax.chain(optax.chain(a, b), c), optax.chain(a, optax.chain(b, c))):
        actual = run_transform(tx, problem.params, problem.grads, extra_args=extra).updates
        chex.assert_trees_all_equal(actual, expected)


# --- clipping and normalization -------------------------------------------------------------
# A threshold θ is rounded to the gradient's dtype and the rescaling itself rounds, so a
# clipped norm may exceed θ by one unit of the dtype's precision: θ · (1 + eps). A rescaled
# entry below the dtype's smallest normal number may be flushed to zero by XLA: the
# comparisons with g · factor allow that much absolute error.


def precision(tree):
    """The largest machine epsilon among the tree's leaf dtypes (float32's for an empty tree)."""
    return max(
        (float(jnp.finfo(leaf.dtype).eps) for leaf in jax.tree.leaves(tree)),
        default=float(jnp.finfo(jnp.float32).eps),
    )


def slack(tree):
    """How far above a threshold rounding may take a norm, relative to the threshold.

    One unit of the leaf dtype's precision for the final rounding, plus four units of the
    float32 (float64 for a float64 tree) in which the sum of squares is accumulated.
    """
    accumulation = FLOAT64 if any(x.dtype == FLOAT64 for x in jax.tree.leaves(tree)) else FLOAT32
    return precision(tree) + 4 * float(jnp.finfo(accumulation).eps)


def one_step(tx, problem):
    """The gradient of the problem's first step, and the updates ``tx`` makes of it."""
    grads = jax.device_put(problem.grads[0])
    return grads, tx.update(grads, tx.init(grads))[0]


@given(problem=problems(specs(REAL_DTYPES), steps=1), theta=THRESHOLDS)
def test_clip_by_value_bounds_every_coordinate(problem, theta):
    grads, updates = one_step(jt.clip_by_value(theta), problem)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        eps = float(jnp.finfo(g.dtype).eps)
        u, g = wide(u), wide(g)
        assert np.all(np.abs(u) <= theta * (1 + eps))
        np.testing.assert_array_equal(np.sign(u), np.sign(g))
        # below θ even once θ is rounded to the dtype: untouched
        inside = np.abs(g) <= theta * (1 - eps)
        np.testing.assert_array_equal(u[inside], g[inside])


@given(problem=problems(steps=1), theta=THRESHOLDS)
def test_clip_by_norm_bounds_each_leaf_and_only_rescales(problem, theta):
    grads, updates = one_step(jt.clip_by_norm(theta), problem)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        tol = slack(g)
        assert norm64(u) <= theta * (1 + tol)
        expected = wide(g) * min(1.0, theta / norm64(g)) if norm64(g) > 0 else wide(g)
        np.testing.assert_allclose(
            wide(u), expected, rtol=tol, atol=flushed(g.dtype)
        )


@given(problem=problems(steps=1), theta=THRESHOLDS)
def test_clip_by_global_norm_bounds_the_norm_and_only_rescales(problem, theta):
    grads, updates = one_step(jt.clip_by_global_norm(theta), problem)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    tol = slack(grads)
    norm = norm64(grads)
    assert norm64(updates) <= theta * (1 + tol)
    if norm < theta * (1 - tol):
        chex.assert_trees_all_equal(updates, grads)
    factor = min(1.0, theta / norm) if norm > 0 else 1.0
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(
            wide(u), wide(g) * factor, rtol=tol, atol=flushed(g.dtype)
        )


@given(problem=problems(steps=1))
def test_normalize_by_global_norm_gives_unit_norm_up_to_eps(problem):
    eps = 1e-6
    grads, updates = one_step(jt.normalize_by_global_norm(eps), problem)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    norm = norm64(grads)
    if norm == 0:
        chex.assert_trees_all_equal(updates, grads)
        return
    # ‖u‖ = ‖g‖ / (‖g‖ + ε): 1 up to ε / ‖g‖, and never above 1.
    assert norm64(updates) <= 1 + slack(grads)
    np.testing.assert_allclose(norm64(updates), norm / (norm + eps), rtol=slack(grads))
