"""Tests for jaxtricks.tricks.tree: global norm, finiteness, structure checks, ``like``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import scale_by_adagrad, scale_by_adam, scale_by_rms
from jaxtricks.tricks.nonfinite import skip_nonfinite
from jaxtricks.tricks.tree import (
    abs_sq,
    all_finite,
    check_inexact_leaves,
    check_same_structure,
    global_norm,
    like,
)
from jaxtricks.tricks.velocity import scale_by_momentum, scale_by_velocity
from jaxtricks.tricks.weight_decay import add_decayed_weights


def _numpy_norm(tree):
    leaves = [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)]
    return np.sqrt(sum(np.sum(leaf**2) for leaf in leaves))


def _mixed_tree(dtype):
    rng = np.random.default_rng(0)
    return {
        "scalar": jnp.asarray(rng.standard_normal(()), dtype),
        "vector": jnp.asarray(rng.standard_normal(5), dtype),
        "nested": [jnp.asarray(rng.standard_normal((2, 3, 4)), dtype), None],
        "empty": jnp.zeros((0, 3), dtype),
        "frozen": None,
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_global_norm_equals_numpy_on_mixed_shapes(dtype):
    tree = _mixed_tree(dtype)
    norm = global_norm(tree, at_least_float32=True)
    assert norm.shape == ()
    assert norm.dtype == jnp.float32
    # The reference is exact in float64 over the very values held in ``dtype``.
    np.testing.assert_allclose(float(norm), _numpy_norm(tree), rtol=1e-6)
    # Optax's dtype: the float32 sum, rounded once.
    rounded = global_norm(tree)
    assert rounded.dtype == dtype
    assert float(rounded) == float(norm.astype(dtype))


@pytest.mark.parametrize(
    "tree",
    [
        {"a": jnp.array([3.0, 4.0], jnp.bfloat16)},
        {"a": jnp.array([3.0], jnp.bfloat16), "b": jnp.array([4.0], jnp.float16)},
        {"a": jnp.array([3.0]), "z": jnp.array([1 + 2j], jnp.complex64)},
    ],
    ids=["bfloat16", "bfloat16_float16", "float32_complex64"],
)
def test_global_norm_has_optaxs_dtype_and_value(tree):
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.tree.norm(tree)
    ours = global_norm(tree)
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-2)


def test_global_norm_squares_bfloat16_in_float32():
    # (1 + 2⁻⁷)² = 1 + 2⁻⁶ + 2⁻¹⁴ rounds to 1 + 2⁻⁶ in bfloat16 (8 significant bits), so
    # squaring in bfloat16 would give a norm 3e-5 too small.
    tree = {"a": jnp.full((1000,), 1 + 2**-7, jnp.bfloat16)}
    expected = np.sqrt(1000 * (1 + 2**-7) ** 2)
    np.testing.assert_allclose(float(global_norm(tree, at_least_float32=True)), expected, rtol=1e-6)


def test_global_norm_does_not_overflow_float16():
    # 300² = 90000 is past float16's largest finite value, 65504.
    tree = [jnp.array([300.0, 400.0], jnp.float16)]
    assert float(global_norm(tree)) == 500.0


def test_global_norm_of_nothing_is_zero():
    for tree in ({}, [None, None], {"empty": jnp.zeros((0,))}):
        norm = global_norm(tree)
        assert norm.dtype == jnp.float32
        assert float(norm) == 0.0


def test_global_norm_keeps_float64():
    with jax.enable_x64(True):
        tree = {"a": jnp.array([3.0], jnp.float64), "b": jnp.array([4.0], jnp.bfloat16)}
        norm = global_norm(tree)
        assert norm.dtype == jnp.float64
        assert float(norm) == 5.0


def test_global_norm_under_jit_equals_eager():
    tree = _mixed_tree(jnp.float32)
    np.testing.assert_allclose(float(jax.jit(global_norm)(tree)), float(global_norm(tree)), 1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_all_finite_spots_one_bad_element_anywhere(bad, dtype):
    tree = _mixed_tree(dtype)
    assert bool(all_finite(tree))
    tree["nested"][0] = tree["nested"][0].at[1, 2, 3].set(bad)
    result = all_finite(tree)
    assert result.dtype == jnp.bool_ and result.shape == ()
    assert not bool(result)


def test_all_finite_of_nothing_is_true_and_works_under_jit():
    assert bool(all_finite({}))
    assert bool(all_finite([None]))
    jitted = jax.jit(all_finite)
    assert bool(jitted({"a": jnp.ones(3)}))
    assert not bool(jitted({"a": jnp.array([1.0, np.nan, 0.0])}))


def test_check_same_structure_accepts_equal_trees():
    tree = {"a": jnp.ones((2, 3)), "b": [jnp.ones(4), None]}
    other = jax.tree.map(lambda x: x * 2, tree)
    assert check_same_structure("updates", tree, "params", other) is None


def test_check_same_structure_names_both_trees_on_structure_mismatch():
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"^grads and params have different pytree structures"):
        check_same_structure("grads", {"a": jnp.ones(3)}, "params", params)
    # a None leaf where the reference holds an array is a structure difference too
    with pytest.raises(ValueError, match=r"^grads and params have different pytree structures"):
        check_same_structure("grads", {"a": jnp.ones(3), "b": None}, "params", params)


def test_check_same_structure_can_take_none_for_a_whole_subtree():
    params = {"a": jnp.ones(3), "b": {"c": jnp.ones(2)}}
    for grads in (None, {"a": jnp.ones(3), "b": None}):
        check_same_structure("grads", grads, "params", params, none_is_prefix=True)
    with pytest.raises(ValueError, match=r"differ in shape at \['a'\]: \(2,\) vs \(3,\)"):
        check_same_structure(
            "grads", {"a": jnp.ones(2), "b": None}, "params", params, none_is_prefix=True
        )
    with pytest.raises(ValueError, match="different pytree structures"):
        check_same_structure("grads", {"a": None}, "params", params, none_is_prefix=True)


def test_check_same_structure_names_both_trees_path_and_shapes_on_shape_mismatch():
    params = {"a": jnp.ones(3), "b": [jnp.ones((2, 2))]}
    grads = {"a": jnp.ones(3), "b": [jnp.ones((2, 3))]}
    with pytest.raises(ValueError) as info:
        check_same_structure("grads", grads, "params", params)
    assert str(info.value) == ("grads and params differ in shape at ['b'][0]: (2, 3) vs (2, 2)")


def test_check_inexact_leaves():
    tree = {"a": jnp.ones(2), "b": jnp.ones(2, jnp.bfloat16), "c": jnp.ones(2, jnp.complex64)}
    assert check_inexact_leaves("params", tree) is None
    for dtype in (jnp.int32, jnp.bool_):
        with pytest.raises(TypeError) as info:
            check_inexact_leaves("params", {"a": jnp.ones(2), "b": [jnp.ones(2, dtype)]})
        assert str(info.value) == (
            "params must hold floating-point (real or complex) arrays, got dtype "
            f"{jnp.dtype(dtype)} at ['b'][0]"
        )


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_global_norm_and_abs_sq_of_complex_leaves(dtype):
    with jax.enable_x64(dtype == jnp.complex128):
        tree = {"z": jnp.array([3 + 4j, 1j], dtype), "x": jnp.array([2.0], jnp.float32)}
        norm = global_norm(tree)
        assert norm.dtype == (jnp.float64 if dtype == jnp.complex128 else jnp.float32)
        np.testing.assert_allclose(float(norm), np.sqrt(25 + 1 + 4), rtol=1e-7)
        squares = abs_sq(tree["z"])
        assert squares.dtype == dtype
        np.testing.assert_array_equal(np.asarray(squares), [25, 1])


def test_like_keeps_python_numbers_weak_and_casts_arrays():
    reference = jnp.ones(2, jnp.bfloat16)
    assert like(0.5, reference) == 0.5 and isinstance(like(0.5, reference), float)
    assert like(2, reference) == 2
    # np.float64 subclasses float but is not weakly typed: it must be cast like an array
    for value in (jnp.asarray(0.5, jnp.float32), np.float64(0.5), np.float32(0.5)):
        cast = like(value, reference)
        assert cast.dtype == jnp.bfloat16
        assert float(cast) == 0.5
    # under strict promotion the result combines with the reference without error
    assert (reference * like(jnp.asarray(3.0), reference)).dtype == jnp.bfloat16


# --- every transform with per-parameter state refuses a mismatched gradient tree -----------

STATEFUL = {
    "scale_by_momentum": (lambda: scale_by_momentum(0.9), "the momentum trace"),
    "scale_by_momentum_nesterov": (
        lambda: scale_by_momentum(0.9, nesterov=True),
        "the momentum trace",
    ),
    "scale_by_velocity": (lambda: scale_by_velocity(0.1), "the velocity"),
    "scale_by_adagrad": (lambda: scale_by_adagrad(), "the Adagrad accumulator"),
    "scale_by_rms": (lambda: scale_by_rms(), "the RMSProp accumulator"),
    "scale_by_rms_centered": (lambda: scale_by_rms(centered=True), "the RMSProp accumulator"),
    "scale_by_rms_bias_correction": (
        lambda: scale_by_rms(bias_correction=True),
        "the RMSProp accumulator",
    ),
    "scale_by_adam": (lambda: scale_by_adam(), "the Adam moments"),
    "add_decayed_weights": (lambda: add_decayed_weights(0.1), "params"),
    "skip_nonfinite_adam": (lambda: skip_nonfinite(scale_by_adam()), "the Adam moments"),
}
PARAMS = {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}
MISMATCHED_GRADS = {
    "missing_leaf": ({"kernel": jnp.ones((2, 3))}, "have different pytree structures"),
    "extra_leaf": (
        {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3), "scale": jnp.ones(())},
        "have different pytree structures",
    ),
    "wrong_shape": (
        {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(3)},
        "differ in shape at ['kernel']: (3, 2) vs (2, 3)",
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHED_GRADS))
@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_transforms_refuse_grads_that_do_not_match_params(name, case):
    build, reference_name = STATEFUL[name]
    grads, problem = MISMATCHED_GRADS[case]
    tx = build()
    state = tx.init(PARAMS)
    with pytest.raises(
        ValueError, match=f"^{re.escape(f'updates and {reference_name} {problem}')}"
    ):
        tx.update(grads, state, PARAMS)

