"""NaN and Inf gradients injected mid-training: a CNN with batch norm and Adam survives them.

The data are MNIST-shaped, (N, 28, 28, 1) float32 images made up from ten fixed patterns plus
noise, so the network learns fast. A step is poisoned in two ways:

- through the input: one pixel of one image set to NaN, +Inf, -Inf or 3e38 (which overflows in
  the batch-norm variance);
- through the gradient alone: a loss scale of 2^128, beyond float32's range (as an over-grown
  dynamic loss scale in mixed-precision training), makes the backward pass Inf while the forward
  pass, the loss and the batch statistics stay finite.

Two guards are checked. (a) The train step's ``skip_nonfinite=True`` (also through ``fit``):
parameters, Adam's moments and the batch statistics come out bit-identical, ``skipped`` counts
the step and the loss goes on falling; ``skip_nonfinite="strict"`` skips the same steps and
also those whose optimizer makes a NaN or Inf from finite gradients. (b) The optimizer wrapper
``jt.skip_nonfinite(jt.adam)`` with the train step's own check off: parameters and moments
are untouched and ``opt_state.total_notfinite`` counts; it sees only gradients, so a NaN
*input* still poisons the batch statistics, which is what the train step's check is for.
"""


import contextlib
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.dynamic_scale import DynamicScale

import jaxtricks as jt
from jaxtricks.backend import PLAIN, use_speed_paths
from jaxtricks.models import CNN
from jaxtricks.training import create_train_state, epoch_indices, fit, make_train_step
from jaxtricks.training.precision import Precision
from jaxtricks.tricks.plateau import epoch_plateau, plateau_states, scale_by_plateau

BATCH = 32
LEARNING_RATE = 3e-3
# log2 of a loss scale that float32 cannot hold: 2^128 rounds to Inf, and so does every gradient.
OVERFLOWING_LOG2_LOSS_SCALE = 128.0


@jax.custom_vjp
def _scale_cotangent(logits, scale):
    return logits


def _scale_cotangent_fwd(logits, scale):
    return logits, scale


def _scale_cotangent_bwd(scale, cotangent):
    return cotangent * scale.astype(cotangent.dtype), jnp.zeros_like(scale)


_scale_cotangent.defvjp(_scale_cotangent_fwd, _scale_cotangent_bwd)


class LossScaledCNN(CNN):
    """The jaxtricks CNN whose gradients are multiplied by a loss scale S = 2^k.

    The forward pass is the CNN's; the backward pass multiplies the logits' cotangent by S, so
    every gradient is S times the CNN's, as when the loss is scaled by S. k lives in the
    ``batch_stats`` collection (dynamic loss scaling keeps its scale in the training state), so
    one compiled step serves every k; with k = 0 this is the plain CNN.
    """

    @nn.compact
    def __call__(self, x, train):
        log2_scale = self.variable(
            "batch_stats", "log2_loss_scale", lambda: jnp.zeros((), jnp.float32)
        )
        return _scale_cotangent(super().__call__(x, train), jnp.exp2(log2_scale.value))


MODEL = LossScaledCNN(features=(4,), hidden=16, use_batch_norm=True)
ADAM = jt.adam(LEARNING_RATE)
GUARDED_ADAM = jt.skip_nonfinite(jt.adam(LEARNING_RATE))

_PATTERNS = np.random.default_rng(1234).normal(size=(10, 28, 28, 1))


def mnist_shaped(seed, num_examples):
    """Float32 images (N, 28, 28, 1) whose class is a fixed pattern plus noise, int32 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    images = _PATTERNS[labels] + rng.normal(size=(num_examples, 28, 28, 1))
    return images.astype(np.float32), labels


IMAGES, LABELS = mnist_shaped(seed=0, num_examples=8 * BATCH)


def batch(step):
    start = (step * BATCH) % len(IMAGES)
    return IMAGES[start : start + BATCH].copy(), LABELS[start : start + BATCH]


def with_pixel(value):
    """A poison: the batch with pixel (5, 7) of its fourth image set to ``value``."""

    def poison(state, images):
        images[3, 5, 7, 0] = value
        return state, images

    return poison


def with_loss_scale(log2_scale):
    """A poison: the state with loss scale ``2^log2_scale`` (images untouched)."""

    def poison(state, images):
        stats = {**state.model_state["batch_stats"],
                 "log2_loss_scale": jnp.asarray(log2_scale, jnp.float32)}
        return state._replace(model_state={**state.model_state, "batch_stats": stats}), images

    return poison


def reset_loss_scale(state):
    return with_loss_scale(0.0)(state, None)[0]


def snapshot(tree):
    """A host copy, safe from the train step's donation of its input state."""

    def copy(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.array(leaf)

    return jax.tree.map(copy, tree)


def assert_bit_identical(actual, expected):
    actual, expected = snapshot(actual), snapshot(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


def all_finite(tree):
    return all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(snapshot(tree)))


def initial_state(optimizer):
    return create_train_state(MODEL, optimizer, jax.random.key(0), jnp.asarray(IMAGES[:1]))


def segment_means(losses, poisoned_steps):
    """The mean training loss of each run of clean steps between poisoned ones."""
    bounds = [-1, *sorted(poisoned_steps), len(losses)]
    return [np.mean(losses[lo + 1 : hi]) for lo, hi in itertools.pairwise(bounds)]


def decreasing(values):
    return all(later < earlier for earlier, later in itertools.pairwise(values))


TRAIN_STEP_POISONS = {
    8: with_pixel(np.nan),
    16: with_pixel(np.inf),
    24: with_pixel(-np.inf),
    32: with_pixel(3e38),
    40: with_loss_scale(OVERFLOWING_LOG2_LOSS_SCALE),
}
# Steps whose forward pass is finite: only the gradients can have caused the skip.
GRADIENT_ONLY_POISONS = {40}


@pytest.mark.slow
def test_train_step_skips_poisoned_steps_and_keeps_learning():
    train_step = make_train_step(MODEL, ADAM, skip_nonfinite=True)
    state = initial_state(ADAM)
    losses, survived = [], 0
    for step in range(48):
        images, labels = batch(step)
        poison = TRAIN_STEP_POISONS.get(step)
        if poison is None:
            state, metrics = train_step(state, (images, labels))
            assert int(metrics["skipped"]) == 0
            losses.append(float(metrics["loss"]))
            continue
        state, images = poison(state, images)
        before = snapshot(state)
        state, metrics = train_step(state, (images, labels))
        assert int(metrics["skipped"]) == 1
        assert not np.isfinite(float(metrics["grad_norm"]))
        if step in GRADIENT_ONLY_POISONS:
            assert np.isfinite(float(metrics["loss"]))
        assert int(state.step) == int(before.step) + 1
        assert_bit_identical(state.params, before.params)
        assert_bit_identical(state.opt_state, before.opt_state)  # Adam's mu, nu and count
        assert_bit_identical(state.model_state, before.model_state)
        survived += 1
        state = reset_loss_scale(state)
        losses.append(np.nan)
    assert survived == len(TRAIN_STEP_POISONS) == 5
    assert all_finite(state.params) and all_finite(state.model_state)
    means = segment_means(np.array(losses), TRAIN_STEP_POISONS)
    assert decreasing(means), means
    assert means[-1] < 0.5 * means[0]


@pytest.mark.slow
def test_fit_skips_every_batch_holding_a_nan_or_inf_image():
    images, labels = mnist_shaped(seed=1, num_examples=4 * BATCH)
    poisoned = {17: np.nan, 90: -np.inf}
    for index, value in poisoned.items():
        images[index, 14, 14, 0] = value
    test_images, test_labels = mnist_shaped(seed=2, num_examples=BATCH)
    epochs, seed = 4, 0
    state, history = fit(
        MODEL, ADAM, images, labels, validation_data=(test_images, test_labels), epochs=epochs,
        batch_size=BATCH, seed=seed, runner="loop", progress=False, skip_nonfinite=True,
    )
    # fit orders epoch e by epoch_indices(k_data, e, ...) with (k_init, k_data) = split(key(seed)).
    data_key = jax.random.split(jax.random.key(seed))[1]
    expected = [
        sum(bool(np.isin(row, list(poisoned)).any()) for row in np.asarray(
            epoch_indices(data_key, epoch, len(images), BATCH)))
        for epoch in range(1, epochs + 1)
    ]
    records = history.epochs
    assert [record.skipped_steps for record in records] == expected
    assert all(count >= 1 for count in expected)
    survived = sum(record.skipped_steps for record in records)
    assert survived == sum(expected) >= epochs
    assert int(state.step) == epochs * len(images) // BATCH
    assert all_finite(state.params) and all_finite(state.opt_state)
    assert all_finite(state.model_state)
    train_losses = history["loss"]
    assert all(np.isfinite(train_losses)) and all(np.isfinite(history["val_loss"]))
    assert all(np.isfinite(history["grad_norm"]))  # the means over the applied steps only
    assert decreasing(train_losses), train_losses


def test_optimizer_wrapper_skips_overflowing_gradients_without_the_train_step_check():
    train_step = make_train_step(MODEL, GUARDED_ADAM, skip_nonfinite=False)
    state = initial_state(GUARDED_ADAM)
    poisoned_steps = (8, 16)
    losses, survived = [], 0
    for step in range(24):
        images, labels = batch(step)
        if step not in poisoned_steps:
            state, metrics = train_step(state, (images, labels))
            losses.append(float(metrics["loss"]))
            continue
        state, images = with_loss_scale(OVERFLOWING_LOG2_LOSS_SCALE)(state, images)
        before = snapshot(state)
        state, metrics = train_step(state, (images, labels))
        assert int(metrics["skipped"]) == 0  # the train step's own check is off
        assert not np.isfinite(float(metrics["grad_norm"]))
        assert_bit_identical(state.params, before.params)
        assert_bit_identical(state.opt_state.inner_state, before.opt_state.inner_state)
        assert int(state.opt_state.total_notfinite) == int(before.opt_state.total_notfinite) + 1
        assert not bool(state.opt_state.last_finite)
        # The forward pass was finite: batch statistics moved on as in any step.
        assert all_finite(state.model_state)
        survived += 1
        state = reset_loss_scale(state)
        losses.append(np.nan)
    assert survived == int(state.opt_state.total_notfinite) == len(poisoned_steps)
    assert all_finite(state.params) and all_finite(state.opt_state)
    means = segment_means(np.array(losses), poisoned_steps)
    assert decreasing(means), means


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_optimizer_wrapper_cannot_guard_batch_statistics_from_a_bad_input(value):
    train_step = make_train_step(MODEL, GUARDED_ADAM, skip_nonfinite=False)
    state = initial_state(GUARDED_ADAM)
    for step in range(3):
        state, _ = train_step(state, batch(step))
    state, images = with_pixel(value)(state, batch(3)[0])
    before = snapshot(state)
    state, _ = train_step(state, (images, batch(3)[1]))
    assert_bit_identical(state.params, before.params)
    assert_bit_identical(state.opt_state.inner_state, before.opt_state.inner_state)
    assert int(state.opt_state.total_notfinite) == 1
    assert all_finite(before.model_state) and not all_finite(state.model_state)


@pytest.mark.slow
@pytest.mark.parametrize("guard", [True, "strict"])
def test_an_infinity_the_optimizer_state_holds_on_purpose_is_not_a_bad_step(guard):
    """A plateau's best metric is +inf until one is observed: steps that keep it are applied,
    while a step poisoned by an Inf pixel is still skipped (the strict guard sees the new
    infinities in the parameters and moments too, the default one the loss)."""
    optimizer = optax.chain(ADAM, scale_by_plateau(epoch_plateau()))
    train_step = make_train_step(MODEL, optimizer, skip_nonfinite=guard)
    state = initial_state(optimizer)
    assert float(plateau_states(state.opt_state)[0].best_metric) == np.inf
    for step in range(3):
        before = snapshot(state.params)
        state, metrics = train_step(state, batch(step))
        assert int(metrics["skipped"]) == 0
        assert not np.array_equal(before["Dense_0"]["kernel"],
                                  np.asarray(state.params["Dense_0"]["kernel"]))
    state, images = with_pixel(np.inf)(state, batch(3)[0])
    before = snapshot(state)
    state, metrics = train_step(state, (images, batch(3)[1]))
    assert int(metrics["skipped"]) == 1
    assert_bit_identical(state.params, before.params)
    assert_bit_identical(state.opt_state, before.opt_state)


@pytest.mark.parametrize(("gradient_scale", "skipped"), [(1e18, 0), (1e30, 1)])
def test_finite_gradients_whose_norm_leaves_float32_count_as_non_finite(gradient_scale, skipped):
    """The guard sees the gradients through their global norm: every gradient finite, but a sum
    of squares beyond float32's range (1e30² ≫ 3.4e38) skips the step; 1e18 does not."""
    def huge_loss(outputs, labels):
        del labels
        return gradient_scale * jnp.sum(outputs, axis=-1)

    model = nn.Dense(4)
    optimizer = optax.sgd(1e-40)  # updates stay tiny and finite either way
    state = create_train_state(model, optimizer, jax.random.key(0), jnp.ones((2, 3)))
    train_step = make_train_step(model, optimizer, loss_fn=huge_loss, metrics={})
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = train_step(state, (jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32)))
    assert int(metrics["skipped"]) == skipped
    assert np.isfinite(float(metrics["grad_norm"])) == (not skipped)
    grads = jax.grad(lambda p: jnp.mean(huge_loss(model.apply(p, jnp.ones((2, 3))), None)))(
        {"params": before})
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))
    if skipped:
        assert_bit_identical(state.params, before)


def one_step_under_each_guard(optimizer, expected_skips, *, promotion=None, **step_kwargs):
    """One step of ``nn.Dense(4)`` on a fixed batch under each guard of ``expected_skips``
    (``{guard: skipped}``): the loss and gradient norm finite, ``skipped`` as expected, and a
    skipped step's parameters and optimizer state bit-identical. Returns each guard's state;
    ``promotion`` names a JAX dtype-promotion mode to step under (None: the suite's)."""
    model, batch = nn.Dense(4), (jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32))
    states = {}
    for guard, skipped in expected_skips.items():
        state = create_train_state(model, optimizer, jax.random.key(0), batch[0])
        before = snapshot(state)
        step = make_train_step(model, optimizer, skip_nonfinite=guard, **step_kwargs)
        with (contextlib.nullcontext() if promotion is None
              else jax.numpy_dtype_promotion(promotion)):
            state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
        assert int(metrics["skipped"]) == skipped
        if skipped:
            assert_bit_identical(state.params, before.params)
            assert_bit_identical(state.opt_state, before.opt_state)
        states[guard] = state
    return states


@pytest.mark.parametrize("factor", [np.nan, np.inf])
def test_finite_gradients_with_non_finite_updates_are_skipped_by_the_strict_guard(factor):
    """The strict guard sees the updates through the new parameters and optimizer state: an
    optimizer whose updates are NaN or Inf from finite gradients is caught. The default guard
    tests only what the update reads, and applies the step."""
    optimizer = optax.chain(optax.trace(0.9), optax.scale(factor))
    states = one_step_under_each_guard(optimizer, {"strict": 1, True: 0})
    assert not all_finite(states[True].params)


def guard_jaxpr(model, optimizer, state, batch, guard, paths=PLAIN, **step_kwargs):
    """The jaxpr of ``make_train_step(model, optimizer, skip_nonfinite=guard)`` on ``state``
    and ``batch``, traced under ``paths`` and standard promotion (a 16-bit state's optimizer
    mixes in its float32 counts)."""
    step = make_train_step(model, optimizer, skip_nonfinite=guard, **step_kwargs)
    with use_speed_paths(paths), jax.numpy_dtype_promotion("standard"):
        return str(jax.make_jaxpr(step)(state, batch))


def test_only_the_strict_guard_reads_the_new_parameters_and_optimizer_state():
    """The default guard's verdict is known before the update, so its select can fuse into it:
    its step tests fewer arrays for finiteness than the strict one (plain path), has no
    conditional (the CPU's quick test is the strict guard's), and fit records the choice."""
    model, optimizer = nn.Dense(64), ADAM  # a (128, 64) kernel: row sums on the CPU
    batch = (jnp.ones((8, 128)), jnp.zeros((8,), jnp.int32))
    state = create_train_state(model, optimizer, jax.random.key(0), batch[0])

    def jaxpr(guard, paths):
        return guard_jaxpr(model, optimizer, state, batch, guard, paths)

    plain = {guard: jaxpr(guard, PLAIN) for guard in (True, "strict")}
    assert plain[True].count("is_finite") < plain["strict"].count("is_finite")
    quick = PLAIN._replace(finite_check_by_sums=True)
    assert "cond" not in jaxpr(True, quick) and "cond" in jaxpr("strict", quick)
    _, history = fit(model, optimizer, np.ones((16, 128), np.float32), np.zeros(16, np.int32),
                     epochs=1, batch_size=8, progress=False, skip_nonfinite="strict")
    assert history.header["skip_nonfinite"] == "strict"


def test_the_default_guard_takes_the_strict_test_on_a_float16_optimizer_state():
    """The float32 gradient norm bounds a float32 state, not a float16 accumulator: gradients of
    1e5 (finite, norm finite) overflow it. On such a state the default guard tests what the
    update writes, as the strict one does: both skip the step and keep the state bit for bit."""
    def large_loss(outputs, labels):
        del labels
        return 1e5 * jnp.sum(outputs, axis=-1)

    optimizer = optax.chain(optax.trace(0.9, accumulator_dtype=jnp.float16), optax.scale(-1e-6))
    # optax.trace adds float32 gradients into its float16 accumulator: standard promotion.
    states = one_step_under_each_guard(optimizer, {True: 1, "strict": 1}, promotion="standard",
                                       loss_fn=large_loss, metrics={})
    assert all_finite(states[True].opt_state)
    assert_bit_identical(states[True], states["strict"])


@pytest.mark.parametrize(("dtype", "tests_the_update"), [
    (jnp.float16, True), (jnp.bfloat16, True), (jnp.float32, False),
])
def test_the_default_guard_tests_the_update_only_on_a_state_of_narrower_range(
        dtype, tests_the_update):
    """Decided from the state's dtypes when the step is traced: with a float16 or bfloat16
    accumulator (bfloat16's largest value is just below float32's, so a finite float32 sum can
    round to its infinity) the default guard's step is the strict one's; with float32 or
    wider it leaves out the strict test's pass over the state."""
    optimizer = optax.chain(optax.trace(0.9, accumulator_dtype=dtype), optax.scale(-0.1))
    model, batch = nn.Dense(4), (jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32))
    state = create_train_state(model, optimizer, jax.random.key(0), batch[0])

    default, strict = (guard_jaxpr(model, optimizer, state, batch, guard)
                       for guard in (True, "strict"))
    assert (default == strict) == tests_the_update
    assert (default.count("is_finite") < strict.count("is_finite")) != tests_the_update


@pytest.mark.parametrize(("policy", "optimizer"), [
    # SGD keeps no state: the parameters alone are narrow.
    (Precision(param_dtype=jnp.bfloat16, compute_dtype=jnp.bfloat16), optax.sgd(0.1)),
    (Precision(param_dtype=jnp.float16, compute_dtype=jnp.float16,
               loss_scale=DynamicScale(scale=2.0**15)), ADAM),
])
def test_the_default_guard_tests_the_update_of_16_bit_parameters(policy, optimizer):
    """The same for the parameters (and a loss scale's state around the optimizer's): a policy
    holding them in bfloat16 or float16 gets the strict test from the default guard."""
    model, batch = nn.Dense(4), (jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32))
    with jax.numpy_dtype_promotion("standard"):
        state = create_train_state(model, optimizer, jax.random.key(0), batch[0],
                                   precision=policy)

    assert (guard_jaxpr(model, optimizer, state, batch, True, precision=policy)
            == guard_jaxpr(model, optimizer, state, batch, "strict", precision=policy))


def test_a_sum_over_steps_in_float32_needs_the_strict_guard():
    """The float32 gradient norm bounds what one step adds, not a sum over steps: Adagrad's
    float32 accumulator of g² overflows on the second step of gradients of 1.5e19 (finite, and
    so is their norm). The default guard applies that step, as the module's docstring says;
    the strict one skips it and keeps the state bit for bit."""
    def large_loss(outputs, labels):
        del labels
        return 1.5e19 * outputs[:, 0]

    model, batch = nn.Dense(1, use_bias=False), (jnp.ones((1, 1)), jnp.zeros((1,), jnp.int32))
    finals = {}
    for guard in (True, "strict"):
        state = create_train_state(model, optax.adagrad(1e-30), jax.random.key(0), batch[0])
        step = make_train_step(model, optax.adagrad(1e-30), loss_fn=large_loss, metrics={},
                               skip_nonfinite=guard)
        state, first = step(state, batch)
        before = snapshot(state)
        state, second = step(state, batch)
        assert np.isfinite(float(second["grad_norm"]))
        assert (int(first["skipped"]), int(second["skipped"])) == (0, int(guard == "strict"))
        finals[guard], finals[f"{guard} before"] = state, before
    assert not all_finite(finals[True].opt_state)
    assert_bit_identical(finals["strict"].opt_state, finals["strict before"].opt_state)


def test_the_default_and_strict_guards_skip_the_same_bad_inputs_bit_for_bit():
    """On clean batches and on batches poisoned through the input or the gradient alone, both
    guards skip the same steps and end with the same state, bit for bit: the default one
    decides before the update what the strict one also decides after it."""
    poisons = {1: with_pixel(np.nan), 3: with_pixel(3e38),
               4: with_loss_scale(OVERFLOWING_LOG2_LOSS_SCALE)}
    results = {}
    for guard in (True, "strict"):
        train_step = make_train_step(MODEL, ADAM, skip_nonfinite=guard)
        state, skipped = initial_state(ADAM), []
        for step in range(6):
            images, labels = batch(step)
            if step in poisons:
                state, images = poisons[step](state, images)
            state, metrics = train_step(state, (images, labels))
            state = reset_loss_scale(state)
            skipped.append(int(metrics["skipped"]))
        assert skipped == [int(step in poisons) for step in range(6)]
        results[guard] = snapshot(state)
    assert all_finite(results[True].params) and all_finite(results[True].model_state)
    assert_bit_identical(results[True], results["strict"])


def _held_state(init_value: float, written: float | None) -> optax.GradientTransformation:
    """An optimizer state of one large (64, 64) leaf: ``init_value`` everywhere, kept by every
    update, or with ``written`` put at one place by the update."""
    def init(params):
        del params
        return jnp.full((64, 64), init_value, jnp.float32)

    def update(updates, state, params=None):
        del params
        return updates, state if written is None else state.at[3, 5].set(written)

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize(
    ("init_value", "written", "skipped"),
    [
        (np.inf, None, 0),  # an infinity held on purpose, in a leaf tested by row sums
        (3e38, None, 0),  # finite values whose row sums overflow: the exact test clears them
        (0.0, np.nan, 1),
        (0.0, -np.inf, 1),
        (np.inf, np.nan, 1),
    ],
)
def test_the_guard_s_quick_row_sum_test_and_the_exact_test_give_one_verdict(
        init_value, written, skipped):
    """The CPU's speed path of the strict guard tests large leaves through row sums first and
    the plain path runs the exact test only: both skip the same steps and write the same state,
    bit for bit."""
    model = nn.Dense(4)
    optimizer = optax.chain(optax.sgd(0.1), _held_state(init_value, written))
    batch = (jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32))
    results = {}
    for by_sums in (False, True):
        with use_speed_paths(PLAIN._replace(finite_check_by_sums=by_sums)):
            state = create_train_state(model, optimizer, jax.random.key(0), batch[0])
            train_step = make_train_step(model, optimizer, skip_nonfinite="strict")
            assert ("cond" in str(jax.make_jaxpr(train_step)(state, batch))) == by_sums
            before = snapshot(state)
            state, metrics = train_step(state, batch)
        assert int(metrics["skipped"]) == skipped
        if skipped:
            assert_bit_identical(state.params, before.params)
            assert_bit_identical(state.opt_state, before.opt_state)
        results[by_sums] = snapshot(state)
    assert_bit_identical(results[True].params, results[False].params)
    assert_bit_identical(results[True].opt_state, results[False].opt_state)
