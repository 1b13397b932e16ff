"""Tests for fit's epoch-level tricks (jaxtricks.training.fit_tricks): early stopping,
parameter averaging and reduce-on-plateau, on a tiny made-up problem."""

import jax
import numpy as np
import optax
import pytest
from training_toys import TinyNet, toy_problem

from jaxtricks.training.averaging import recompute_batch_stats
from jaxtricks.training.checkpoint import CheckpointManager
from jaxtricks.training.fit import fit
from jaxtricks.training.sharding import make_mesh
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step
from jaxtricks.tricks.averaging import ema_params, polyak_params, swa_params
from jaxtricks.tricks.early_stopping import early_stopping
from jaxtricks.tricks.plateau import epoch_plateau, plateau_states, scale_by_plateau

MODEL = TinyNet()  # batch norm and dropout
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=4, num_examples=96)  # 3 steps of 32
TEST_IMAGES, TEST_LABELS = toy_problem(seed=5, num_examples=40)
BATCH = 32
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
# Never improves after the first epoch: the metric would have to drop by 1e9.
NEVER = 1e9


def run(optimizer=OPTIMIZER, model=MODEL, **overrides):
    arguments = {"epochs": 3, "batch_size": BATCH, "runner": "loop", "progress": False}
    return fit(
        model, optimizer, TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS,
        **(arguments | overrides),
    )  # fmt: skip


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def snapshots():
    """A callback keeping a host copy of each epoch's params and batch stats."""
    kept = []

    def keep(state, record):
        kept.append(jax.device_get((state.params, state.batch_stats)))

    return kept, keep


@pytest.fixture(scope="module")
def stopped_run():
    return run(epochs=6, early_stopping=early_stopping(patience=2, min_delta=NEVER))


def test_early_stopping_stops_after_patience_and_restores_the_best(stopped_run):
    state, history = stopped_run
    # Epoch 1 improves on +inf; epochs 2 and 3 cannot: stop after 3 of the 6 epochs.
    assert [record["epoch"] for record in history["epochs"]] == [1, 2, 3]
    assert [record["epochs_without_improvement"] for record in history["epochs"]] == [0, 1, 2]
    summary = history["early_stopping"]
    assert summary["monitor"] == "test_loss"
    assert summary["best_epoch"] == 1 and summary["stopped_epoch"] == 3
    assert summary["restored_best"]
    assert summary["best_metric"] == pytest.approx(history["epochs"][0]["test_loss"], rel=1e-6)
    # Same seed, one epoch: bit-identical params and batch statistics to the restored ones.
    first, _ = run(epochs=1)
    assert_trees_equal(state.params, first.params)
    assert_trees_equal(state.batch_stats, first.batch_stats)
    assert int(state.step) == 3 * len(TRAIN_IMAGES) // BATCH  # the last epoch's step


def test_without_restore_the_last_params_are_returned(stopped_run):
    stopped, _ = stopped_run
    state, history = run(
        epochs=6, early_stopping=early_stopping(patience=2, min_delta=NEVER, restore_best=False)
    )
    assert history["early_stopping"]["stopped_epoch"] == 3
    assert not history["early_stopping"]["restored_best"]
    last, _ = run(epochs=3)
    assert_trees_equal(state.params, last.params)
    kernel = state.params["Dense_0"]["kernel"]
    assert not np.array_equal(kernel, stopped.params["Dense_0"]["kernel"])


def test_best_epoch_of_a_maximized_metric_matches_the_history():
    kept, keep = snapshots()
    state, history = run(
        epochs=4,
        monitor="test_accuracy",
        early_stopping=early_stopping(patience=10, mode="max"),
        callbacks=[keep],
    )
    accuracies = [record["test_accuracy"] for record in history["epochs"]]
    best = int(np.argmax(accuracies))  # the first of ties: a tie is no improvement
    assert history["early_stopping"]["best_epoch"] == best + 1
    assert history["early_stopping"]["stopped_epoch"] is None
    assert_trees_equal(state.params, kept[best][0])


def test_averaged_params_are_evaluated_with_fresh_batch_stats():
    kept, keep = snapshots()
    _, history = run(averaging=polyak_params(), callbacks=[keep])
    eval_step = make_eval_step(MODEL)
    template = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), TRAIN_IMAGES[:1])
    for epoch, record in enumerate(history["epochs"], start=1):
        # The arithmetic mean of the params after epochs 1..e, measured and evaluated again.
        trajectory = [params for params, _ in kept[:epoch]]
        params = jax.tree.map(lambda *leaves: np.mean(leaves, axis=0), *trajectory)
        stats = recompute_batch_stats(
            MODEL, params, TRAIN_IMAGES, batch_size=BATCH,
            batch_stats_template=template.batch_stats,
        )  # fmt: skip
        state = template._replace(params=params, batch_stats=stats)
        expected = evaluate(eval_step, state, TEST_IMAGES, TEST_LABELS, BATCH)
        assert record["test_loss_averaged"] == pytest.approx(expected["loss"], rel=1e-4)
        assert record["test_accuracy_averaged"] == pytest.approx(expected["accuracy"], abs=0.03)
        assert record["averaged_eval_time_s"] > 0


def test_averaging_without_batch_norm_equals_the_raw_params_at_first():
    model = TinyNet(batch_norm=False, dropout_rate=0.0)
    _, history = run(model=model, averaging=swa_params(start=3))
    for record in history["epochs"][:2]:  # before the window the average is the raw params
        assert record["test_loss_averaged"] == record["test_loss"]
    _, ema_history = run(model=model, averaging=ema_params(0.0))
    for record in ema_history["epochs"]:
        assert record["test_loss_averaged"] == record["test_loss"]


def test_early_stopping_on_the_averaged_metric_restores_averaged_params():
    kept, keep = snapshots()
    state, history = run(
        epochs=4,
        averaging=polyak_params(),
        monitor="test_loss_averaged",
        early_stopping=early_stopping(patience=2, min_delta=NEVER),
        callbacks=[keep],
    )
    assert history["early_stopping"]["stopped_epoch"] == 3
    # The best epoch is the first, where the average is the first epoch's params.
    assert_trees_equal(state.params, kept[0][0])


def test_reduce_on_plateau_scales_the_following_epochs():
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    optimizer = optax.chain(OPTIMIZER, scale_by_plateau(plateau))
    state, history = run(epochs=4, optimizer=optimizer, reduce_on_plateau=plateau)
    # Epoch 1 improves; every later one reduces: the scale used is 1, 1, 0.5, 0.25.
    assert [record["plateau_scale"] for record in history["epochs"]] == [1.0, 1.0, 0.5, 0.25]
    assert float(plateau_states(state.opt_state)[0].scale) == 0.125
    # Up to epoch 2 the run equals one without a plateau; from epoch 3 it does not.
    _, plain = run(epochs=3)
    for ours, theirs in zip(history["epochs"][:2], plain["epochs"][:2], strict=True):
        assert ours["test_loss"] == theirs["test_loss"]
    assert history["epochs"][2]["test_loss"] != plain["epochs"][2]["test_loss"]


@pytest.mark.slow  # compiles the training step once more, for the mesh
def test_all_tricks_together_on_a_mesh():
    """The tricks compose, and the plateau state written between epochs (outside the compiled
    runner) is accepted by the runner compiled for the mesh's layout."""
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    state, history = run(
        epochs=4,
        optimizer=optax.chain(OPTIMIZER, scale_by_plateau(plateau)),
        mesh=make_mesh(1),
        reduce_on_plateau=plateau,
        averaging=ema_params(0.5),
        early_stopping=early_stopping(patience=3, min_delta=NEVER),
    )
    assert [record["plateau_scale"] for record in history["epochs"]] == [1.0, 1.0, 0.5, 0.25]
    assert history["early_stopping"]["stopped_epoch"] == 4
    assert all(np.isfinite(record["test_loss_averaged"]) for record in history["epochs"])
    assert int(state.step) == 4 * len(TRAIN_IMAGES) // BATCH


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"early_stopping": 3}, "early_stopping"),
        ({"averaging": "ema"}, "averaging"),
        ({"reduce_on_plateau": 0.1}, "reduce_on_plateau"),
        ({"monitor": "loss"}, "monitor"),
        ({"monitor": "test_loss_averaged"}, "monitor"),
        ({"reduce_on_plateau": epoch_plateau()}, "scale_by_plateau"),
    ],
)
def test_invalid_trick_arguments_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        run(epochs=1, **overrides)


TIMINGS = {
    "runner_requested", "runner", "runner_step_time_s", "runner_cached", "compile_time_s",
    "epoch_time_s", "eval_time_s", "images_per_s", "averaged_eval_time_s",
}  # fmt: skip


def without_timings(history):
    return {
        "header": {k: v for k, v in history["header"].items() if k not in TIMINGS},
        "epochs": [{k: v for k, v in r.items() if k not in TIMINGS} for r in history["epochs"]],
        "early_stopping": history["early_stopping"],
    }


def stopped_and_averaged(**overrides):
    """Stops after epoch 3 of 6 (patience 2, nothing improves after epoch 1) and restores epoch
    1's parameters, which by then only the early-stopping state holds; EMA evaluated too."""
    return run(
        epochs=6,
        early_stopping=early_stopping(patience=2, min_delta=NEVER),
        averaging=ema_params(0.5),
        **overrides,
    )


@pytest.mark.parametrize("resume_from", [4, 6, 9])  # inside epoch 2, its end, the stop
def test_resuming_with_early_stopping_and_averaging_equals_the_uninterrupted_run(
        tmp_path, resume_from
):
    expected_state, expected_history = stopped_and_averaged()
    assert expected_history["early_stopping"]["stopped_epoch"] == 3
    assert expected_history["early_stopping"]["best_epoch"] == 1
    stopped_and_averaged(checkpoint_dir=tmp_path, checkpoint_every_steps=2, keep_checkpoints=100)
    manager = CheckpointManager(tmp_path)
    assert manager.steps()[-1] == 9
    for step in manager.steps():
        if step > resume_from:
            manager.delete(step)
    state, history = stopped_and_averaged(
        checkpoint_dir=tmp_path, checkpoint_every_steps=2, resume=True
    )
    assert_trees_equal(state.params, expected_state.params)
    assert_trees_equal(state.batch_stats, expected_state.batch_stats)
    assert_trees_equal(state.opt_state, expected_state.opt_state)
    assert int(state.step) == int(expected_state.step) == 9
    assert without_timings(history) == without_timings(expected_history)


def test_resuming_with_other_epoch_tricks_than_the_checkpoint_is_refused(tmp_path):
    run(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"resume: .*early_stopping or averaging"):
        run(
            epochs=1,
            checkpoint_dir=tmp_path,
            resume=True,
            early_stopping=early_stopping(patience=2),
        )
    assert CheckpointManager(tmp_path).steps() == [3]  # the checkpoint is kept




def test_resuming_with_reduce_on_plateau_alone_equals_the_uninterrupted_run(tmp_path):
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    optimizer = optax.chain(OPTIMIZER, scale_by_plateau(plateau))
    expected_state, expected_history = run(optimizer, epochs=4, reduce_on_plateau=plateau)
    run(optimizer, epochs=4, reduce_on_plateau=plateau, checkpoint_dir=tmp_path,
        checkpoint_every_steps=2, keep_checkpoints=100)  # fmt: skip
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > 5:  # inside epoch 2, after the plateau has halved the scale once
            manager.delete(step)
    state, history = run(optimizer, epochs=4, reduce_on_plateau=plateau, checkpoint_dir=tmp_path,
                         checkpoint_every_steps=2, resume=True)  # fmt: skip
    assert_trees_equal(state.params, expected_state.params)
    assert_trees_equal(state.opt_state, expected_state.opt_state)
    assert [r["plateau_scale"] for r in history["epochs"]] == [
        r["plateau_scale"] for r in expected_history["epochs"]
    ]
