"""Properties every gradient transformation and optimizer holds on random pytrees.

For each entry of ``TRANSFORMS`` (every public transform and optimizer, in the settings
below): updates have the gradients' structure, shapes and dtypes, the state keeps its own from
step to step, finite inputs give finite outputs, ``jit`` agrees with eager execution and
``vmap`` over independent problems with a Python loop over them. On top of that: zero
gradients do not move the parameters, ``optax.chain`` is associative, clipping never exceeds
its threshold and normalization gives unit norm.

Tolerances are in units of the dtype's machine epsilon (``precision``), since the same formula
evaluated in two ways (fused by XLA or op by op, batched or not) may round differently.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    FLOAT32,
    FLOAT64,
    TEMPLATES,
    precision,
    problems,
    specs,
    to_jax,
)

import jaxtricks as jt

LR = 0.1
# ε of the adaptive transforms: their defaults (1e-8) round to 0 in float16, where a zero
# gradient then gives 0 · ∞ = NaN (as in Optax). 1e-4 is a normal float16 number.
EPS = 1e-4

# Built once, so that jax.jit(tx.update) wraps the same function from one example to the next
# and its compilation cache hits.
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
    "clip_then_sgd": optax.chain(jt.clip_by_global_norm(1.0), jt.sgd(LR)),
}
NAMES = sorted(TRANSFORMS)
# Compiled once per transform and template: the vmap test runs a batch of problems through
# jit(vmap(init)) and jit(vmap(update)), and each problem through jit(init) and jit(update).
INITS = {name: jax.jit(tx.init) for name, tx in TRANSFORMS.items()}
UPDATES = {name: jax.jit(tx.update) for name, tx in TRANSFORMS.items()}
BATCHED_INITS = {name: jax.jit(jax.vmap(tx.init)) for name, tx in TRANSFORMS.items()}
BATCHED_UPDATES = {name: jax.jit(jax.vmap(tx.update)) for name, tx in TRANSFORMS.items()}
RANDOM_PROBLEMS = problems()
TEMPLATE_PROBLEMS = problems(st.sampled_from(TEMPLATES))
# These add λw, so a zero gradient still moves the parameters.
DECAYING = {"add_decayed_weights", "add_l2_penalty", "adamw"}
THRESHOLDS = st.floats(0.01, 20.0)


def run(update, tx, problem):
    """Steps ``update`` through the problem's gradients; returns (updates, states) per step.

    The parameters follow the updates, as in training, so weight decay sees them move.
    """
    params = to_jax(problem.params)
    states = [tx.init(params)]
    all_updates = []
    for grads in problem.grads:
        updates, state = update(to_jax(grads), states[-1], params)
        all_updates.append(updates)
        states.append(state)
        with jax.numpy_dtype_promotion("standard"):
            params = optax.apply_updates(params, updates)
    return all_updates, states


def check_contract(problem, all_updates, states):
    """Updates are finite and shaped like the gradients; the state's layout never changes."""
    for grads, updates in zip(problem.grads, all_updates, strict=True):
        grads = to_jax(grads)
        chex.assert_trees_all_equal_structs(updates, grads)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
        chex.assert_tree_all_finite(updates)
    for state in states[1:]:
        chex.assert_trees_all_equal_structs(state, states[0])
        chex.assert_trees_all_equal_shapes_and_dtypes(state, states[0])
        chex.assert_tree_all_finite(state)


def assert_close_in_dtype(actual, expected, *, ulps, inputs=(), floor=0.0):
    """Same structure, shapes and dtypes; float values within ``ulps · eps · S`` of each other.

    ``eps`` is the leaf dtype's machine epsilon and ``S`` the largest magnitude in the expected
    leaf, in the same leaf of each tree of ``inputs`` and ``floor``: two roundings of one
    formula differ by a fraction of the terms it combines, which cancellation can make far
    larger than its result (Nesterov's ``g + γ v``, AdamW's direction plus ``λ w``). On top of
    that, ``ulps`` times the dtype's smallest normal number: XLA:CPU flushes a subnormal
    intermediate to zero, and whether one arises depends on fusion (``λ w`` with ``w`` just above
    ``tiny`` is flushed when computed alone, and kept inside a fused multiply-add).
    """
    chex.assert_trees_all_equal_structs(actual, expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    columns = (jax.tree.leaves(tree) for tree in (actual, expected, *inputs))
    for a, e, *others in zip(*columns, strict=True):
        a, e = np.asarray(a), np.asarray(e)
        if not np.issubdtype(e.dtype, np.inexact):  # counters and flags
            np.testing.assert_array_equal(a, e)
            continue
        info = jnp.finfo(e.dtype)
        scale = max(floor, *(magnitude(x) for x in (e, *others)))
        atol = ulps * (float(info.eps) * scale + float(info.tiny))
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=0, atol=atol)


def magnitude(tree):
    """The largest absolute value in the tree (0 for an empty one)."""
    leaves = (np.asarray(x, np.float64) for x in jax.tree.leaves(tree))
    return max((float(np.max(np.abs(x), initial=0.0)) for x in leaves), default=0.0)


def take(tree, i):
    """Problem ``i`` of a batch: entry ``i`` of every leaf."""
    return jax.tree.map(lambda x: x[i], tree)


def norm64(tree):
    """The global Euclidean norm, computed in float64 by NumPy."""
    return float(
        np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))
    )


# --- every transform ----------------------------------------------------------------------


class ContractTest(chex.TestCase):
    """The contract with ``jit`` and without it; the jitted update agrees with eager calls.

    Without ``jit`` the trees are any random tree; with it they come from ``TEMPLATES``, so
    that each transform compiles twice whatever the number of examples.
    """

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in NAMES))
    @given(data=st.data())
    def test_contract(self, name, data):
        jitted = self.variant.type is chex.ChexVariantType.WITH_JIT
        problem = data.draw(TEMPLATE_PROBLEMS if jitted else RANDOM_PROBLEMS)
        tx = TRANSFORMS[name]
        update = self.variant(tx.update)
        params = to_jax(problem.params)
        states = [tx.init(params)]
        all_updates = []
        for grads in map(to_jax, problem.grads):
            updates, state = update(grads, states[-1], params)
            if jitted:  # from the same inputs, so that differences do not compound
                expected, expected_state = tx.update(grads, states[-1], params)
                assert_close_in_dtype(updates, expected, ulps=4, inputs=(grads, params))
                assert_close_in_dtype(
                    state, expected_state, ulps=4, inputs=(states[-1],), floor=magnitude(grads)
                )
            all_updates.append(updates)
            states.append(state)
            with jax.numpy_dtype_promotion("standard"):
                params = optax.apply_updates(params, updates)
        check_contract(problem, all_updates, states)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@given(problem=problems(specs((FLOAT64, FLOAT32))))
def test_float64_is_kept_under_x64(name, problem):
    with jax.enable_x64(True):
        tx = TRANSFORMS[name]
        check_contract(problem, *run(tx.update, tx, problem))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@given(problem=problems(st.sampled_from(TEMPLATES), steps=2, batch=3))
def test_vmap_over_independent_problems_equals_a_loop(name, problem):
    params = to_jax(problem.params)
    state = BATCHED_INITS[name](params)
    # Each problem's inputs are sliced from the NumPy arrays, its outputs from NumPy copies:
    # slicing JAX arrays would add a dispatched op per leaf.
    looped = [INITS[name](to_jax(take(problem.params, i))) for i in range(3)]
    for grads in problem.grads:
        updates, state = BATCHED_UPDATES[name](to_jax(grads), state, params)
        updates, batched_state = jax.device_get((updates, state))
        for i in range(3):
            grads_i, params_i = to_jax(take(grads, i)), to_jax(take(problem.params, i))
            state_i = looped[i]
            expected, looped[i] = UPDATES[name](grads_i, state_i, params_i)
            assert_close_in_dtype(take(updates, i), expected, ulps=2, inputs=(grads_i, params_i))
            assert_close_in_dtype(
                take(batched_state, i), looped[i], ulps=2, inputs=(state_i,),
                floor=magnitude(grads_i),
            )


@pytest.mark.parametrize("name", sorted(set(NAMES) - DECAYING))
@given(problem=problems())
def test_zero_gradients_leave_the_parameters_unchanged(name, problem):
    tx = TRANSFORMS[name]
    params = to_jax(problem.params)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        with jax.numpy_dtype_promotion("standard"):
            moved = optax.apply_updates(params, updates)
        chex.assert_trees_all_equal(moved, params)


@given(problem=problems(), names=st.lists(st.sampled_from(NAMES), min_size=3, max_size=3))
def test_chain_is_associative(problem, names):
    a, b, c = (TRANSFORMS[name] for name in names)
    left = optax.chain(optax.chain(a, b), c)
    right = optax.chain(a, optax.chain(b, c))
    flat = optax.chain(a, b, c)
    expected, _ = run(flat.update, flat, problem)
    for tx in (left, right):
        actual, _ = run(tx.update, tx, problem)
        chex.assert_trees_all_equal(actual, expected)


# --- clipping and normalization -------------------------------------------------------------
# A threshold θ is rounded to the gradient's dtype and the rescaling itself rounds, so a
# clipped norm may exceed θ by one unit of the dtype's precision: θ · (1 + eps). A rescaled
# entry below the dtype's smallest normal number may be flushed to zero by XLA: the
# comparisons with g · factor allow that much absolute error.


def slack(tree):
    """How far above a threshold rounding may take a norm, relative to the threshold.

    One unit of the leaf dtype's precision for the final rounding, plus four units of the
    float32 (float64 for a float64 tree) in which the sum of squares is accumulated.
    """
    accumulation = FLOAT64 if any(x.dtype == FLOAT64 for x in jax.tree.leaves(tree)) else FLOAT32
    return precision(tree) + 4 * float(jnp.finfo(accumulation).eps)


@given(problem=problems(steps=1), theta=THRESHOLDS)
def test_clip_by_value_bounds_every_coordinate(problem, theta):
    tx = jt.clip_by_value(theta)
    grads = to_jax(problem.grads[0])
    updates, _ = tx.update(grads, tx.init(grads))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        eps = float(jnp.finfo(g.dtype).eps)
        u, g = np.asarray(u, np.float64), np.asarray(g, np.float64)
        assert np.all(np.abs(u) <= theta * (1 + eps))
        np.testing.assert_array_equal(np.sign(u), np.sign(g))
        # below θ even once θ is rounded to the dtype: untouched
        inside = np.abs(g) <= theta * (1 - eps)
        np.testing.assert_array_equal(u[inside], g[inside])


@given(problem=problems(steps=1), theta=THRESHOLDS)
def test_clip_by_norm_bounds_each_leaf_and_only_rescales(problem, theta):
    tx = jt.clip_by_norm(theta)
    grads = to_jax(problem.grads[0])
    updates, _ = tx.update(grads, tx.init(grads))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        tol = slack(g)
        assert norm64(u) <= theta * (1 + tol)
        g64 = np.asarray(g, np.float64)
        expected = g64 * min(1.0, theta / norm64(g)) if norm64(g) > 0 else g64
        np.testing.assert_allclose(
            np.asarray(u, np.float64), expected, rtol=tol, atol=float(jnp.finfo(g.dtype).tiny)
        )


@given(problem=problems(steps=1), theta=THRESHOLDS)
def test_clip_by_global_norm_bounds_the_norm_and_only_rescales(problem, theta):
    tx = jt.clip_by_global_norm(theta)
    grads = to_jax(problem.grads[0])
    updates, _ = tx.update(grads, tx.init(grads))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    tol = slack(grads)
    norm = norm64(grads)
    assert norm64(updates) <= theta * (1 + tol)
    if norm < theta * (1 - tol):
        chex.assert_trees_all_equal(updates, grads)
    factor = min(1.0, theta / norm) if norm > 0 else 1.0
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(
            np.asarray(u, np.float64),
            np.asarray(g, np.float64) * factor,
            rtol=tol,
            atol=float(jnp.finfo(g.dtype).tiny),
        )


@given(problem=problems(steps=1))
def test_normalize_by_global_norm_gives_unit_norm_up_to_eps(problem):
    eps = 1e-6
    tx = jt.normalize_by_global_norm(eps)
    grads = to_jax(problem.grads[0])
    updates, _ = tx.update(grads, tx.init(grads))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    norm = norm64(grads)
    if norm == 0:
        chex.assert_trees_all_equal(updates, grads)
        return
    # ‖u‖ = ‖g‖ / (‖g‖ + ε): 1 up to ε / ‖g‖, and never above 1.
    assert norm64(updates) <= 1 + slack(grads)
    np.testing.assert_allclose(norm64(updates), norm / (norm + eps), rtol=slack(grads))
