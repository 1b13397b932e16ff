"""jaxtricks.testing's checks: each passes a correct object and names the property a broken one
breaks (the leaf too, where the failure is about one array)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtricks as jt
from jaxtricks.testing import (
    SCHEDULE_CHECKS,
    assert_trees_close,
    check_initializer,
    check_schedule,
    check_transform,
    default_ulps,
    run_transform,
    tolerance,
)

PARAMS = {
    "w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3),
    "b": np.array([0.5, -0.25, 2.0], jnp.bfloat16),
    "z": np.array([1 - 2j, 0.5j], np.complex64),
    "empty": np.zeros((0, 2), np.float16),
    "none": None,
}
GRADS = [jax.tree.map(lambda p, s=s: (p * s + s).astype(p.dtype), PARAMS) for s in (1, -2, 3)]


def stateless(update_leaf):
    """A transform applying ``update_leaf`` to every gradient leaf, with no state."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(update_leaf, updates), state),
    )


def with_state(init, update):
    return optax.GradientTransformation(init, update)


# --- transforms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tx",
    [jt.adam(0.1, eps=1e-4), jt.sgd(0.1, momentum=0.9), jt.clip_by_global_norm(1.0)],
    ids=["adam", "sgd_momentum", "clip_by_global_norm"],
)
@pytest.mark.slow
def test_a_correct_transform_passes_every_check(tx):
    check_transform(tx, PARAMS, GRADS)


def test_a_reference_transform_that_agrees_passes():
    params = {"w": PARAMS["w"], "b": PARAMS["b"]}
    grads = [{"w": g["w"], "b": g["b"]} for g in GRADS]
    check_transform(jt.adam(0.01), params, grads, reference=optax.adam(0.01))


def test_a_dtype_change_names_the_property_and_the_leaf():
    tx = stateless(lambda g: g.astype(jnp.float32) if g.dtype == jnp.bfloat16 else g)
    with pytest.raises(AssertionError, match=r"property 'dtypes' failed \(step 0\).*leaves 'b'"):
        check_transform(tx, PARAMS, GRADS, checks=["dtypes"])


def test_a_state_whose_dtype_drifts_fails_the_state_check():
    tx = with_state(
        lambda params: jnp.zeros((), jnp.int32),
        lambda updates, count, params=None: (updates, (count + 1).astype(jnp.float32)),
    )
    check_transform(tx, PARAMS, GRADS, checks=["dtypes", "finite"])
    with pytest.raises(AssertionError, match=r"property 'state' failed \(after step 0"):
        check_transform(tx, PARAMS, GRADS, checks=["state"])


def test_an_infinite_update_names_the_leaf():
    tx = stateless(lambda g: g / jnp.zeros((), g.dtype))
    with pytest.raises(AssertionError, match=r"property 'finite' failed.*leaf \['b'\]"):
        check_transform(tx, PARAMS, GRADS, checks=["finite"])


def test_an_infinite_sentinel_in_init_s_state_passes_and_a_state_turning_infinite_fails():
    # A best-so-far metric starts at +inf and stays there until a finite value arrives.
    def tx(update_best):
        return with_state(
            lambda params: (jnp.float32(jnp.inf), jnp.float32(1)),
            lambda updates, state, params=None: (updates, update_best(*state)),
        )

    check_transform(tx(lambda best, scale: (best, scale * 0.5)), PARAMS, GRADS)
    with pytest.raises(AssertionError, match=r"property 'finite' failed \(state after step 0"):
        check_transform(tx(lambda best, scale: (best, scale / 0)), PARAMS, GRADS,
                        checks=["finite"])
    nan_at_init = with_state(lambda params: jnp.float32(jnp.nan),
                             lambda updates, state, params=None: (updates, state))
    with pytest.raises(AssertionError, match=r"property 'finite' failed \(init's state\).*NaN"):
        check_transform(nan_at_init, PARAMS, GRADS, checks=["finite"])


def scale_by_value():
    """Updates times the ``value`` keyword of ``update`` (as a loss reaches reduce_on_plateau)."""
    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None, *, value: (
            jax.tree.map(lambda g: g * jnp.asarray(value, g.dtype), updates), state
        ),
    )


def test_extra_args_reach_every_update_call_eager_jitted_batched_and_the_reference_s():
    value = jnp.float32(2)
    check_transform(scale_by_value(), PARAMS, GRADS, extra_args={"value": value},
                    reference=optax.scale(2.0))
    with pytest.raises(AssertionError, match=r"property 'reference' failed \(step 0\)"):
        check_transform(scale_by_value(), PARAMS, GRADS, extra_args={"value": value},
                        reference=optax.scale(3.0), checks=["reference"])
    with pytest.raises(TypeError, match="value"):
        check_transform(scale_by_value(), PARAMS, GRADS, checks=["dtypes"])
    run = run_transform(scale_by_value(), PARAMS, GRADS, extra_args={"value": value})
    np.testing.assert_array_equal(run.updates[0]["w"], 2 * GRADS[0]["w"])


def test_an_update_that_differs_under_jit_fails_the_jit_check():
    tx = stateless(lambda g: g * 2 if isinstance(g, jax.core.Tracer) else g)
    check_transform(tx, PARAMS, GRADS, checks=["dtypes", "state", "finite", "vmap"])
    with pytest.raises(AssertionError, match=r"property 'jit' failed \(step 0, updates\)"):
        check_transform(tx, PARAMS, GRADS, checks=["jit"])


def test_a_state_that_turns_strong_after_the_first_step_fails_the_retrace_check():
    # init returns a weakly typed float, update a strongly typed one: same shape and dtype,
    # so the state check passes, but jit compiles the update a second time.
    tx = with_state(
        lambda params: jnp.asarray(0.0),
        lambda updates, total, params=None: (updates, total + jnp.float32(1)),
    )
    check_transform(tx, PARAMS, GRADS, checks=["state", "jit"])
    with pytest.raises(AssertionError, match=r"property 'retrace' failed \(step 1\)"):
        check_transform(tx, PARAMS, GRADS, checks=["retrace"])


def test_a_callback_that_sees_the_whole_batch_fails_the_vmap_check():
    # A host callback batched by passing it the whole batch normalizes across problems.
    def normalize(x):
        return (x / np.max(np.abs(x))).astype(x.dtype)

    tx = stateless(
        lambda g: jax.pure_callback(normalize, g, g, vmap_method="broadcast_all")
    )
    params, grads = {"w": PARAMS["w"]}, [{"w": g["w"]} for g in GRADS]
    check_transform(tx, params, grads, checks=["dtypes", "jit"])
    with pytest.raises(AssertionError, match=r"property 'vmap' failed \(step 0, problem 0"):
        check_transform(tx, params, grads, checks=["vmap"])


def test_a_transform_counting_leaves_fails_the_empty_leaves_check():
    def update(updates, state, params=None):
        n = len(jax.tree.leaves(updates))
        return jax.tree.map(lambda g: g / n, updates), state

    tx = optax.GradientTransformation(lambda params: optax.EmptyState(), update)
    check_transform(tx, PARAMS, GRADS, checks=["dtypes", "jit", "vmap"])
    with pytest.raises(AssertionError, match=r"property 'empty_leaves' failed \(step 0\)"):
        check_transform(tx, PARAMS, GRADS, checks=["empty_leaves"])


def test_a_transform_that_fills_none_leaves_fails_the_empty_leaves_check():
    tx = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda g: jnp.zeros(0) if g is None else g, updates,
                         is_leaf=lambda x: x is None),
            state,
        ),
    )
    params, grads = {"w": PARAMS["w"]}, [{"w": g["w"]} for g in GRADS]
    check_transform(tx, params, grads, checks=["dtypes", "jit", "vmap"])
    with pytest.raises(AssertionError, match="property 'empty_leaves' failed"):
        check_transform(tx, params, grads, checks=["empty_leaves"])


def test_a_different_reference_fails_the_reference_check():
    with pytest.raises(AssertionError, match=r"property 'reference' failed \(step 0\)"):
        check_transform(jt.sgd(0.1), PARAMS, GRADS, reference=jt.sgd(0.2))


def test_batched_problems_are_checked_one_by_one_and_mapped_over():
    batch = {"w": np.stack([PARAMS["w"], -PARAMS["w"]])}
    grads = [{"w": np.stack([g["w"], 2 * g["w"]])} for g in GRADS]
    check_transform(jt.adam(0.1), batch, grads, batched=True)
    broken = stateless(lambda g: g.astype(jnp.float16))
    with pytest.raises(AssertionError, match="problem 0 of the batch: property 'dtypes'"):
        check_transform(broken, batch, grads, batched=True, checks=["dtypes"])
    with pytest.raises(ValueError, match="batched=True"):
        check_transform(jt.sgd(0.1), PARAMS, GRADS, batched=True)


def test_a_tree_without_arrays_passes_every_check():
    # Hypothesis' problems() draws such trees ([None], {}): vmap has nothing to map over.
    for tree in ({"none": None}, [], ((), {})):
        check_transform(jt.adam(0.1), tree, [tree, tree])


def test_bad_arguments_are_value_errors_naming_them():
    with pytest.raises(ValueError, match=r"checks: unknown checks \['jitt'\]"):
        check_transform(jt.sgd(0.1), PARAMS, GRADS, checks=["jitt"])
    with pytest.raises(ValueError, match="checks: expected a collection"):
        check_transform(jt.sgd(0.1), PARAMS, GRADS, checks="jit")
    with pytest.raises(ValueError, match="checks: 'reference' needs a reference"):
        check_transform(jt.sgd(0.1), PARAMS, GRADS, checks=["reference"])
    with pytest.raises(ValueError, match="grads: expected a gradient"):
        check_transform(jt.sgd(0.1), PARAMS, [])


def test_run_transform_steps_the_parameters_with_the_updates():
    run = run_transform(jt.sgd(0.5, momentum=0.5), PARAMS, GRADS)
    assert len(run.params) == len(run.states) == 4 and len(run.updates) == 3
    w = PARAMS["w"]
    for k in range(len(GRADS)):
        assert isinstance(run.params[k + 1]["w"], jax.Array)
        w = w + np.asarray(run.updates[k]["w"])
        np.testing.assert_allclose(run.params[k + 1]["w"], w, rtol=1e-6)
        assert run.params[k + 1]["none"] is None
    # heavy ball: v1 = g1, v2 = g2 + 0.5·v1, u = −0.5·v
    expected = -0.5 * (GRADS[1]["w"] + 0.5 * GRADS[0]["w"])
    np.testing.assert_allclose(run.updates[1]["w"], expected, rtol=1e-6)


# --- tolerances -------------------------------------------------------------------------------


def test_default_tolerance_is_two_units_of_16_bit_floats_and_16_of_wider_ones():
    assert [default_ulps(d) for d in (jnp.bfloat16, jnp.float16)] == [2, 2]
    assert [default_ulps(d) for d in (jnp.float32, jnp.float64, jnp.complex64)] == [16, 16, 16]
    assert tolerance(jnp.float32, 2.0) == 16 * (2**-23 * 2.0 + 2.0**-126)
    assert tolerance(jnp.float16, 0.0, ulps=3) == 3 * 2.0**-14


def test_assert_trees_close_allows_the_dtype_s_default_and_no_more():
    one = np.ones(3, jnp.bfloat16)
    two_units_up = one + np.asarray(2 * 2**-7, jnp.bfloat16)
    assert_trees_close({"b": two_units_up}, {"b": one})
    with pytest.raises(AssertionError, match=r"leaf \['b'\]"):
        assert_trees_close({"b": two_units_up}, {"b": one}, ulps=1)
    three_units_up = one + np.asarray(4 * 2**-7, jnp.bfloat16)
    with pytest.raises(AssertionError):
        assert_trees_close({"b": three_units_up}, {"b": one})


def test_assert_trees_close_scales_with_the_inputs_and_compares_the_rest_exactly():
    # A result of 1e-3 from terms of size 100: its rounding error is 100's, not 1e-3's.
    actual, expected = np.float32(1e-3 + 200 * 2**-23), np.float32(1e-3)
    with pytest.raises(AssertionError):
        assert_trees_close(actual, expected)
    assert_trees_close(actual, expected, inputs=(np.float32(100.0),))
    assert_trees_close(actual, expected, floor=100.0)
    with pytest.raises(AssertionError):
        assert_trees_close((np.int32(1), actual), (np.int32(2), expected), floor=100.0)
    keys = jax.random.split(jax.random.key(0))
    assert_trees_close(keys[0], keys[0])
    with pytest.raises(AssertionError):
        assert_trees_close(keys[0], keys[1])
    with pytest.raises(AssertionError):
        assert_trees_close(np.float32(1.0), np.float16(1.0))


# --- initializers and schedules ---------------------------------------------------------------


def test_a_correct_initializer_passes_every_check():
    check_initializer(jt.orthogonal(), jax.random.key(1), (3, 4), jnp.complex64)
    check_initializer(jt.initializers.get("zeros"), jax.random.key(1), (3, 4), jnp.float32,
                      random=False)


@pytest.mark.parametrize(
    ("initializer", "failing", "passing"),
    [
        (lambda key, shape, dtype: jnp.ones((*shape, 1), dtype), "shape", ["dtype", "finite"]),
        (lambda key, shape, dtype: jax.random.normal(key, shape, jnp.float16), "dtype",
         ["shape", "finite", "deterministic", "random", "jit"]),
        (lambda key, shape, dtype: jnp.full(shape, jnp.inf, dtype), "finite",
         ["shape", "dtype", "deterministic"]),
        (lambda key, shape, dtype: jnp.asarray(np.random.default_rng().normal(size=shape), dtype),
         "deterministic", ["shape", "dtype", "finite", "random"]),
        (lambda key, shape, dtype: jax.random.normal(jax.random.key(0), shape, dtype), "random",
         ["shape", "dtype", "finite", "deterministic", "jit"]),
        (lambda key, shape, dtype: jax.random.normal(key, shape, dtype)
         * (2 if isinstance(key, jax.core.Tracer) else 1), "jit",
         ["shape", "dtype", "finite", "deterministic", "random"]),
    ],
    ids=["shape", "dtype", "finite", "deterministic", "random", "jit"],
)
def test_a_broken_initializer_fails_the_property_it_breaks(initializer, failing, passing):
    check_initializer(initializer, jax.random.key(2), (3, 4), jnp.float32, checks=passing)
    with pytest.raises(AssertionError, match=f"property '{failing}' failed"):
        check_initializer(initializer, jax.random.key(2), (3, 4), jnp.float32, checks=[failing])


@pytest.mark.parametrize(
    ("schedule", "failing"),
    [
        (lambda count: jnp.full((1,), 0.1, jnp.float32), "scalar"),
        (lambda count: jnp.asarray(0.1, jnp.float16), "scalar"),
        (lambda count: jnp.float32(1) / jnp.asarray(count, jnp.float32), "finite"),
        (lambda count: jnp.float32(-0.1), "nonnegative"),
        (lambda count: jnp.float32(0.2 if isinstance(count, jax.core.Tracer) else 0.1), "jit"),
    ],
    ids=["shape", "dtype", "finite", "nonnegative", "jit"],
)
def test_a_broken_schedule_fails_the_property_it_breaks(schedule, failing):
    counts = [jnp.int32(0), 5] if failing == "finite" else [5, 7]
    others = [c for c in SCHEDULE_CHECKS if c not in (failing, "vmap")]
    if failing not in ("scalar", "finite"):
        check_schedule(schedule, counts, checks=others)
    with pytest.raises(AssertionError, match=f"property '{failing}' failed"):
        check_schedule(schedule, counts, checks=[failing])


def test_a_schedule_that_sees_the_whole_batch_fails_the_vmap_check():
    # A host callback batched by passing it the whole batch: the value depends on its size.
    def rate(count):
        return np.full(np.shape(count), 0.1 * np.size(count), np.float32)

    def schedule(count):
        shape = jax.ShapeDtypeStruct((), jnp.float32)
        return jax.pure_callback(rate, shape, count, vmap_method="broadcast_all")

    check_schedule(schedule, [0, 5], checks=["scalar", "finite", "nonnegative", "jit"])
    with pytest.raises(AssertionError, match=r"property 'vmap' failed \(count 0\)"):
        check_schedule(schedule, [0, 5], checks=["vmap"])


def test_a_correct_schedule_passes_every_check():
    check_schedule(jt.one_cycle(100, 1.0), [0, 10, 30, 99, 100, 2**31 - 1])


# --- packaging --------------------------------------------------------------------------------


def test_import_jaxtricks_loads_neither_the_testing_package_nor_hypothesis():
    code = (
        "import sys, jaxtricks as jt; "
        "assert 'jaxtricks.testing' not in sys.modules and 'hypothesis' not in sys.modules; "
        "jt.testing.check_transform; assert 'hypothesis' not in sys.modules; "
        "jt.testing.problems; assert 'hypothesis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_hypothesis_the_checks_work_and_the_strategies_say_what_to_install():
    code = (
        "import sys; sys.modules['hypothesis'] = None; "
        "import jax.numpy as jnp, jaxtricks as jt\n"
        "from jaxtricks.testing import check_transform\n"
        "check_transform(jt.sgd(0.1), jnp.ones(2), [jnp.ones(2)] * 2, checks=['dtypes'])\n"
        "try:\n"
        "    from jaxtricks.testing import problems\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True
    )
    assert 'pip install "jaxtricks[testing]"' in result.stdout
