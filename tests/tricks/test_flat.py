"""Tests for jaxtricks.tricks.flat: per-dtype flat buffers, flatten_by_dtype and flat_params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks import optimizers as opt
from jaxtricks.tricks.clipping import clip_by_global_norm, clip_by_norm
from jaxtricks.tricks.flat import FlatLayout, FlatState, flat_params, flatten_by_dtype
from jaxtricks.tricks.nonfinite import skip_nonfinite

# name -> a factory; every one is flatten-safe. Elementwise ones give the same bits.
ELEMENTWISE = {
    "sgd": lambda: opt.sgd(0.1),
    "momentum": lambda: opt.momentum(0.1, 0.9),
    "nesterov": lambda: opt.nesterov(0.1, 0.9),
    "adagrad": lambda: opt.adagrad(0.1),
    "rmsprop": lambda: opt.rmsprop(0.01),
    "adam": lambda: opt.adam(0.01),
    "adamw": lambda: opt.adamw(0.01, weight_decay=0.1),
}
GLOBAL_NORM = {
    "clip_adamw": lambda: optax.chain(clip_by_global_norm(0.5), opt.adamw(0.01)),
    "normalized_sgd": lambda: opt.normalized_sgd(0.1),
}
ALL = {**ELEMENTWISE, **GLOBAL_NORM}


def _tree(seed, dtype=jnp.float32, half=jnp.bfloat16):
    """Mixed dtypes, a scalar, a zero-size leaf and a None leaf, in nested containers."""
    rng = np.random.default_rng(seed)

    def draw(shape, d):
        return jnp.asarray(rng.standard_normal(shape)).astype(d)

    return {
        "dense": {"kernel": draw((4, 3), dtype), "bias": draw((3,), dtype)},
        "embed": [draw((5, 2), half), draw((7,), half)],
        "scale": draw((), dtype),
        "empty": jnp.zeros((0, 2), dtype),
        "frozen": None,
        "tail": (draw((2, 2, 2), dtype),),
    }


def _run(tx, params, steps, *, jit_each_step=True):
    """``steps`` updates with gradients ``w + noise``; returns the parameters after each."""
    state = tx.init(params)

    def step(params, state, noise):
        grads = jax.tree.map(lambda w, n: w + n, params, noise)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit_each_step else step
    history = []
    for i in range(steps):
        noise = _tree(100 + i, *_dtypes(params))
        params, state = step(params, state, noise)
        history.append(params)
    return history


def _dtypes(params):
    return params["dense"]["kernel"].dtype, params["embed"][0].dtype


def _assert_trees(actual, expected, *, exact, rtol=0.0):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        if exact:
            np.testing.assert_array_equal(a, e)
        else:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALL))
def test_equals_the_unflattened_transform_on_float32_and_bfloat16(name):
    params = _tree(0)
    flat = _run(flatten_by_dtype(ALL[name]()), params, 3)
    plain = _run(ALL[name](), params, 3)
    for f, p in zip(flat, plain, strict=True):
        # bfloat16 leaves: the global-norm factor may round differently in its last float32
        # bit, which can move a bfloat16 result by one unit (2⁻⁸ relative).
        _assert_trees(f, p, exact=False, rtol=1e-5 if name in ELEMENTWISE else 2**-7)
    # the parameters moved, so the comparison is not of the starting point
    assert float(jnp.max(jnp.abs(plain[-1]["dense"]["kernel"] - params["dense"]["kernel"]))) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_transforms_give_the_same_bits_in_float64(name):
    with jax.enable_x64(True):
        params = _tree(0, jnp.float64, jnp.float32)
        flat = _run(flatten_by_dtype(ELEMENTWISE[name]()), params, 3)
        plain = _run(ELEMENTWISE[name](), params, 3)
        for f, p in zip(flat, plain, strict=True):
            _assert_trees(f, p, exact=True)


@pytest.mark.parametrize("name", list(GLOBAL_NORM))
def test_global_norm_transforms_agree_to_rounding_in_float64(name):
    with jax.enable_x64(True):
        params = _tree(0, jnp.float64, jnp.float64)
        flat = _run(flatten_by_dtype(GLOBAL_NORM[name]()), params, 3)
        plain = _run(GLOBAL_NORM[name](), params, 3)
        _assert_trees(flat[-1], plain[-1], exact=False, rtol=1e-13)


def test_per_leaf_clip_by_norm_is_not_flatten_safe():
    # The module docstring says so: per-dtype norms replace per-leaf norms.
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.5])}
    plain, _ = clip_by_norm(1.0).update(grads, clip_by_norm(1.0).init(grads))
    tx = flatten_by_dtype(clip_by_norm(1.0))
    flat, _ = tx.update(grads, tx.init(grads))
    assert float(plain["b"][0]) == 0.5
    assert float(flat["b"][0]) < 0.5


def test_state_holds_one_buffer_per_dtype():
    params = _tree(0)
    state = flatten_by_dtype(opt.adam(0.01)).init(params)
    assert isinstance(state, FlatState)
    adam_state = state.inner_state[0]
    sizes = {"bfloat16": 10 + 7, "float32": 12 + 3 + 1 + 0 + 8}
    for moment in (adam_state.mu, adam_state.nu):
        assert list(moment) == ["bfloat16", "float32"]
        assert {k: v.shape for k, v in moment.items()} == {k: (n,) for k, n in sizes.items()}
        assert {k: v.dtype.name for k, v in moment.items()} == {k: k for k in sizes}
    # the layout is static metadata: the state's leaves are Adam's count and four buffers
    # (the constant learning rate keeps no state, as in Optax)
    assert len(jax.tree.leaves(state)) == 1 + 4


def test_none_and_zero_size_leaves_pass_through_under_jit():
    params = _tree(0)
    tx = flatten_by_dtype(opt.momentum(0.1))
    updates, _ = jax.jit(tx.update)(_tree(1), tx.init(params), params)
    assert updates["frozen"] is None
    assert updates["empty"].shape == (0, 2)
    assert updates["embed"][0].dtype == jnp.bfloat16


def test_jit_compiles_the_step_once():
    params = _tree(0)
    tx = flatten_by_dtype(opt.adam(0.01))

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for seed in range(3):
        params, state = step(params, state, _tree(seed + 1))
    assert step._cache_size() == 1


@pytest.mark.slow
def test_works_inside_chain_and_multi_steps():
    params = _tree(0)
    inner = lambda: optax.chain(opt.adam(0.01), optax.scale(0.5))
    with jax.numpy_dtype_promotion("standard"):
        flat = _run(optax.MultiSteps(flatten_by_dtype(inner()), 2), params, 4)
        plain = _run(optax.MultiSteps(inner(), 2), params, 4)
        chained = _run(optax.chain(optax.scale(2.0), flatten_by_dtype(opt.adam(0.01))), params, 2)
        reference = _run(optax.chain(optax.scale(2.0), opt.adam(0.01)), params, 2)
    for f, p in zip(flat, plain, strict=True):
        _assert_trees(f, p, exact=False, rtol=1e-5)
    _assert_trees(chained[-1], reference[-1], exact=False, rtol=1e-5)
    # MultiSteps applied nothing on odd steps and something on even ones
    _assert_trees(flat[0], params, exact=True)
    assert float(jnp.max(jnp.abs(flat[1]["dense"]["bias"] - params["dense"]["bias"]))) > 1e-3


def test_skip_nonfinite_around_it_skips_a_nan_step():
    params = _tree(0)
    tx = skip_nonfinite(flatten_by_dtype(opt.adam(0.01)))
    state = tx.init(params)
    grads = _tree(1)
    grads["dense"]["bias"] = grads["dense"]["bias"].at[0].set(jnp.nan)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates) if u.size)
    assert int(new_state.total_notfinite) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "scale"}, "pytree structure"),
        (lambda t: {**t, "frozen": jnp.zeros(1)}, "pytree structure"),
        (lambda t: {**t, "scale": jnp.zeros(2)}, r"\['scale'\].*shape \(2,\)"),
        (lambda t: {**t, "scale": t["scale"].astype(jnp.bfloat16)}, "dtype bfloat16"),
    ],
    ids=["missing-leaf", "none-became-array", "shape", "dtype"],
)
def test_mismatched_updates_or_params_raise_value_error(change, match):
    params = _tree(0)
    tx = flatten_by_dtype(opt.adamw(0.01))
    state = tx.init(params)
    with pytest.raises(ValueError, match=match):
        tx.update(change(_tree(1)), state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(_tree(1), state, change(params))


@pytest.mark.slow
def test_flat_params_round_trip_and_flat_gradients():
    params = _tree(0)
    buffers, unflatten = flat_params(params)
    assert sorted(buffers) == ["bfloat16", "float32"]
    _assert_trees(unflatten(buffers), params, exact=True)

    def loss(tree):
        leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
        return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(leaves))

    flat_grads = jax.jit(jax.grad(lambda b: loss(unflatten(b))))(buffers)
    expected = FlatLayout.of(params).flatten(jax.grad(loss)(params))
    for key in buffers:
        np.testing.assert_array_equal(
            np.asarray(flat_grads[key], np.float64), np.asarray(expected[key], np.float64)
        )


@pytest.mark.slow
def test_flat_params_train_like_the_tree():
    params = _tree(0)
    buffers, unflatten = flat_params(params)
    tx = opt.adam(0.01)
    state = tx.init(buffers)
    for seed in range(3):
        tree_grads = jax.tree.map(lambda w, n: w + n, unflatten(buffers), _tree(100 + seed))
        grads = FlatLayout.of(params).flatten(tree_grads)
        updates, state = tx.update(grads, state, buffers)
        buffers = optax.apply_updates(buffers, updates)
    reference = _run(opt.adam(0.01), params, 3, jit_each_step=False)[-1]
    _assert_trees(unflatten(buffers), reference, exact=False, rtol=1e-6)


def test_unflatten_keeps_the_buffer_dtype_and_checks_names_and_sizes():
    params = _tree(0)
    layout = FlatLayout.of(params)
    wide = {k: jnp.zeros(n, jnp.float32) for k, n in layout.buffer_shapes.items()}
    assert layout.unflatten(wide)["embed"][0].dtype == jnp.float32
    with pytest.raises(ValueError, match=r"dict with the buffers \['bfloat16', 'float32'\]"):
        layout.unflatten({"float32": wide["float32"]})
    with pytest.raises(ValueError, match=r"buffers\['float32'\] must have shape \(24,\)"):
        layout.unflatten({**wide, "float32": jnp.zeros(3)})


def test_layout_is_hashable_and_equal_for_equal_trees():
    a, b = FlatLayout.of(_tree(0)), FlatLayout.of(_tree(1))
    assert a == b and hash(a) == hash(b)
    assert a != FlatLayout.of({"x": jnp.zeros(3)})


def test_leaves_larger_than_max_leaf_size_stay_whole():
    params = {**_tree(0), "big": jnp.linspace(-1.0, 1.0, 300).reshape(20, 15)}
    tx = flatten_by_dtype(opt.adam(0.01), max_leaf_size=100)
    state = tx.init(params)
    mu = state.inner_state[0].mu
    assert {k: v.shape for k, v in mu.items()} == {
        "['big']": (20, 15), "bfloat16": (17,), "float32": (24,)
    }
    grads = jax.tree.map(lambda x: x * 2, params)
    flat, _ = tx.update(grads, state, params)
    plain, _ = opt.adam(0.01).update(grads, opt.adam(0.01).init(params), params)
    # float32: XLA:CPU vectorizes a long buffer and a scalar leaf differently (1 ulp seen)
    _assert_trees(flat, plain, exact=False, rtol=1e-6)
    everything = flatten_by_dtype(opt.adam(0.01), max_leaf_size=None).init(params)
    assert everything.inner_state[0].mu["float32"].shape == (324,)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_max_leaf_size_must_be_a_nonnegative_int(bad):
    with pytest.raises(ValueError, match="max_leaf_size must be None or an int >= 0"):
        flatten_by_dtype(opt.sgd(0.1), max_leaf_size=bad)
    with pytest.raises(ValueError, match="max_leaf_size"):
        flat_params(_tree(0), max_leaf_size=bad)


def test_donating_flat_params_leaves_the_original_params_alive():
    params = {"big": jnp.ones((20, 15)), "only": jnp.ones(3, jnp.bfloat16)}
    buffers, _ = flat_params(params, max_leaf_size=100)
    jax.jit(lambda b: jax.tree.map(lambda x: x * 2, b), donate_argnums=0)(buffers)
    assert float(params["big"].sum()) == 300.0 and float(params["only"].sum()) == 3.0
