"""Tests for jaxtricks.tricks.early_stopping: the stop epoch, the best weights, jit and scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks.early_stopping import EarlyStoppingState, early_stopping


def params_of(epoch):
    """Parameters that record the epoch they come from, so a restore can be checked."""
    value = jnp.asarray(epoch).astype(jnp.float32)
    return {"w": jnp.full((2, 3), value), "b": value}


def stats_of(epoch):
    return {"bn": {"mean": jnp.full((3,), -jnp.asarray(epoch).astype(jnp.float32))}}


def run(stopper, metrics, *, with_stats=False):
    """Feeds metrics[e - 1] with the parameters of epoch e, as a training loop would."""
    state = stopper.init(params_of(0), stats_of(0) if with_stats else None)
    for epoch, metric in enumerate(metrics, start=1):
        stats = stats_of(epoch) if with_stats else None
        state = stopper.update(state, metric, params_of(epoch), stats)
    return state


def reference(metrics, patience, min_delta=0.0, mode="min", baseline=None, start_from_epoch=0):
    """A plain-Python rendering of the rule: (stop epoch or None, best epoch, best metric)."""
    sign = 1 if mode == "min" else -1
    best, best_epoch, wait = sign * np.inf, 0, 0
    for epoch, metric in enumerate(metrics, start=1):
        if epoch <= start_from_epoch:
            continue
        improved = sign * metric < sign * best - min_delta
        if improved:
            best, best_epoch = metric, epoch
        if improved and (baseline is None or sign * metric < sign * baseline - min_delta):
            wait = 0
        else:
            wait += 1
        if wait >= patience:
            return epoch, best_epoch, best
    return None, best_epoch, best


def check_against_reference(state, metrics, **kwargs):
    stop, best_epoch, best = reference(metrics, **kwargs)
    assert bool(state.should_stop) == (stop is not None)
    assert int(state.epoch) == (stop if stop is not None else len(metrics))
    assert int(state.best_epoch) == best_epoch
    assert float(state.best_metric) == np.float32(best)
    # The kept parameters are those of the best epoch (init's, epoch 0, when none improved).
    np.testing.assert_array_equal(state.best_params["w"], np.full((2, 3), best_epoch))


LOSSES = [5.0, 4.0, 4.5, 3.0, 3.2, 3.1, 3.05, 2.0]


def test_stops_after_patience_epochs_without_improvement_and_keeps_best():
    state = run(early_stopping(patience=3), LOSSES)
    # Epoch 4 (3.0) is the last improvement; 5, 6, 7 do not improve: stop at 7.
    assert bool(state.should_stop)
    assert int(state.epoch) == 7
    assert int(state.best_epoch) == 4
    assert float(state.best_metric) == 3.0
    assert int(state.epochs_without_improvement) == 3
    np.testing.assert_array_equal(state.best_params["w"], np.full((2, 3), 4.0))
    check_against_reference(state, LOSSES, patience=3)


def test_does_not_stop_while_improving_within_patience():
    state = run(early_stopping(patience=4), LOSSES)
    assert not bool(state.should_stop)
    assert int(state.best_epoch) == 8
    check_against_reference(state, LOSSES, patience=4)


def test_updates_after_stopping_change_nothing():
    stopper = early_stopping(patience=1)
    state = run(stopper, [1.0, 2.0])
    assert bool(state.should_stop)
    later = stopper.update(state, 0.0, params_of(3))
    for a, b in zip(jax.tree.leaves(later), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_max_mode_for_accuracies():
    accuracies = [0.5, 0.7, 0.69, 0.71, 0.70, 0.70]
    state = run(early_stopping(patience=2, mode="max"), accuracies)
    assert int(state.epoch) == 6
    assert int(state.best_epoch) == 4
    check_against_reference(state, accuracies, patience=2, mode="max")


def test_min_delta_ignores_small_improvements():
    losses = [1.0, 0.95, 0.92, 0.91, 0.5]
    # Nothing beats the best, 1.0, by more than 0.1 until epoch 5: stop at 1 + 3.
    state = run(early_stopping(patience=3, min_delta=0.1), losses)
    assert int(state.epoch) == 4
    assert int(state.best_epoch) == 1
    check_against_reference(state, losses, patience=3, min_delta=0.1)
    # Without min_delta every epoch improves.
    assert not bool(run(early_stopping(patience=3), losses).should_stop)


def test_baseline_must_be_beaten_to_restart_the_count():
    losses = [2.0, 1.5, 1.2, 1.1, 0.9, 0.8]
    # Improving but above the baseline 1.0 for epochs 1-4: the count grows to 3 at epoch 3.
    state = run(early_stopping(patience=3, baseline=1.0), losses)
    assert bool(state.should_stop)
    assert int(state.epoch) == 3
    assert int(state.best_epoch) == 3  # the best seen is still tracked and kept
    check_against_reference(state, losses, patience=3, baseline=1.0)
    # With patience 5 it reaches the baseline at epoch 5 and the count restarts.
    state = run(early_stopping(patience=5, baseline=1.0), losses)
    assert not bool(state.should_stop)
    assert int(state.epochs_without_improvement) == 0
    check_against_reference(state, losses, patience=5, baseline=1.0)


def test_start_from_epoch_ignores_the_warm_up():
    losses = [0.1, 5.0, 4.0, 4.5, 4.6]
    # Without warm-up epoch 1 is the best and the run stops at epoch 3.
    assert int(run(early_stopping(patience=2), losses).epoch) == 3
    state = run(early_stopping(patience=2, start_from_epoch=1), losses)
    assert int(state.best_epoch) == 3
    assert int(state.epoch) == 5
    check_against_reference(state, losses, patience=2, start_from_epoch=1)


def test_nan_never_improves():
    state = run(early_stopping(patience=2), [1.0, float("nan"), float("nan")])
    assert bool(state.should_stop)
    assert int(state.best_epoch) == 1


def test_batch_stats_are_kept_with_the_params():
    state = run(early_stopping(patience=3), LOSSES, with_stats=True)
    np.testing.assert_array_equal(state.best_batch_stats["bn"]["mean"], np.full((3,), -4.0))


def test_restore_best_false_keeps_no_weights_and_needs_none():
    stopper = early_stopping(patience=3, restore_best=False)
    state = run(stopper, LOSSES)
    assert state.best_params is None and state.best_batch_stats is None
    assert int(state.best_epoch) == 4
    bare = stopper.init(None)
    for loss in LOSSES:
        bare = stopper.update(bare, loss)
    assert int(bare.epoch) == 7 and int(bare.best_epoch) == 4


def test_state_dtypes():
    state = early_stopping(patience=2).init(params_of(0))
    assert isinstance(state, EarlyStoppingState)
    assert state.best_metric.dtype == jnp.float32
    assert state.best_epoch.dtype == state.epoch.dtype == jnp.int32
    assert state.should_stop.dtype == jnp.bool_
    assert float(state.best_metric) == np.inf
    assert float(early_stopping(patience=2, mode="max").init(None).best_metric) == -np.inf


@pytest.mark.parametrize("mode", ["min", "max"])
def test_jit_matches_eager(mode):
    stopper = early_stopping(patience=2, min_delta=0.01, mode=mode)
    update = jax.jit(stopper.update)
    metrics = [0.3, 0.5, 0.2, 0.6, 0.1, 0.1, 0.1]
    eager, jitted = stopper.init(params_of(0)), stopper.init(params_of(0))
    for epoch, metric in enumerate(metrics, start=1):
        eager = stopper.update(eager, metric, params_of(epoch))
        jitted = update(jitted, jnp.float32(metric), params_of(epoch))
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(a, b)
    check_against_reference(jitted, metrics, patience=2, min_delta=0.01, mode=mode)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 2},
        {"patience": 3, "mode": "max"},
        {"patience": 2, "min_delta": 0.05, "baseline": 0.5},
        {"patience": 2, "start_from_epoch": 3},
    ],
)
def test_scan_over_a_metric_sequence(kwargs):
    metrics = np.asarray([0.9, 0.6, 0.62, 0.4, 0.45, 0.41, 0.7, 0.3, 0.35, 0.36], np.float32)
    stopper = early_stopping(**kwargs)

    def body(state, inputs):
        epoch, metric = inputs
        return stopper.update(state, metric, params_of(epoch)), state.should_stop

    epochs = jnp.arange(1, len(metrics) + 1, dtype=jnp.int32)
    state, stopped_before = jax.lax.scan(body, stopper.init(params_of(0)), (epochs, metrics))
    check_against_reference(state, metrics.tolist(), **kwargs)
    # The per-epoch flags read, before each update, as a loop that stops would see them.
    stop, _, _ = reference(metrics.tolist(), **kwargs)
    expected = [stop is not None and epoch > stop for epoch in range(1, len(metrics) + 1)]
    np.testing.assert_array_equal(stopped_before, expected)


def test_vmap_over_runs():
    stopper = early_stopping(patience=1)
    runs = jnp.asarray([[1.0, 2.0, 0.5], [1.0, 0.5, 0.4]], jnp.float32)

    def final(metrics):
        state = stopper.init(params_of(0))
        for epoch in range(3):
            state = stopper.update(state, metrics[epoch], params_of(epoch + 1))
        return state.should_stop, state.best_epoch

    stopped, best = jax.jit(jax.vmap(final))(runs)
    np.testing.assert_array_equal(stopped, [True, False])
    np.testing.assert_array_equal(best, [1, 3])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"patience": 0}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": True}, "patience"),
        ({"patience": 2, "min_delta": -0.1}, "min_delta"),
        ({"patience": 2, "mode": "maximize"}, "mode"),
        ({"patience": 2, "baseline": float("nan")}, "baseline"),
        ({"patience": 2, "start_from_epoch": -1}, "start_from_epoch"),
        ({"patience": 2, "restore_best": 1}, "restore_best"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        early_stopping(**kwargs)


def test_mismatched_params_and_metric_shapes_are_refused():
    stopper = early_stopping(patience=2)
    state = stopper.init(params_of(0))
    with pytest.raises(ValueError, match="params"):
        stopper.update(state, 1.0, {"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="metric"):
        stopper.update(state, jnp.zeros(2), params_of(1))
