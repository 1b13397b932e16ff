"""The learning-rate range test: its suggestions on made-up curves, its runs on real MNIST."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtricks as jt
from jaxtricks.data import DatasetNotFoundError, load
from jaxtricks.models import MLP
from jaxtricks.training import (
    LRFinderResult,
    create_train_state,
    find_learning_rate,
    lr_finder,
    suggest_learning_rates,
)
from jaxtricks.training.caching import jit_with

# ---- suggest_learning_rates on curves whose answers are known ------------------------------

RATES = np.logspace(-6, 1, 71)  # 10 points a decade
U = np.log10(RATES)


def _valley(center=-3.0, bottom=-1.5):
    """2 − tanh(2(u − center)) down to its value at ``bottom``, then rising steeply: it falls
    fastest at u = center and is lowest at u = bottom."""
    falling = 2 - np.tanh(2 * (U - center))
    rising = falling[np.argmin(np.abs(U - bottom))] + 5 * (U - bottom) ** 2
    return np.where(U <= bottom, falling, rising)


def test_steepest_is_the_inflection_and_minimum_over_10_a_decade_before_the_bottom():
    s = suggest_learning_rates(RATES, _valley())
    assert s.steepest == pytest.approx(1e-3) and s.steepest_index == 30
    assert s.minimum_index == 45
    assert s.min_over_10 == pytest.approx(10**-1.5 / 10)


def test_a_non_finite_tail_is_left_out():
    curve = _valley()
    cut = suggest_learning_rates(RATES, np.concatenate([curve[:50], [np.inf], curve[51:]]))
    assert cut == suggest_learning_rates(RATES[:50], curve[:50])
    assert suggest_learning_rates(RATES[:3], [np.nan, 1.0, 0.5]) == (None, None, None, None)


def test_only_the_way_down_to_the_minimum_is_searched():
    curve = _valley()
    curve[60:] = curve[45] + 100.0 * np.arange(11)  # steeper rises later change nothing
    assert suggest_learning_rates(RATES, curve).steepest == pytest.approx(1e-3)
    # A curve that only rises has no steepest descent; its minimum is its first point.
    s = suggest_learning_rates(RATES, np.linspace(1.0, 5.0, RATES.size))
    assert (s.steepest, s.steepest_index, s.minimum_index) == (None, None, 0)
    assert s.min_over_10 == pytest.approx(1e-7)


def test_skip_start_leaves_the_first_points_out():
    curve = _valley()
    curve[0] = 10.0  # one noisy early point: the steepest fall of all, between points 0 and 1
    assert suggest_learning_rates(RATES, curve, skip_start=0.0).steepest_index in (0, 1)
    assert suggest_learning_rates(RATES, curve, skip_start=0.1).steepest_index == 30
    # Past the minimum, nothing is left to search.
    assert suggest_learning_rates(RATES, curve, skip_start=0.9).steepest is None


@pytest.mark.parametrize(
    ("rates", "losses", "kwargs", "match"),
    [
        (RATES[:3], [1.0, 2.0], {}, "one length"),
        (RATES[:3][::-1], [1.0, 2.0, 3.0], {}, "increasing"),
        ([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], {}, "positive"),
        (RATES[:3], [1.0, 2.0, 3.0], {"skip_start": 1.0}, "skip_start"),
    ],
)
def test_suggest_refuses_bad_curves(rates, losses, kwargs, match):
    with pytest.raises(ValueError, match=match):
        suggest_learning_rates(rates, losses, **kwargs)


# ---- find_learning_rate on real MNIST -------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    """2,048 real MNIST training images scaled to [0, 1], and their labels."""
    try:
        data = load("mnist", download=False)
    except DatasetNotFoundError as err:
        pytest.skip(f"MNIST is not on this machine: {err}")
    images = data.train_images[:2048, ..., None].astype(np.float32) / 255
    return images, data.train_labels[:2048].astype(np.int32)


MODEL = MLP(features=(32,))


def _find(mnist, optimizer=jt.adam, **kwargs):
    kwargs = {"num_steps": 120, "batch_size": 64, "min_lr": 1e-6, "max_lr": 10.0, **kwargs}
    return find_learning_rate(MODEL, optimizer, *mnist, **kwargs)


@pytest.mark.slow
def test_adam_on_mnist_sweeps_smooths_stops_and_suggests(mnist):
    result = _find(mnist)
    count = len(result.learning_rates)
    steps = np.arange(count)
    np.testing.assert_allclose(result.learning_rates, 1e-6 * (1e7) ** (steps / 119), rtol=1e-12)
    # The smoothed curve is the bias-corrected moving average of the recorded losses.
    average, expected = 0.0, []
    for i, loss in enumerate(result.losses.astype(np.float64)):
        average = 0.98 * average + 0.02 * loss
        expected.append(average / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed_losses, expected, rtol=1e-4)
    # It stops at the first step past 4 × the lowest smoothed loss before it, if there is one.
    s = result.smoothed_losses
    best = np.minimum.accumulate(s)
    assert all(s[i] <= 4 * best[i - 1] for i in range(1, count - 1))
    if result.stopped_early:
        assert result.stop_reason == "diverged" and s[-1] > 4 * best[-2] and count < 120
    else:
        assert result.stop_reason == "completed" and count == 120 and s[-1] <= 4 * best[-2]
    # It learned on the way: the loss fell well below chance (ln 10) at some rates.
    assert result.losses.min() < 0.5 * math.log(10) and s.min() < 0.9 * math.log(10)
    expected = suggest_learning_rates(result.learning_rates, s)
    assert (result.suggestion_steepest, result.suggestion_min_over_10) == expected[:2]
    assert (result.steepest_index, result.minimum_index) == expected[2:]
    assert 1e-6 < result.suggestion_steepest < 10 * result.suggestion_min_over_10 < 10.0
    record = result.to_dict()
    assert record["learning_rates"] == result.learning_rates.tolist()
    assert record["settings"]["num_steps"] == 120 and record["stop_reason"] == result.stop_reason


@pytest.mark.slow
def test_same_seed_same_curve_other_seed_other_curve_one_compilation(mnist, monkeypatch):
    sweeps = []

    def recording_jit_with(fn, first, **kwargs):
        sweeps.append(jit_with(fn, first, **kwargs))
        return sweeps[-1]

    monkeypatch.setattr(lr_finder, "jit_with", recording_jit_with)
    first = _find(mnist, num_steps=30, max_lr=1e-2)
    compiled = sweeps[0]._cache_size()
    again = _find(mnist, num_steps=30, max_lr=1e-2)
    # One jitted sweep, not compiled again: the rates are values, not constants.
    assert len(sweeps) == 2 and sweeps[0] is sweeps[1]
    assert sweeps[0]._cache_size() == compiled
    np.testing.assert_array_equal(first.losses, again.losses)
    other = _find(mnist, num_steps=30, max_lr=1e-2, seed=1)
    assert not np.array_equal(first.losses, other.losses)
    assert first.stop_reason == "completed" and len(first.losses) == 30


@pytest.mark.slow
def test_an_injected_optimizer_gives_the_curve_its_factory_gives(mnist):
    factory = _find(mnist, num_steps=30, max_lr=1e-2)
    injected = _find(mnist, optax.inject_hyperparams(jt.adam)(learning_rate=0.5), num_steps=30,
                     max_lr=1e-2)
    np.testing.assert_allclose(injected.losses, factory.losses, rtol=1e-5)


def _on_host(state):
    return jax.tree.map(np.array, state._replace(rng=jax.random.key_data(state.rng)))


@pytest.mark.slow
def test_the_callers_state_is_left_as_it_was(mnist):
    tx = optax.inject_hyperparams(jt.adam)(learning_rate=1e-3)
    state = create_train_state(MODEL, tx, jax.random.key(3), jnp.asarray(mnist[0][:1]))
    before = _on_host(state)
    result = _find(mnist, tx, num_steps=30, max_lr=1.0, initial_state=state)
    jax.tree.map(np.testing.assert_array_equal, _on_host(state), before)
    assert isinstance(result, LRFinderResult)
    # It started from that state: a fresh state (seed 0) starts elsewhere.
    assert result.losses[0] != _find(mnist, tx, num_steps=30, max_lr=1.0).losses[0]


def test_more_steps_than_an_epoch_run_on_into_the_next_epochs(mnist):
    images, labels = mnist
    result = find_learning_rate(MODEL, jt.sgd, images[:256], labels[:256], min_lr=1e-3,
                                max_lr=1e-1, num_steps=20, batch_size=64)
    assert result.stop_reason == "completed" and len(result.losses) == 20


def _regression():
    x = jax.random.normal(jax.random.key(0), (128, 4))
    return x, x @ jnp.array([1.0, -2.0, 0.5, 3.0])


def _squared_error(outputs, y):
    return (outputs[:, 0] - y) ** 2


def test_sgd_on_a_quadratic_diverges_past_two_over_the_curvature():
    result = find_learning_rate(nn.Dense(1), jt.sgd, *_regression(), min_lr=1e-3, max_lr=1e2,
                                num_steps=100, batch_size=32, loss_fn=_squared_error)
    s = result.smoothed_losses
    assert result.stop_reason == "diverged" and result.stopped_early
    assert s[-1] > 4 * s[:-1].min() and np.all(s[1:-1] <= 4 * np.minimum.accumulate(s)[:-2])
    # SGD on least squares diverges once η exceeds 2 / λ_max of E[x xᵀ] (λ ≈ 1 here); the
    # smoothed loss crosses 4 × its minimum a little later.
    assert 1.0 < result.learning_rates[-1] < 100.0
    assert result.suggestion_steepest < result.learning_rates[-1]


def test_a_loss_that_overflows_stops_the_test_as_nonfinite():
    result = find_learning_rate(
        nn.Dense(1), jt.sgd, *_regression(), min_lr=1.0, max_lr=1e30, num_steps=100,
        batch_size=32, diverge_factor=None, loss_fn=_squared_error,
    )
    assert result.stop_reason == "nonfinite" and result.stopped_early
    assert len(result.losses) < 100 and np.all(np.isfinite(result.smoothed_losses[:-1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_lr": 0.0}, "min_lr"),
        ({"min_lr": math.nan}, "min_lr"),
        ({"max_lr": 1e-7}, r"max_lr must be a finite number in \(1e-06"),
        ({"num_steps": 1}, "num_steps"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 4096}, r"batch_size must be an int in \[1, 2048\]"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"diverge_factor": 1.0}, "diverge_factor"),
        ({"skip_start": 1.0}, "skip_start"),
        ({"seed": -1}, "seed"),
        ({"initial_state": {}}, "initial_state"),
    ],
)
def test_bad_arguments_are_refused_by_name(mnist, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _find(mnist, **kwargs)


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [
        ("adam", "optimizer must be"),
        (lambda rate: "adam", "must return an optax.GradientTransformation"),
        (optax.adam(1e-3), "no injected hyperparameter.*or pass a function"),
        (optax.inject_hyperparams(jt.adam)(learning_rate=optax.linear_schedule(1e-3, 0, 9)),
         "schedule"),
    ],
)
def test_an_optimizer_whose_rate_cannot_be_set_is_refused(mnist, optimizer, match):
    with pytest.raises(ValueError, match=match):
        _find(mnist, optimizer)


def test_labels_outside_the_outputs_are_refused(mnist):
    images, labels = mnist
    with pytest.raises(ValueError, match=r"y must hold integer labels in \[0, 9\]"):
        find_learning_rate(MODEL, jt.adam, images, labels + 1)


@pytest.mark.slow
def test_an_nnx_module_is_tested_and_left_as_it_was():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden, self.out = nnx.Linear(4, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    net = Net(nnx.Rngs(0))
    before = jax.tree.map(np.array, nnx.state(net))
    result = find_learning_rate(net, jt.sgd, *_regression(), min_lr=1e-3, max_lr=1e2,
                                num_steps=60, batch_size=32, loss_fn=_squared_error)
    assert result.stop_reason == "diverged" and result.suggestion_steepest is not None
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, nnx.state(net)), before)
