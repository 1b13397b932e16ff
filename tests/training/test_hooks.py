"""Tests for jaxtricks.training.hooks: the hook protocol around fit's epochs, early stopping,
weight averaging and reduce-on-plateau as hooks (their choices watch validation metrics, never
test ones), their states surviving a resume, progress, the metrics file and the gradient-health
record, on a tiny made-up problem."""

import io
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import TinyNet, toy_problem

from jaxtricks.training.averaging import recompute_batch_stats
from jaxtricks.training.checkpoint import CheckpointHook, CheckpointManager
from jaxtricks.training.ensemble import create_ensemble
from jaxtricks.training.fit import fit, make_hooks
from jaxtricks.training.history import History
from jaxtricks.training.hooks import (
    AveragingHook,
    EarlyStoppingHook,
    EvaluationHook,
    HealthHook,
    Hook,
    LambdaHook,
    MetricsFileHook,
    PlateauHook,
    ProgressHook,
    health_record,
)
from jaxtricks.training.sharding import make_mesh
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step
from jaxtricks.tricks.averaging import ema_params, polyak_params, swa_params
from jaxtricks.tricks.diagnostics import gradient_health, update_health
from jaxtricks.tricks.plateau import epoch_plateau, plateau_states, scale_by_plateau

MODEL = TinyNet()  # batch norm and dropout
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=4, num_examples=96)  # 3 steps of 32
VAL_IMAGES, VAL_LABELS = toy_problem(seed=5, num_examples=40)
TEST_IMAGES, TEST_LABELS = toy_problem(seed=6, num_examples=30)
BATCH = 32
STEPS = len(TRAIN_IMAGES) // BATCH
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
# Never improves after the first epoch: the metric would have to drop by 1e9.
NEVER = 1e9
TIMINGS = {"epoch_time_s", "eval_time_s", "examples_per_s"}


def run(*callbacks, optimizer=OPTIMIZER, model=MODEL, validation=True, **overrides):
    arguments = {"epochs": 3, "batch_size": BATCH, "runner": "loop", "progress": False}
    return fit(
        model, optimizer, TRAIN_IMAGES, TRAIN_LABELS,
        validation_data=(VAL_IMAGES, VAL_LABELS) if validation else None,
        callbacks=list(callbacks), **(arguments | overrides),
    )  # fmt: skip


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def snapshots():
    """A callback keeping a host copy of each epoch's params and model state."""
    kept = []

    def keep(state, record):
        kept.append(jax.device_get((state.params, state.model_state)))

    return kept, keep


def without_timings(history):
    """The epochs without wall-clock measurements, and the early-stopping summary."""
    epochs = []
    for record in history.epochs:
        record = record.to_dict()
        kept = {k: v for k, v in record.items() if k not in TIMINGS}
        kept["metrics"] = {k: v for k, v in record["metrics"].items() if not k.endswith("_s")}
        epochs.append(kept)
    return epochs, history.header.get("early_stopping")


# ------------------------------------------------------------------------------- protocol


class Recorder(Hook):
    """Records every call it gets, and asks for a pause after the first step of each epoch."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, run):
        self.calls.append(("train_begin", run.epoch, sorted(run.evaluation_sets)))

    def on_epoch_begin(self, run, epoch):
        self.calls.append(("epoch_begin", epoch))

    def pause_steps(self, run, epoch):
        return [1]

    def on_pause(self, run, steps_done, totals):
        self.calls.append(("pause", steps_done, int(totals["steps"]), int(run.state.step)))

    def on_epoch_end(self, run, record):
        self.calls.append(("epoch_end", record.epoch, sorted(record.metrics)))

    def on_train_end(self, run):
        self.calls.append(("train_end", run.epoch))


@pytest.mark.slow
def test_hooks_are_called_in_the_documented_order():
    recorder = Recorder()
    run(recorder, EvaluationHook("test", TEST_IMAGES, TEST_LABELS), epochs=2)
    names = ["accuracy", "grad_norm", "loss", "test_accuracy", "test_loss", "val_accuracy",
             "val_loss"]
    assert recorder.calls == [
        ("train_begin", 0, ["test", "val"]),  # the evaluation hook (order 0) ran first
        ("epoch_begin", 1),
        ("pause", 1, 1, 1), ("pause", STEPS, STEPS, STEPS),
        ("epoch_end", 1, names),  # the record already holds the test set's numbers
        ("epoch_begin", 2),
        ("pause", 1, 1, STEPS + 1), ("pause", STEPS, STEPS, 2 * STEPS),
        ("epoch_end", 2, names),
        ("train_end", 2),
    ]  # fmt: skip


def test_make_hooks_wraps_functions_and_sorts_by_order():
    def fn(state, record):
        return False

    early, evaluation, progress = (EarlyStoppingHook(), EvaluationHook("t", TEST_IMAGES,
                                                                       TEST_LABELS),
                                   ProgressHook(bar=False))
    hooks = make_hooks([progress, fn, early, evaluation], progress=True)
    assert [type(hook).__name__ for hook in hooks] == [
        "EvaluationHook", "EarlyStoppingHook", "LambdaHook", "HealthHook", "ProgressHook",
    ]  # fmt: skip
    assert hooks[-1] is progress  # the given one, not a second
    assert hooks[2].fn is fn
    assert [type(hook).__name__ for hook in make_hooks([], progress=False, health=False)] == []


def test_a_true_callback_stops_the_run_and_kept_states_stay_valid():
    kept = []

    def keep_and_stop(state, record):
        kept.append(state)  # the state itself, not a copy
        return record.epoch == 2

    # The scan runner donates the state it trains; the states hooks saw must survive that.
    state, history = run(keep_and_stop, epochs=4, runner="scan")
    assert [record.epoch for record in history.epochs] == [1, 2]
    assert [int(s.step) for s in kept] == [STEPS, 2 * STEPS]
    assert not any(leaf.is_deleted() for s in kept for leaf in jax.tree.leaves(s))
    assert_trees_equal(kept[-1].params, state.params)
    first, last = (s.params["Dense_0"]["kernel"] for s in (kept[0], state))
    assert not np.array_equal(first, last)


def test_the_evaluation_hook_records_the_test_set_after_each_epoch():
    kept, keep = snapshots()
    state, history = run(EvaluationHook("test", TEST_IMAGES, TEST_LABELS), keep, epochs=2)
    eval_step = make_eval_step(MODEL)
    for record, (params, model_state) in zip(history.epochs, kept, strict=True):
        scored = state._replace(params=params, model_state=model_state)
        expected = evaluate(eval_step, scored, TEST_IMAGES, TEST_LABELS, batch_size=BATCH)
        assert record["test_loss"] == expected["loss"]
        assert record["test_accuracy"] == expected["accuracy"]
    assert history["test_loss"] != history["val_loss"]


def test_the_metrics_file_holds_the_history_after_every_epoch(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    seen = []

    def read_back(state, record):
        seen.append(History.from_json(path.read_text()) if path.exists() else None)

    # The metrics file hook (order 70) writes after a user hook (order 50) ran: the user hook
    # of epoch e sees the file of epoch e - 1.
    _, history = run(MetricsFileHook(path), read_back, epochs=2)
    assert seen[0] is None and [r.epoch for r in seen[1].epochs] == [1]
    written = History.from_json(path.read_text())
    assert written.epochs == history.epochs
    assert written.header["seed"] == history.header["seed"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary


def test_progress_prints_one_line_per_epoch_without_a_bar():
    stream = io.StringIO()
    run(ProgressHook(bar=False, stream=stream), epochs=2, progress=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"epoch {epoch}/2 - ")
        assert " - loss " in line and " - val_loss " in line and " - val_accuracy " in line


def test_progress_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="ProgressHook\\(bar=True\\) needs tqdm"):
        ProgressHook(bar=True)
    stream = io.StringIO()
    run(ProgressHook(stream=stream), epochs=1, progress=True)  # bar=None: lines instead
    assert stream.getvalue().startswith("epoch 1/1 - ")


# ------------------------------------------------------------------------- early stopping


@pytest.fixture(scope="module")
def stopped_run():
    return run(EarlyStoppingHook(patience=2, min_delta=NEVER), epochs=6)


def test_early_stopping_stops_after_patience_and_restores_the_best(stopped_run):
    state, history = stopped_run
    # Epoch 1 improves on +inf; epochs 2 and 3 cannot: stop after 3 of the 6 epochs.
    assert [record.epoch for record in history.epochs] == [1, 2, 3]
    assert history["epochs_without_improvement"] == [0, 1, 2]
    summary = history.header["early_stopping"]
    assert summary["monitor"] == "val_loss"
    assert summary["best_epoch"] == 1 and summary["stopped_epoch"] == 3
    assert summary["restored_best"]
    assert summary["best_metric"] == pytest.approx(history["val_loss"][0], rel=1e-6)
    # Same seed, one epoch: bit-identical params and batch statistics to the restored ones.
    first, _ = run(epochs=1)
    assert_trees_equal(state.params, first.params)
    assert_trees_equal(state.model_state, first.model_state)
    assert int(state.step) == 3 * STEPS  # the last epoch's step


def test_without_restore_the_last_params_are_returned(stopped_run):
    stopped, _ = stopped_run
    state, history = run(EarlyStoppingHook(patience=2, min_delta=NEVER, restore_best=False),
                         epochs=6)
    assert history.header["early_stopping"]["stopped_epoch"] == 3
    assert not history.header["early_stopping"]["restored_best"]
    last, _ = run(epochs=3)
    assert_trees_equal(state.params, last.params)
    kernel = state.params["Dense_0"]["kernel"]
    assert not np.array_equal(kernel, stopped.params["Dense_0"]["kernel"])


def test_best_epoch_of_a_maximized_metric_matches_the_history():
    kept, keep = snapshots()
    hook = EarlyStoppingHook("val_accuracy", patience=10)  # "auto": an accuracy is maximized
    state, history = run(hook, keep, epochs=4)
    accuracies = history["val_accuracy"]
    best = int(np.argmax(accuracies))  # the first of ties: a tie is no improvement
    assert history.header["early_stopping"]["best_epoch"] == best + 1
    assert history.header["early_stopping"]["stopped_epoch"] is None
    assert_trees_equal(state.params, kept[best][0])


def test_a_training_metric_may_be_monitored_without_validation_data():
    kept, keep = snapshots()
    state, history = run(EarlyStoppingHook("loss", patience=1, min_delta=NEVER), keep,
                         validation=False, epochs=4)
    assert not any(name.startswith("val_") for name in history.metric_names())
    assert history.header["early_stopping"]["stopped_epoch"] == 2
    assert_trees_equal(state.params, kept[0][0])


# -------------------------------------------------------------------------------- averaging


def test_averaged_params_are_evaluated_with_fresh_batch_stats():
    kept, keep = snapshots()
    _, history = run(AveragingHook(polyak_params()), EvaluationHook("test", TEST_IMAGES,
                                                                    TEST_LABELS), keep)
    eval_step = make_eval_step(MODEL)
    template = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), TRAIN_IMAGES[:1])
    for epoch, record in enumerate(history.epochs, start=1):
        # The arithmetic mean of the params after epochs 1..e, measured and evaluated again.
        trajectory = [params for params, _ in kept[:epoch]]
        params = jax.tree.map(lambda *leaves: np.mean(leaves, axis=0), *trajectory)
        stats = recompute_batch_stats(
            MODEL, params, TRAIN_IMAGES, batch_size=BATCH,
            batch_stats_template=template.model_state["batch_stats"],
        )  # fmt: skip
        state = template._replace(params=params, model_state={"batch_stats": stats})
        for name, images, labels in (("val", VAL_IMAGES, VAL_LABELS),
                                     ("test", TEST_IMAGES, TEST_LABELS)):
            expected = evaluate(eval_step, state, images, labels, batch_size=BATCH)
            assert record[f"{name}_loss_averaged"] == pytest.approx(expected["loss"], rel=1e-4)
            assert record[f"{name}_accuracy_averaged"] == pytest.approx(expected["accuracy"],
                                                                        abs=0.03)
        assert record["averaged_eval_time_s"] > 0
    # After one epoch the average is that epoch's params, evaluated with statistics measured
    # again rather than the running ones: the numbers differ.
    assert history["val_loss_averaged"][0] != pytest.approx(history["val_loss"][0], rel=1e-3)


@pytest.mark.slow
def test_averaging_without_batch_norm_equals_the_raw_params_at_first():
    model = TinyNet(batch_norm=False, dropout_rate=0.0)
    _, history = run(AveragingHook(swa_params(start=3)), model=model, epochs=4)
    # Before the window and at its first epoch the average is the raw params; then it is not.
    for record in history.epochs[:3]:
        assert record["val_loss_averaged"] == record["val_loss"]
    assert history.epochs[3]["val_loss_averaged"] != history.epochs[3]["val_loss"]
    _, ema_history = run(AveragingHook(ema_params(0.0)), model=model)
    for record in ema_history.epochs:
        assert record["val_loss_averaged"] == record["val_loss"]


def test_early_stopping_on_the_averaged_metric_restores_averaged_params():
    kept, keep = snapshots()
    state, history = run(
        AveragingHook(polyak_params()),
        EarlyStoppingHook("val_loss_averaged", patience=2, min_delta=NEVER),
        keep,
        epochs=4,
    )
    assert history.header["early_stopping"]["stopped_epoch"] == 3
    # The best epoch is the first, where the average is the first epoch's params.
    assert_trees_equal(state.params, kept[0][0])


# ---------------------------------------------------------------------------------- plateau


@pytest.mark.slow
def test_reduce_on_plateau_scales_the_following_epochs():
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    optimizer = optax.chain(OPTIMIZER, scale_by_plateau(plateau))
    state, history = run(PlateauHook(plateau), epochs=4, optimizer=optimizer)
    # Epoch 1 improves; every later one reduces: the scale used is 1, 1, 0.5, 0.25.
    assert history["plateau_scale"] == [1.0, 1.0, 0.5, 0.25]
    assert float(plateau_states(state.opt_state)[0].scale) == 0.125
    # Up to epoch 2 the run equals one without a plateau; from epoch 3 it does not.
    _, plain = run(epochs=3)
    assert history["val_loss"][:2] == plain["val_loss"][:2]
    assert history["val_loss"][2] != plain["val_loss"][2]


def test_the_plateau_may_watch_a_training_metric():
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    optimizer = optax.chain(OPTIMIZER, scale_by_plateau(plateau))
    _, history = run(PlateauHook(plateau, monitor="loss"), epochs=3, optimizer=optimizer,
                     validation=False)
    assert history["plateau_scale"] == [1.0, 1.0, 0.5]


@pytest.mark.slow  # compiles the training step once more, for the mesh
def test_all_tricks_together_on_a_mesh():
    """The tricks compose, and the plateau state written between epochs (outside the compiled
    runner) is accepted by the runner compiled for the mesh's layout."""
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    state, history = run(
        PlateauHook(plateau),
        AveragingHook(ema_params(0.5)),
        EarlyStoppingHook(patience=3, min_delta=NEVER),
        EvaluationHook("test", TEST_IMAGES, TEST_LABELS),
        epochs=4,
        optimizer=optax.chain(OPTIMIZER, scale_by_plateau(plateau)),
        mesh=make_mesh(1),
    )
    assert history["plateau_scale"] == [1.0, 1.0, 0.5, 0.25]
    assert history.header["early_stopping"]["stopped_epoch"] == 4
    assert all(np.isfinite(history["test_loss_averaged"]))
    assert int(state.step) == 4 * STEPS


@pytest.mark.slow
def test_a_hook_given_to_a_second_run_starts_afresh():
    stopping, averaging = EarlyStoppingHook(patience=2, min_delta=NEVER), AveragingHook(
        polyak_params())
    run(stopping, averaging, epochs=6)
    again_state, again = run(stopping, averaging, epochs=6)
    fresh_state, fresh = run(EarlyStoppingHook(patience=2, min_delta=NEVER),
                             AveragingHook(polyak_params()), epochs=6)
    assert again.header["early_stopping"] == fresh.header["early_stopping"]
    assert again["val_loss_averaged"] == fresh["val_loss_averaged"]
    assert_trees_equal(again_state.params, fresh_state.params)


# ------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EarlyStoppingHook("test_loss"), "monitor must be a training or validation"),
        (lambda: EarlyStoppingHook("test_accuracy_averaged"), "no longer a test result"),
        (lambda: EarlyStoppingHook(""), "monitor must be a metric name"),
        (lambda: EarlyStoppingHook(patience=0), "patience"),
        (lambda: EarlyStoppingHook(mode="up"), "mode"),
        (lambda: EarlyStoppingHook(min_delta=-1.0), "min_delta"),
        (lambda: PlateauHook(epoch_plateau(), monitor="test_loss"), "monitor"),
        (lambda: PlateauHook(0.1), "plateau must be an EpochPlateau"),
        (lambda: AveragingHook("ema"), "averaging must be a ParamAveraging"),
        (lambda: EvaluationHook("val", TEST_IMAGES, TEST_LABELS), "other than 'val'"),
        (lambda: EvaluationHook("test set", TEST_IMAGES, TEST_LABELS), "identifier"),
        (lambda: LambdaHook("stop"), "fn must be a function"),
        (lambda: ProgressHook(bar="yes"), "bar must be a bool or None"),
        (lambda: MetricsFileHook(3), "path must be a file path"),
    ],
)
def test_invalid_hook_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("callbacks", "overrides", "message"),
    [
        (lambda: [EarlyStoppingHook()], {"validation": False},
         "records no 'val_loss' \\(fit has no validation data"),
        (lambda: [EarlyStoppingHook("val_bogus")], {}, "records no 'val_bogus'"),
        (lambda: [EarlyStoppingHook("val_loss_averaged")], {}, "records no 'val_loss_averaged'"),
        (lambda: [PlateauHook(epoch_plateau())], {}, "scale_by_plateau"),
        (lambda: [EvaluationHook("t", TEST_IMAGES, TEST_LABELS)] * 2, {}, "already evaluates"),
        (lambda: ["save"], {}, "callbacks must be hooks or functions"),
    ],
)
def test_hooks_a_run_cannot_serve_are_refused(callbacks, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(*callbacks(), epochs=1, **overrides)


# ---------------------------------------------------------------------------------- resume


def stopped_and_averaged(*callbacks):
    """Stops after epoch 3 of 6 (patience 2, nothing improves after epoch 1) and restores epoch
    1's parameters, which by then only the early-stopping state holds; EMA evaluated too."""
    return run(
        EarlyStoppingHook(patience=2, min_delta=NEVER),
        AveragingHook(ema_params(0.5)),
        *callbacks,
        epochs=6,
    )


@pytest.mark.slow
@pytest.mark.parametrize("resume_from", [4, 6, 9])  # inside epoch 2, its end, the stop
def test_resuming_with_early_stopping_and_averaging_equals_the_uninterrupted_run(
        tmp_path, resume_from
):
    expected_state, expected_history = stopped_and_averaged()
    assert expected_history.header["early_stopping"]["stopped_epoch"] == 3
    assert expected_history.header["early_stopping"]["best_epoch"] == 1
    stopped_and_averaged(CheckpointHook(tmp_path, every_steps=2, keep=100))
    manager = CheckpointManager(tmp_path)
    assert manager.steps()[-1] == 9
    for step in manager.steps():
        if step > resume_from:
            manager.delete(step)
    state, history = stopped_and_averaged(CheckpointHook(tmp_path, every_steps=2, resume=True))
    assert_trees_equal(state.params, expected_state.params)
    assert_trees_equal(state.model_state, expected_state.model_state)
    assert_trees_equal(state.opt_state, expected_state.opt_state)
    assert int(state.step) == int(expected_state.step) == 9
    assert without_timings(history) == without_timings(expected_history)


def test_resuming_with_other_hooks_than_the_checkpoint_is_refused(tmp_path):
    run(CheckpointHook(tmp_path), epochs=1)
    with pytest.raises(ValueError, match=r"resume: .*another model, optimizer or hooks"):
        run(CheckpointHook(tmp_path, resume=True), EarlyStoppingHook(patience=2), epochs=1)
    assert CheckpointManager(tmp_path).steps() == [STEPS]  # the checkpoint is kept


@pytest.mark.slow
def test_resuming_with_reduce_on_plateau_alone_equals_the_uninterrupted_run(tmp_path):
    plateau = epoch_plateau(factor=0.5, patience=1, min_delta=NEVER)
    optimizer = optax.chain(OPTIMIZER, scale_by_plateau(plateau))
    expected_state, expected_history = run(PlateauHook(plateau), optimizer=optimizer, epochs=4)
    run(PlateauHook(plateau), CheckpointHook(tmp_path, every_steps=2, keep=100),
        optimizer=optimizer, epochs=4)  # fmt: skip
    manager = CheckpointManager(tmp_path)
    for step in manager.steps():
        if step > 5:  # inside epoch 2, after the plateau has halved the scale once
            manager.delete(step)
    state, history = run(PlateauHook(plateau), CheckpointHook(tmp_path, every_steps=2,
                                                              resume=True),
                         optimizer=optimizer, epochs=4)
    assert_trees_equal(state.params, expected_state.params)
    assert_trees_equal(state.opt_state, expected_state.opt_state)
    assert history["plateau_scale"] == expected_history["plateau_scale"]


# --------------------------------------------------------------------------- gradient health

PARAMS = {
    "Dense_0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.zeros(2)},
    "head": {"kernel": jnp.array([[1.0], [1.0]]), "bias": jnp.array([1.0])},
}
GRADS = {
    "Dense_0": {"kernel": jnp.full((2, 2), 1e-9), "bias": jnp.zeros(2)},
    "head": {"kernel": jnp.array([[2e3], [0.0]]), "bias": jnp.array([0.0])},
}


def recorded(tx):
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    return health_record(state)


def test_the_health_record_holds_the_norms_by_hand():
    tx = optax.chain(gradient_health(), optax.sgd(0.5), update_health())
    record = recorded(tx)
    grad_dense, grad_head = np.sqrt(4 * 1e-18), 2e3
    assert record["module_grad_norms"] == {
        "Dense_0": pytest.approx(grad_dense, rel=1e-6), "head": pytest.approx(grad_head),
    }  # fmt: skip
    assert record["module_param_norms"] == {"Dense_0": 5.0, "head": pytest.approx(np.sqrt(3))}
    assert record["module_grad_ratios"]["head"] == pytest.approx(grad_head / np.sqrt(3), rel=1e-6)
    assert record["grad_norm"] == pytest.approx(np.hypot(grad_dense, grad_head), rel=1e-6)
    assert record["vanishing"] == ["Dense_0"] and record["exploding"] == ["head"]
    assert record["module_update_norms"]["head"] == pytest.approx(0.5 * grad_head, rel=1e-6)
    assert record["update_norm"] == pytest.approx(0.5 * record["grad_norm"], rel=1e-6)
    assert all(isinstance(value, float) for value in record["module_grad_norms"].values())


def test_the_health_record_of_either_state_alone_and_of_none():
    assert set(recorded(optax.chain(update_health(), optax.sgd(0.1)))) == {
        "update_norm", "module_update_norms", "module_update_ratios",
    }  # fmt: skip
    assert "update_norm" not in recorded(optax.chain(gradient_health(), optax.sgd(0.1)))
    assert recorded(optax.sgd(0.1)) is None


def test_two_gradient_states_or_a_batched_one_are_refused(getkey):
    with pytest.raises(ValueError, match="at most one"):
        recorded(optax.chain(gradient_health(), gradient_health(), optax.sgd(0.1)))
    model, tx = TinyNet(), optax.chain(gradient_health(), optax.sgd(0.1))
    images, _ = toy_problem(seed=0, num_examples=4)
    states = create_ensemble(model, tx, jax.random.split(getkey(), 2), jnp.asarray(images[:1]))
    with pytest.raises(ValueError, match="ensemble_member"):
        health_record(states.opt_state)


@pytest.mark.slow
def test_fit_logs_the_health_of_the_last_step_of_every_epoch():
    tx = optax.chain(gradient_health(), optax.sgd(0.05), update_health())
    state, history = run(optimizer=tx, epochs=2)
    records = [record.info["health"] for record in history.epochs]
    assert records[0] != records[1]
    assert records[-1] == health_record(state.opt_state)
    for record in records:
        for name, norm in record["module_grad_norms"].items():
            assert record["module_update_norms"][name] == pytest.approx(0.05 * norm, rel=1e-5)
    _, plain = run(epochs=1)
    assert "health" not in plain.epochs[0].info
    assert any(isinstance(hook, HealthHook) for hook in make_hooks([], progress=False))
