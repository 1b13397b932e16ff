"""Tests for jaxtricks.training.epochs: data order, the loop and scan runners, the auto choice."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import TinyNet, assert_trees_equal, host, toy_problem

from jaxtricks.backend import speed_paths
from jaxtricks.training import epochs
from jaxtricks.training.epochs import (
    RUNNERS,
    choose_runner,
    compile_epoch_runner,
    epoch_indices,
    run_epoch,
)
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step

MODEL = TinyNet()
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
NUM_EXAMPLES, BATCH = 200, 16  # 12 steps per epoch, 8 examples dropped
IMAGES, LABELS = (jnp.asarray(array) for array in toy_problem(seed=1, num_examples=NUM_EXAMPLES))
DATA = (IMAGES, LABELS)
DATA_KEY = jax.random.key(42)


@pytest.fixture(scope="module")
def train_step():
    return make_train_step(MODEL, OPTIMIZER)


@pytest.fixture(scope="module")
def runners(train_step):
    state = fresh_state()
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    return {
        name: compile_epoch_runner(train_step, name, state, DATA, indices)
        for name in RUNNERS
    }


def fresh_state():
    return create_train_state(MODEL, OPTIMIZER, jax.random.key(0), IMAGES[:BATCH])


def test_epoch_indices_are_a_reproducible_partial_permutation():
    indices = np.asarray(epoch_indices(DATA_KEY, 3, NUM_EXAMPLES, BATCH))
    assert indices.shape == (NUM_EXAMPLES // BATCH, BATCH) and indices.dtype == np.int32
    flat = indices.ravel()
    assert len(set(flat.tolist())) == flat.size
    assert flat.min() >= 0 and flat.max() < NUM_EXAMPLES
    np.testing.assert_array_equal(indices, epoch_indices(DATA_KEY, 3, NUM_EXAMPLES, BATCH))
    assert not np.array_equal(indices, epoch_indices(DATA_KEY, 4, NUM_EXAMPLES, BATCH))
    other_key = epoch_indices(jax.random.key(7), 3, NUM_EXAMPLES, BATCH)
    assert not np.array_equal(indices, other_key)


@pytest.mark.parametrize("batch_size", [0, NUM_EXAMPLES + 1])
def test_epoch_indices_refuse_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        epoch_indices(DATA_KEY, 0, NUM_EXAMPLES, batch_size)


@pytest.mark.slow
def test_loop_and_scan_are_bit_identical(runners):
    results = {}
    for name, runner in runners.items():
        state, seen = fresh_state(), []
        for epoch in (1, 2):
            indices = epoch_indices(DATA_KEY, epoch, NUM_EXAMPLES, BATCH)
            # A chunk that does not divide the epoch exercises the shorter last chunk.
            state, totals = run_epoch(runner, state, DATA, indices, chunk_steps=5)
            seen.append(host(totals))
        results[name] = (host(state), seen)
    assert_trees_equal(results["loop"], results["scan"])
    assert int(results["loop"][0].step) == 2 * (NUM_EXAMPLES // BATCH)


def test_runner_equals_the_plain_sequence_of_steps(train_step, runners, allclose):
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    state, losses = fresh_state(), []
    for rows in np.asarray(indices):
        state, metrics = train_step(state, (IMAGES[rows], LABELS[rows]))
        losses.append(metrics["loss"])
    expected = host(state)
    state, totals = run_epoch(runners["loop"], fresh_state(), DATA, indices)
    # The step compiled alone and inside the epoch function may fuse differently.
    allclose(host(state.params), expected.params, rtol=1e-5, atol=1e-6)
    totals = host(totals)
    assert int(totals["steps"]) == len(indices) and int(totals["skipped"]) == 0
    np.testing.assert_allclose(totals["loss"], np.sum(host(losses)), rtol=1e-5)


@pytest.mark.parametrize("name", RUNNERS)
def test_run_epoch_donates_where_the_backend_says_and_reports_progress(runners, name):
    # The loop runner keeps the state on the CPU, where donating made its step slower.
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    state = fresh_state()
    kernel = state.params["Dense_0"]["kernel"]
    calls = []
    run_epoch(
        runners[name],
        state,
        DATA,
        indices,
        chunk_steps=5,
        on_chunk=lambda done, totals: calls.append((done, int(totals["steps"]))),
    )
    assert kernel.is_deleted() is (name == "scan" or speed_paths().donate_state)
    assert calls == [(5, 5), (10, 10), (12, 12)]


@pytest.mark.slow
@pytest.mark.parametrize("donate", [True, False])
def test_the_loop_runner_donates_as_asked_with_the_same_result(train_step, donate):
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    runner = compile_epoch_runner(train_step, "loop", fresh_state(), DATA, indices,
                                  donate=donate)
    state = fresh_state()
    kernel = state.params["Dense_0"]["kernel"]
    state, totals = run_epoch(runner, state, DATA, indices)
    assert kernel.is_deleted() is donate
    keeping = compile_epoch_runner(train_step, "loop", fresh_state(), DATA, indices,
                                   donate=not donate)
    assert_trees_equal(host((state, totals)),
                       host(run_epoch(keeping, fresh_state(), DATA, indices)))


def test_pytree_data_and_metrics_of_ones_own_are_summed():
    model = _Pixels(TinyNet(batch_norm=False, dropout_rate=0.0))
    loss = lambda outputs, y: jnp.sum((outputs - y["target"]) ** 2, axis=-1)
    first = {"first": lambda outputs, y: outputs[:, 0]}
    step = make_train_step(model, OPTIMIZER, loss_fn=loss, metrics=first)
    data = ({"pixels": IMAGES}, {"target": jax.nn.one_hot(LABELS, 3)})
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), {"pixels": IMAGES[:BATCH]})
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    runner = compile_epoch_runner(step, "scan", state, data, indices)
    state, totals = run_epoch(runner, state, data, indices)
    assert sorted(totals) == ["first", "grad_norm", "loss", "skipped", "steps"]
    assert int(totals["steps"]) == len(indices) and float(totals["loss"]) > 0
    # The sums are the per-step means added up: as many as the steps, each finite.
    assert np.isfinite(float(totals["first"]))


class _Pixels(nn.Module):
    """The inner model applied to ``x["pixels"]`` (its parameters under ``inner``)."""

    inner: nn.Module

    @nn.compact
    def __call__(self, x, train):
        return self.inner(x["pixels"], train)


def test_run_epoch_refuses_bad_chunk(runners):
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    with pytest.raises(ValueError, match="chunk_steps"):
        run_epoch(runners["loop"], fresh_state(), DATA, indices, chunk_steps=0)


def test_skipped_steps_are_counted_not_averaged(runners):
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    poisoned_row = int(indices[4, 0])
    images = IMAGES.at[poisoned_row].set(jnp.nan)
    state, totals = run_epoch(runners["scan"], fresh_state(), (images, LABELS), indices)
    totals = host(totals)
    assert int(totals["skipped"]) == 1 and int(totals["steps"]) == len(indices)
    assert np.isfinite(totals["loss"]) and totals["loss"] > 0
    assert np.all(np.isfinite(host(state.params["Dense_0"]["kernel"])))


def test_unknown_runner_is_refused(train_step):
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    with pytest.raises(ValueError, match="runner"):
        compile_epoch_runner(train_step, "unrolled", fresh_state(), DATA, indices)


def test_choose_runner_measures_both_then_caches(train_step, monkeypatch):
    monkeypatch.setattr(epochs, "_CHOICES", {})
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    state = fresh_state()
    kept = host(state)
    runner, record = choose_runner(train_step, state, DATA, indices)
    assert record["runner"] == runner.name in RUNNERS and record["cached"] is False
    times = record["step_time_s"]
    assert set(times) == set(RUNNERS)
    assert all(0 < value < math.inf for value in times.values())
    assert runner.name == min(times, key=times.get)
    assert set(record["compile_time_s"]) == set(RUNNERS)
    # The probe trains copies: the caller's state is neither donated nor changed.
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert_trees_equal(host(state), kept)

    again, cached = choose_runner(train_step, state, DATA, indices)
    assert cached["cached"] is True and again.name == runner.name
    assert cached["step_time_s"] == times and set(cached["compile_time_s"]) == {runner.name}


def test_compiled_runners_and_evaluation_die_with_their_step(monkeypatch):
    # A step function compiled into runners must not outlive them: JAX keeps the static
    # arguments of a module-level jit (and their executables) for the life of the process.
    import gc
    import weakref

    from jaxtricks.training import caching
    from jaxtricks.training.steps import evaluate, make_eval_step

    monkeypatch.setattr(epochs, "_CHOICES", {})
    step = make_train_step(MODEL, optax.sgd(0.1))  # a new optimizer: a step no other test shares
    eval_step = make_eval_step(MODEL)
    indices = epoch_indices(DATA_KEY, 1, NUM_EXAMPLES, BATCH)
    runner, _ = choose_runner(step, fresh_state(), DATA, indices)
    state, _ = run_epoch(runner, fresh_state(), DATA, indices)
    evaluate(eval_step, state, IMAGES, LABELS, batch_size=64)
    refs = [weakref.ref(step), weakref.ref(eval_step)]
    del step, eval_step, runner, state
    caching._cached.cache_clear()
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
