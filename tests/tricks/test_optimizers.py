"""Every optimizer against its Optax counterpart, and the suite every optimizer must pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtricks.tricks.optimizers as opt
from jaxtricks.tricks import schedules

LR = 0.01


def _pairs():
    """(name, jaxtricks optimizer, the Optax optimizer that is the same algorithm)."""
    return [
        ("sgd", opt.sgd(LR), optax.sgd(LR)),
        ("momentum", opt.momentum(LR, 0.9), optax.sgd(LR, momentum=0.9)),
        ("nesterov", opt.nesterov(LR, 0.9), optax.sgd(LR, momentum=0.9, nesterov=True)),
        ("adagrad", opt.adagrad(LR), optax.adagrad(LR)),
        ("rmsprop", opt.rmsprop(LR), optax.rmsprop(LR)),
        (
            "rmsprop_centered_momentum",
            opt.rmsprop(LR, centered=True, momentum=0.9, nesterov=True),
            optax.rmsprop(LR, centered=True, momentum=0.9, nesterov=True),
        ),
        (
            "rmsprop_torch_eps",
            opt.rmsprop(LR, eps_in_sqrt=False, initial_scale=1.0),
            optax.rmsprop(LR, eps_in_sqrt=False, initial_scale=1.0),
        ),
        ("adam", opt.adam(LR), optax.adam(LR)),
        (
            "adam_eps_root",
            opt.adam(LR, b1=0.7, eps_root=1e-8),
            optax.adam(LR, b1=0.7, eps_root=1e-8),
        ),
        ("adamw", opt.adamw(LR, weight_decay=0.1), optax.adamw(LR, weight_decay=0.1)),
        (
            "normalized_sgd",
            opt.normalized_sgd(LR, eps=1e-6),
            optax.chain(optax.normalize_by_update_norm(1.0, eps=1e-6), optax.sgd(LR)),
        ),
        (
            "adam_schedule",
            opt.adam(schedules.cosine_decay(LR, 200)),
            optax.adam(optax.cosine_decay_schedule(LR, 200)),
        ),
    ]


PAIRS = _pairs()
IDS = [p[0] for p in PAIRS]
# Schedules return float32, so with a schedule the float64 arithmetic is not the same.
EXACT_PAIRS = [p for p in PAIRS if p[0] != "adam_schedule"]
EXACT_IDS = [p[0] for p in EXACT_PAIRS]
# Same formulas, but XLA fuses Optax's graph and ours differently and the results differ in
# the last bits (measured: 3 ulp for Adam on a multi-leaf tree, where a single leaf gives
# the same bits; centered RMSProp's n − m² cancels and magnifies that to ~200 ulp, 5e-14
# relative). normalized_sgd's global norm is a dot product in jaxtricks and a sum of squares
# in Optax, two summation orders. These are held to a relative 1e-12 instead of bit equality.
ULP_PAIRS = {"adam", "adam_eps_root", "adamw", "rmsprop_centered_momentum", "normalized_sgd"}


def _random_tree(key, dtype):
    """A pytree of mixed shapes: scalar, vector, matrix, conv kernel, nested containers."""
    keys = jax.random.split(key, 5)
    return {
        "conv": {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4), dtype)},
        "dense": [
            jax.random.normal(keys[1], (7, 5), dtype),
            jax.random.normal(keys[2], (5,), dtype),
        ],
        "scale": jax.random.normal(keys[3], (), dtype),
        "pair": (jax.random.normal(keys[4], (11,), dtype),),
    }


@functools.cache
def _noise(steps, dtype):
    """``steps`` random trees stacked along a leading axis, drawn once per dtype.

    NumPy draws them: generating them with ``jax.random`` would cost a compile per dtype.
    """
    rng = np.random.default_rng(42)
    shapes = jax.tree.map(lambda leaf: leaf.shape, _random_tree(jax.random.key(0), jnp.float32))
    return jax.tree.map(
        lambda shape: jnp.asarray(rng.standard_normal((steps, *shape))).astype(dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x),
    )


def _run(tx, params, steps):
    """Applies ``steps`` updates with gradients ∇(½‖w‖²) + noise; returns the params."""

    def step(carry, noise):
        params, state = carry
        grads = jax.tree.map(lambda w, n: w + n, params, noise)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    dtype = jax.tree.leaves(params)[0].dtype
    run = jax.jit(lambda p, xs: jax.lax.scan(step, (p, tx.init(p)), xs)[0][0])
    return run(params, _noise(steps, dtype))


def _reference_run(tx, params, steps):
    """:func:`_run` for an Optax optimizer; Optax needs standard dtype promotion."""
    with jax.numpy_dtype_promotion("standard"):
        return _run(tx, params, steps)


def _max_relative_difference(ours, theirs):
    worst = 0.0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.max(np.abs(b)), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(a - b)) / scale))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=IDS)
def test_matches_optax_float32_over_200_steps(name, ours, theirs, getkey):
    params = _random_tree(getkey(), jnp.float32)
    mine = _run(ours, params, 200)
    reference = _reference_run(theirs, params, 200)
    assert _max_relative_difference(mine, reference) <= 1e-6
    # the runs moved the parameters, so the comparison is not trivially of the start point
    assert _max_relative_difference(mine, params) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(("name", "ours", "theirs"), EXACT_PAIRS, ids=EXACT_IDS)
def test_updates_equal_optax_in_float64(name, ours, theirs, getkey):
    # Both optimizers see the same gradients and parameters at every step (the parameters
    # follow Optax's updates), and each update is compiled on its own: then the same
    # arithmetic must give the same bits. Fused into one larger program, XLA may contract
    # multiply-adds differently for the two graphs; the 200-step test above bounds that.
    with jax.enable_x64(True):
        params = _random_tree(getkey(), jnp.float64)
        noise = _noise(200, jnp.float64)
        mine_update, reference_update = jax.jit(ours.update), jax.jit(theirs.update)
        mine_state = ours.init(params)
        with jax.numpy_dtype_promotion("standard"):
            reference_state = theirs.init(params)
        for i in range(200):
            grads = jax.tree.map(lambda w, n, i=i: w + n[i], params, noise)
            mine, mine_state = mine_update(grads, mine_state, params)
            with jax.numpy_dtype_promotion("standard"):
                reference, reference_state = reference_update(grads, reference_state, params)
            for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(reference), strict=True):
                assert a.dtype == jnp.float64
                if name in ULP_PAIRS:
                    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
                else:
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), f"step {i}")
            params = optax.apply_updates(params, reference)


@pytest.mark.parametrize("name", ["adam", "adam_eps_root", "adamw"])
def test_adaptive_updates_equal_optax_bit_for_bit_on_a_single_leaf(name, getkey):
    ours, theirs = {p[0]: p[1:] for p in PAIRS}[name]
    with jax.enable_x64(True):
        params = jax.random.normal(getkey(), (3, 3, 2, 4), jnp.float64)
        mine_state, reference_state = ours.init(params), theirs.init(params)
        for i in range(20):
            grads = params + jax.random.normal(jax.random.fold_in(getkey(), i), params.shape)
            mine, mine_state = jax.jit(ours.update)(grads, mine_state, params)
            with jax.numpy_dtype_promotion("standard"):
                reference, reference_state = jax.jit(theirs.update)(
                    grads, reference_state, params
                )
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(reference), f"step {i}")
            params = optax.apply_updates(params, reference)


def test_lesson_momentum_equals_heavy_ball_for_constant_learning_rate(getkey):
    params = _random_tree(getkey(), jnp.float32)
    lesson = _run(opt.momentum(LR, 0.9, form="lesson"), params, 100)
    heavy = _run(opt.momentum(LR, 0.9), params, 100)
    assert _max_relative_difference(lesson, heavy) <= 1e-5


def test_lesson_momentum_differs_from_heavy_ball_when_the_learning_rate_changes():
    # Two steps with g = 1, η_1 = 1, η_2 = 0.1, γ = 0.5:
    #   lesson:     v1 = −1,  v2 = 0.5·(−1) − 0.1·1 = −0.6,   w = −1.6
    #   heavy-ball: v1 = 1,   v2 = 1 + 0.5·1 = 1.5,  w = −1·1 − 0.1·1.5 = −1.15
    schedule = lambda count: jnp.where(count == 0, 1.0, 0.1)
    results = {}
    for form in ("lesson", "heavy_ball"):
        tx = opt.momentum(schedule, 0.5, form=form)
        w = jnp.zeros(1)
        state = tx.init(w)
        for _ in range(2):
            u, state = tx.update(jnp.ones(1), state, w)
            w = optax.apply_updates(w, u)
        results[form] = float(w[0])
    assert results["lesson"] == pytest.approx(-1.6, rel=1e-6)
    assert results["heavy_ball"] == pytest.approx(-1.15, rel=1e-6)


def test_get_builds_by_name_and_refuses_unknown_names():
    tx = opt.get("adam", 1e-3, b1=0.8)
    assert isinstance(tx, optax.GradientTransformation)
    with pytest.raises(ValueError, match="name"):
        opt.get("adamax", 1e-3)


# --- the suite every optimizer passes -----------------------------------------------------

SUITE = {
    "sgd": lambda lr: opt.sgd(lr),
    "momentum": lambda lr: opt.momentum(lr, 0.9),
    "momentum_lesson": lambda lr: opt.momentum(lr, 0.9, form="lesson"),
    "nesterov": lambda lr: opt.nesterov(lr, 0.9),
    "adagrad": lambda lr: opt.adagrad(lr * 10),
    "rmsprop": lambda lr: opt.rmsprop(lr),
    "adam": lambda lr: opt.adam(lr),
    "adamw": lambda lr: opt.adamw(lr, weight_decay=1e-6),
    "normalized_sgd": lambda lr: opt.normalized_sgd(lr),
}

# learning rates (quadratic, Rosenbrock) at which each reaches the optimum in the step budget
RATES = {
    "sgd": (0.1, 1e-3),
    "momentum": (0.05, 1e-4),
    "momentum_lesson": (0.05, 1e-4),
    "nesterov": (0.05, 1e-4),
    "adagrad": (0.1, 0.05),
    "rmsprop": (0.01, 1e-3),
    "adam": (0.05, 0.01),
    "adamw": (0.05, 0.01),
    "normalized_sgd": (0.01, 1e-3),
}


def _minimize(tx, loss, w, steps):
    state = tx.init(w)

    @jax.jit
    def step(w, state):
        updates, state = tx.update(jax.grad(loss)(w), state, w)
        return optax.apply_updates(w, updates), state

    for _ in range(steps):
        w, state = step(w, state)
    return w


@pytest.mark.parametrize("name", list(SUITE))
def test_converges_on_a_quadratic(name):
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda w: 0.5 * jnp.sum(jnp.square(w - target) * jnp.array([1.0, 2.0, 4.0]))
    w = _minimize(SUITE[name](RATES[name][0]), loss, jnp.zeros(3), 2000)
    np.testing.assert_allclose(w, target, atol=2e-2)


@pytest.mark.parametrize("name", list(SUITE))
def test_converges_on_rosenbrock(name):
    loss = lambda w: (1.0 - w[0]) ** 2 + 100.0 * (w[1] - w[0] ** 2) ** 2
    w = _minimize(SUITE[name](RATES[name][1]), loss, jnp.array([-1.0, 1.0]), 20000)
    np.testing.assert_allclose(w, jnp.array([1.0, 1.0]), atol=5e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUITE))
def test_jit_equals_eager_and_second_call_does_not_recompile(name, getkey):
    tx = SUITE[name](0.01)
    params = _random_tree(getkey(), jnp.float32)
    grads = _random_tree(getkey(), jnp.float32)
    state = tx.init(params)
    eager_updates, eager_state = tx.update(grads, state, params)
    traces = []

    def update(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    jitted = jax.jit(update)
    jit_updates, jit_state = jitted(grads, state, params)
    jitted(grads, jit_state, params)
    assert len(traces) == 1, "the second call recompiled"
    for a, b in zip(
        jax.tree.leaves((eager_updates, eager_state)), jax.tree.leaves((jit_updates, jit_state)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", list(SUITE))
def test_update_dtype_equals_gradient_dtype(name, dtype, getkey):
    tx = SUITE[name](0.01)
    params = _random_tree(getkey(), dtype)
    grads = _random_tree(getkey(), dtype)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True):
        assert u.dtype == g.dtype
        assert u.shape == g.shape


@pytest.mark.parametrize("name", list(SUITE))
def test_none_and_zero_size_leaves_pass(name, getkey):
    tx = SUITE[name](0.01)
    params = {"w": jax.random.normal(getkey(), (3,)), "empty": jnp.zeros((0, 4)), "frozen": None}
    grads = {"w": jnp.ones(3), "empty": jnp.zeros((0, 4)), "frozen": None}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert updates["frozen"] is None
    assert updates["empty"].shape == (0, 4)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert bool(jnp.any(updates["w"] != 0))


@pytest.mark.parametrize("name", list(SUITE))
def test_state_shapes_stable_under_lax_cond(name, getkey):
    tx = SUITE[name](0.01)
    params = _random_tree(getkey(), jnp.float32)
    grads = _random_tree(getkey(), jnp.float32)
    state = tx.init(params)

    @jax.jit
    def maybe_update(flag, state):
        return jax.lax.cond(
            flag, lambda s: tx.update(grads, s, params)[1], lambda s: s, state
        )

    new_state = maybe_update(True, state)
    same_state = maybe_update(False, state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    for a, b in zip(jax.tree.leaves(same_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
