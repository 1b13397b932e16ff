"""Tests for jaxtricks.tricks.diagnostics: gradient, parameter and update norms per leaf/module."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import scale_by_adam
from jaxtricks.tricks.diagnostics import (
    HEALTH_FIELDS,
    GradientHealthState,
    UpdateHealthState,
    get_health,
    gradient_health,
    update_health,
)
from jaxtricks.tricks.optimizers import adamw, sgd

# Laid out as a Flax ResNet's parameters: a top-level layer, a block of two layers, a head.
SHAPES = {
    "Conv_0": {"kernel": (3, 3, 1, 4), "bias": (4,)},
    "ResidualBlock_0": {
        "Conv_0": {"kernel": (3, 3, 4, 4), "bias": (4,)},
        "Conv_1": {"kernel": (3, 3, 4, 4)},
    },
    "head": {"kernel": (4, 3), "bias": (3,)},
}
MODULES = ["Conv_0", "ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1", "head"]
DEPTH_1 = {
    "Conv_0": ["Conv_0"],
    "ResidualBlock_0": ["ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1"],
    "head": ["head"],
}


def _random_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32),
        SHAPES,
        is_leaf=lambda node: isinstance(node, tuple),
    )


PARAMS = _random_tree(0)
GRADS = _random_tree(1, scale=0.01)


def _leaves_by_module(tree):
    """{module: [leaf as float64 numpy]} by hand, from the literal layout above."""
    return {
        "Conv_0": [tree["Conv_0"]["kernel"], tree["Conv_0"]["bias"]],
        "ResidualBlock_0/Conv_0": [
            tree["ResidualBlock_0"]["Conv_0"]["kernel"],
            tree["ResidualBlock_0"]["Conv_0"]["bias"],
        ],
        "ResidualBlock_0/Conv_1": [tree["ResidualBlock_0"]["Conv_1"]["kernel"]],
        "head": [tree["head"]["kernel"], tree["head"]["bias"]],
    }


def _numpy_norm(arrays):
    return math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays))


def _close(actual, expected, rtol=1e-6):
    np.testing.assert_allclose(float(actual), expected, rtol=rtol)


def test_leaf_and_module_norms_equal_numpy():
    tx = gradient_health()
    _, state = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
    assert isinstance(state, GradientHealthState)
    for norms, tree in ((state.grad_norms, GRADS), (state.param_norms, PARAMS)):
        assert jax.tree.structure(norms) == jax.tree.structure(tree)
        for norm, leaf in zip(jax.tree.leaves(norms), jax.tree.leaves(tree), strict=True):
            assert norm.shape == () and norm.dtype == jnp.float32
            _close(norm, _numpy_norm([leaf]))
    grads, params = _leaves_by_module(GRADS), _leaves_by_module(PARAMS)
    assert sorted(state.module_grad_norms) == MODULES
    for module in MODULES:
        _close(state.module_grad_norms[module], _numpy_norm(grads[module]))
        _close(state.module_param_norms[module], _numpy_norm(params[module]))
        _close(
            state.module_grad_ratios[module],
            _numpy_norm(grads[module]) / _numpy_norm(params[module]),
        )
    _close(state.grad_norm, _numpy_norm(jax.tree.leaves(GRADS)))


def test_depth_groups_by_leading_keys():
    tx = gradient_health(depth=1)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    grads = _leaves_by_module(GRADS)
    assert sorted(state.module_grad_norms) == sorted(DEPTH_1)
    for module, members in DEPTH_1.items():
        expected = _numpy_norm([leaf for member in members for leaf in grads[member]])
        _close(state.module_grad_norms[module], expected)


def test_top_level_leaves_and_a_lone_array_are_modules():
    tx = gradient_health()
    params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])}
    _, state = tx.update(params, tx.init(params), params)
    assert sorted(state.module_grad_norms) == ["b", "w"]
    _close(state.module_grad_norms["w"], 5.0)
    _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.ones(2)), jnp.ones(2))
    assert list(state.module_grad_norms) == [""]


def test_zero_parameter_norm_gives_no_nan_ratio():
    tx = gradient_health()
    params = {"a": {"bias": jnp.zeros(2)}, "b": {"bias": jnp.zeros(2)}}
    grads = {"a": {"bias": jnp.zeros(2)}, "b": {"bias": jnp.ones(2)}}
    _, state = tx.update(grads, tx.init(params), params)
    assert float(state.module_grad_ratios["a"]) == 0.0
    assert float(state.module_grad_ratios["b"]) == math.inf


def test_flags_fire_for_a_tiny_and_a_huge_gradient():
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    grads["Conv_0"] = jax.tree.map(lambda g: 1e-9 * g, grads["Conv_0"])
    grads["head"] = jax.tree.map(lambda g: 1e5 * g, grads["head"])
    tx = gradient_health(vanish_threshold=1e-7, explode_threshold=1e3)
    _, state = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
    flags = {m: (bool(state.vanishing[m]), bool(state.exploding[m])) for m in MODULES}
    assert flags == {
        "Conv_0": (True, False),
        "ResidualBlock_0/Conv_0": (False, False),
        "ResidualBlock_0/Conv_1": (False, False),
        "head": (False, True),
    }


def test_a_nonfinite_gradient_is_exploding():
    tx = gradient_health()
    grads = {**GRADS, "head": {**GRADS["head"], "bias": jnp.array([0.0, jnp.nan, 0.0])}}
    _, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert bool(state.exploding["head"]) and not bool(state.exploding["Conv_0"])


def test_the_thresholds_are_those_given():
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
    norm = _numpy_norm(_leaves_by_module(grads)["head"])

    def flags(**thresholds):
        tx = gradient_health(**thresholds)
        state = tx.update(grads, tx.init(PARAMS), PARAMS)[1]
        return bool(state.vanishing["head"]), bool(state.exploding["head"])

    assert flags(vanish_threshold=1.01 * norm, explode_threshold=10 * norm) == (True, False)
    assert flags(vanish_threshold=0.99 * norm, explode_threshold=1.01 * norm) == (False, False)
    assert flags(vanish_threshold=0.1 * norm, explode_threshold=0.99 * norm) == (False, True)


def test_a_chain_with_both_recorders_trains_exactly_as_without():
    plain = adamw(1e-2, weight_decay=1e-3)
    watched = optax.chain(gradient_health(), adamw(1e-2, weight_decay=1e-3), update_health())
    plain_update, watched_update = jax.jit(plain.update), jax.jit(watched.update)
    params_a = params_b = PARAMS
    state_a, state_b = plain.init(PARAMS), watched.init(PARAMS)
    for seed in range(3):
        grads = _random_tree(10 + seed)
        updates_a, state_a = plain_update(grads, state_a, params_a)
        updates_b, state_b = watched_update(grads, state_b, params_b)
        for a, b in zip(jax.tree.leaves(updates_a), jax.tree.leaves(updates_b), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        params_a = optax.apply_updates(params_a, updates_a)
        params_b = optax.apply_updates(params_b, updates_b)
    final = _leaves_by_module(updates_b)
    before = _leaves_by_module(optax.apply_updates(params_b, jax.tree.map(lambda u: -u, updates_b)))
    for module in MODULES:
        _close(get_health(state_b, "module_update_norms")[module], _numpy_norm(final[module]))
        _close(
            get_health(state_b, "module_update_ratios")[module],
            _numpy_norm(final[module]) / _numpy_norm(before[module]),
            rtol=1e-5,
        )
        _close(get_health(state_b, "module_grad_norms")[module],
               _numpy_norm(_leaves_by_module(grads)[module]))
    _close(get_health(state_b, "update_norm"), _numpy_norm(jax.tree.leaves(updates_b)))
    assert isinstance(state_b[2], UpdateHealthState)


def test_the_update_passes_through_as_the_same_arrays():
    tx = gradient_health()
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    pairs = zip(jax.tree.leaves(updates), jax.tree.leaves(GRADS), strict=True)
    assert all(a is b for a, b in pairs)


def test_low_precision_gradients_are_summed_in_float32():
    grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), GRADS)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
    tx = gradient_health()
    updates, state = tx.update(grads, tx.init(params), params)
    assert jax.tree.leaves(updates)[0].dtype == jnp.bfloat16
    for module, leaves in _leaves_by_module(grads).items():
        norm = state.module_grad_norms[module]
        assert norm.dtype == jnp.float32
        _close(norm, _numpy_norm([np.asarray(leaf, np.float32) for leaf in leaves]), rtol=1e-5)


@pytest.mark.slow
def test_get_health_through_wrappers_and_vmap():
    inner = optax.chain(gradient_health(), scale_by_adam(), update_health())
    tx = optax.inject_hyperparams(lambda rate: optax.chain(inner, sgd(rate)))(rate=0.1)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), GRADS, _random_tree(2, 0.01))
    states = jax.vmap(tx.init)(jax.tree.map(lambda g: jnp.stack([g, g]), PARAMS))
    _, states = jax.vmap(tx.update)(
        stacked, states, jax.tree.map(lambda p: jnp.stack([p, p]), PARAMS)
    )
    norms = get_health(states, "module_grad_norms")
    assert norms["head"].shape == (2,)
    _close(norms["head"][0], _numpy_norm(_leaves_by_module(GRADS)["head"]))


def test_get_health_refuses_unknown_missing_and_ambiguous_fields():
    with pytest.raises(ValueError, match="field must be one of"):
        get_health(gradient_health().init(PARAMS), "grad_norms_typo")
    with pytest.raises(ValueError, match=r"exactly one UpdateHealthState.*found 0"):
        get_health(gradient_health().init(PARAMS), "module_update_norms")
    twice = optax.chain(gradient_health(), gradient_health())
    with pytest.raises(ValueError, match=r"exactly one GradientHealthState.*found 2"):
        get_health(twice.init(PARAMS), "grad_norm")
    assert set(HEALTH_FIELDS) == set(GradientHealthState._fields) | set(
        UpdateHealthState._fields
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vanish_threshold": 0.0}, "vanish_threshold"),
        ({"vanish_threshold": -1e-7}, "vanish_threshold"),
        ({"explode_threshold": math.nan}, "explode_threshold"),
        ({"vanish_threshold": 10.0, "explode_threshold": 1.0}, "explode_threshold must be greater"),
        ({"explode_threshold": lambda count: 1.0}, "explode_threshold must be a number"),
        ({"depth": 0}, "depth"),
        ({"depth": 1.5}, "depth"),
        ({"depth": True}, "depth"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradient_health(**kwargs)


def test_update_needs_params_and_a_matching_tree():
    for tx in (gradient_health(), update_health()):
        with pytest.raises(ValueError, match="needs params"):
            tx.update(GRADS, tx.init(PARAMS))
        with pytest.raises(ValueError, match="updates and params"):
            tx.update({"head": GRADS["head"]}, tx.init(PARAMS), PARAMS)
    with pytest.raises(ValueError, match="depth"):
        update_health(depth=-1)
