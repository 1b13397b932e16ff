"""Tests for jaxtricks.training.fit: the contract, history, determinism, validation, models."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from training_toys import CLASSES, TinyNet, assert_trees_equal, host, toy_problem

import jaxtricks as jt
from jaxtricks.backend import PLAIN, speed_paths, use_speed_paths
from jaxtricks.training import epochs
from jaxtricks.training.epochs import RUNNERS, epoch_indices
from jaxtricks.training.fit import fit, split_validation
from jaxtricks.training.history import History
from jaxtricks.training.hooks import EvaluationHook, LambdaHook
from jaxtricks.training.state import create_train_state

MODEL = TinyNet()
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
TRAIN_IMAGES, TRAIN_LABELS = toy_problem(seed=2, num_examples=260)  # 8 steps of 32, 4 dropped
VAL_IMAGES, VAL_LABELS = toy_problem(seed=3, num_examples=70)
BATCH = 32
STEPS = len(TRAIN_IMAGES) // BATCH

HEADER_KEYS = {
    "seed", "batch_size", "epochs", "train_examples", "validation_examples",
    "steps_per_epoch", "backend", "device_kind", "device_count", "process_count", "jax_version",
    "xla_flags", "speed_paths", "runner", "runner_step_time_s", "compile_time_s", "skip_nonfinite",
    "data_parallel_devices", "shard_optimizer_state", "loss", "metrics", "precision",
    "batch_transform",
}  # fmt: skip
# What may differ between two runs of the same training: timings and the runner that was timed.
TIMING_KEYS = {"runner", "runner_step_time_s", "compile_time_s"}


def run(**overrides):
    arguments = {
        "epochs": 2, "batch_size": BATCH, "seed": 0, "runner": "loop", "progress": False,
        "validation_data": (VAL_IMAGES, VAL_LABELS),
    } | overrides  # fmt: skip
    return fit(MODEL, OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS, **arguments)


@pytest.fixture(scope="module")
def reference():
    state, history = run()
    return host(state), history


def without_timings(history: History):
    records = []
    for record in history.to_dict()["epochs"]:
        record = {k: v for k, v in record.items() if not k.endswith("_s")}
        record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.endswith("_s")}
        records.append(record)
    header = {k: v for k, v in history.header.items() if k not in TIMING_KEYS}
    return header, records


def test_history_has_every_key_and_learns(reference):
    state, history = reference
    assert set(history.header) == HEADER_KEYS
    assert history.header["seed"] == 0 and history.header["steps_per_epoch"] == STEPS
    assert history.header["validation_examples"] == len(VAL_IMAGES)
    assert history.header["loss"] == "softmax_cross_entropy"
    assert history.header["metrics"] == ["accuracy"]
    assert history.header["compile_time_s"] > 0
    assert [record.epoch for record in history.epochs] == [1, 2]
    for record in history.epochs:
        assert list(record.metrics) == ["loss", "accuracy", "grad_norm", "val_loss",
                                        "val_accuracy"]
        assert record.skipped_steps == 0 and record.learning_rate is None
        assert record.examples_per_s > 0 and record.epoch_time_s > 0 and record.eval_time_s > 0
    first, last = history.epochs
    assert int(state.step) == last.step == 2 * STEPS
    assert last["loss"] < first["loss"]
    assert history["val_accuracy"][-1] > 0.9
    assert History.from_json(history.to_json()) == history


@pytest.mark.parametrize("runner", ["loop", "scan", "auto"])
@pytest.mark.slow
def test_same_seed_gives_bit_identical_training_with_every_runner(reference, runner, monkeypatch):
    monkeypatch.setattr(epochs, "_CHOICES", {})
    expected_state, expected_history = reference
    state, history = run(runner=runner)
    assert_trees_equal(host(state), expected_state)
    assert without_timings(history) == without_timings(expected_history)
    assert history.header["runner"] in RUNNERS
    if runner == "auto":
        times = history.header["runner_step_time_s"]
        assert set(times) == set(RUNNERS) and all(value > 0 for value in times.values())
        assert history.header["runner"] == min(times, key=times.get)


def test_the_backend_chooses_the_runner_by_default(monkeypatch):
    monkeypatch.setattr(epochs, "_CHOICES", {})
    _, history = run(runner=None)
    assert history.header["speed_paths"] == speed_paths()._asdict()
    expected = speed_paths().runner
    assert history.header["runner"] == expected or expected == "auto"


def test_other_seed_gives_other_training(reference):
    expected_state, expected_history = reference
    state, history = run(seed=1)
    kernel = host(state.params["Dense_0"]["kernel"])
    assert not np.array_equal(kernel, expected_state.params["Dense_0"]["kernel"])
    assert history["loss"][0] != expected_history["loss"][0]


def test_continuing_from_a_state_continues_the_same_run(reference):
    expected_state, expected_history = reference
    state, first = run(epochs=1)
    state, second = run(epochs=1, initial_state=state)
    assert_trees_equal(host(state), expected_state)
    assert [record.epoch for record in second.epochs] == [2]
    assert without_timings(first)[1] + without_timings(second)[1] == (
        without_timings(expected_history)[1]
    )


def test_validation_split_holds_out_the_last_rows(reference):
    images = np.concatenate([TRAIN_IMAGES, VAL_IMAGES])
    labels = np.concatenate([TRAIN_LABELS, VAL_LABELS])
    split = len(VAL_IMAGES) / len(images)
    (x, _), (x_val, y_val) = split_validation(images, labels, None, split)
    np.testing.assert_array_equal(x_val, VAL_IMAGES)
    np.testing.assert_array_equal(y_val, VAL_LABELS)
    assert x.shape == TRAIN_IMAGES.shape
    expected_state, expected_history = reference
    state, history = fit(MODEL, OPTIMIZER, images, labels, validation_split=split, epochs=2,
                         batch_size=BATCH, runner="loop", progress=False)
    assert_trees_equal(host(state), expected_state)
    assert without_timings(history) == without_timings(expected_history)


def test_without_validation_data_there_are_no_val_metrics():
    _, history = run(validation_data=None, epochs=1)
    assert list(history.epochs[0].metrics) == ["loss", "accuracy", "grad_norm"]
    assert history.header["validation_examples"] == 0


def test_nonfinite_examples_are_skipped_and_counted():
    _, data_key = jax.random.split(jax.random.key(0))
    order = [np.asarray(epoch_indices(data_key, e, len(TRAIN_IMAGES), BATCH)) for e in (1, 2, 3)]
    poisoned = int(order[0][2, 5])
    images = TRAIN_IMAGES.copy()
    images[poisoned] = np.nan
    state, history = fit(
        MODEL, OPTIMIZER, images, TRAIN_LABELS, validation_data=(VAL_IMAGES, VAL_LABELS),
        epochs=3, batch_size=BATCH, runner="loop", progress=False,
    )  # fmt: skip
    expected = [int(poisoned in indices) for indices in order]
    assert [record.skipped_steps for record in history.epochs] == expected
    assert all(np.isfinite(loss) for loss in history["loss"])
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(host(state.params)))
    assert history["val_accuracy"][-1] > 0.9


@pytest.mark.slow
def test_learning_rate_is_read_from_the_optimizer_and_callbacks_can_stop(capsys):
    schedule = optax.linear_schedule(0.05, 0.01, transition_steps=3 * STEPS)
    calls = []

    def record_calls(state, record):
        calls.append((int(state.step), record.epoch))

    def stop_after_two(state, record):
        return record.epoch == 2

    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule, momentum=0.9)
    _, history = fit(
        MODEL, optimizer, TRAIN_IMAGES, TRAIN_LABELS, validation_data=(VAL_IMAGES, VAL_LABELS),
        epochs=3, batch_size=BATCH, runner="loop", progress=True,
        callbacks=[stop_after_two, record_calls],
    )  # fmt: skip
    assert calls == [(STEPS, 1), (2 * STEPS, 2)]
    assert len(history.epochs) == 2
    for record in history.epochs:
        assert record.learning_rate == pytest.approx(float(schedule(record.step - 1)))
    assert history["learning_rate"][0] > history["learning_rate"][1]
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and "epoch 2/3" in err and "val_accuracy" in err


def test_without_tqdm_progress_is_one_line_per_epoch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    run(progress=True, epochs=2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 - ") and " - val_loss " in lines[0]


@pytest.mark.parametrize("paths", [PLAIN, PLAIN._replace(runner="scan")],
                         ids=["donating loop", "scan"])
def test_states_kept_by_callbacks_stay_valid(paths):
    kept = []
    with use_speed_paths(paths):
        state, _ = run(epochs=3, runner=None, callbacks=[lambda s, r: kept.append(s)])
    assert len(kept) == 3
    for earlier in kept:
        assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(earlier))
        np.asarray(earlier.params["Dense_0"]["kernel"])
    assert_trees_equal(host(kept[-1]), host(state))


@pytest.mark.slow
def test_plain_and_cpu_speed_paths_give_the_same_training():
    from jaxtricks.models import CNN

    model = CNN(features=(4, 8), hidden=16, use_batch_norm=True, dropout_rate=0.1,
                num_classes=CLASSES)
    images = np.tile(TRAIN_IMAGES, (1, 2, 2, 1))[:128]  # 16x16 inputs for two poolings
    labels = TRAIN_LABELS[:128]
    results = []
    for paths in (PLAIN, speed_paths("cpu")._replace(runner="scan")):
        with use_speed_paths(paths):
            state, history = fit(model, jt.adam(1e-2), images, labels, epochs=2, batch_size=32,
                                 progress=False)
        results.append((host(state), history["loss"]))
    (plain, plain_loss), (fast, fast_loss) = results
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_loss_of_ones_own_trains_an_autoencoder():
    x = TRAIN_IMAGES.reshape(len(TRAIN_IMAGES), -1)

    def mse(outputs, y):
        return jnp.mean((outputs - y) ** 2, axis=-1)

    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(x.shape[1])])
    _, history = fit(model, jt.adam(1e-2), x, x, validation_split=0.2, loss_fn=mse,
                         metrics={"mae": lambda o, y: jnp.mean(jnp.abs(o - y), axis=-1)},
                         epochs=5, batch_size=BATCH, progress=False)
    assert history.header["metrics"] == ["mae"]
    assert list(history.epochs[0].metrics) == ["loss", "mae", "grad_norm", "val_loss",
                                               "val_mae"]
    assert history["val_loss"][-1] < 0.7 * history["val_loss"][0]


def test_label_smoothing_through_optax_losses():
    def smoothed(outputs, labels):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, CLASSES), 0.1)
        return optax.losses.softmax_cross_entropy(outputs, targets)

    accuracy = {"accuracy": jt.training.accuracy}
    _, history = run(loss_fn=smoothed, metrics=accuracy, epochs=2)
    assert history.header["loss"] == "smoothed"
    assert history["val_accuracy"][-1] > 0.9
    # A smoothed target keeps the loss above the smoothing's own entropy.
    assert min(history["loss"]) > 0.1


@pytest.mark.slow
def test_multi_steps_accumulates_gradients():
    multi = optax.MultiSteps(OPTIMIZER, every_k_schedule=4)
    # optax.MultiSteps mixes int32 and float32 in its own code: not strict-promotion clean.
    with jax.numpy_dtype_promotion("standard"):
        state, history = fit(
            MODEL, multi, TRAIN_IMAGES, TRAIN_LABELS, validation_data=(VAL_IMAGES, VAL_LABELS),
            epochs=3, batch_size=BATCH, runner="loop", progress=False)
    inner = state.opt_state
    assert int(inner.gradient_step) == 3 * STEPS // 4
    assert int(state.step) == 3 * STEPS
    assert history["val_accuracy"][-1] > 0.8


class _NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(64, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(16, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.dense(x.reshape((x.shape[0], -1)))))
        return self.head(self.dropout(x))


@pytest.mark.slow
def test_an_nnx_model_is_trained_in_place():
    model = _NnxNet(nnx.Rngs(0, dropout=1))
    before = np.asarray(model.head.kernel[...]).copy()
    state, history = fit(model, jt.adam(1e-2), TRAIN_IMAGES, TRAIN_LABELS,
                         validation_data=(VAL_IMAGES, VAL_LABELS), epochs=3, batch_size=BATCH,
                         progress=False)
    assert history["val_accuracy"][-1] > 0.9
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]),
                                  np.asarray(state.params["head"]["kernel"][...]))
    assert not np.array_equal(before, np.asarray(model.head.kernel[...]))
    assert float(jnp.abs(model.norm.mean[...]).sum()) > 0
    logits = model(jnp.asarray(VAL_IMAGES))  # left in eval() mode: deterministic
    np.testing.assert_array_equal(logits, model(jnp.asarray(VAL_IMAGES)))


class _NeedsMode(nn.Module):
    @nn.compact
    def __call__(self, x, mode):
        return nn.Dense(CLASSES)(x.reshape((x.shape[0], -1)))


class _Scalar(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]


def test_an_unusable_model_says_how_fit_calls_it():
    with pytest.raises(ValueError, match=r"model: fit initializes it .* model\.apply\(variables, "
                                         r"x, rngs=.*failed: TypeError"):
        fit(_NeedsMode(), OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"outputs of shape \(batch, classes\).*pass loss_fn"):
        fit(_Scalar(), OPTIMIZER, TRAIN_IMAGES, TRAIN_LABELS, epochs=1, progress=False)


def test_a_test_monitor_is_refused():
    with pytest.raises(ValueError, match="test set"):
        jt.training.EarlyStoppingHook("test_loss", patience=2)


def test_import_loads_neither_orbax_nor_matplotlib_nor_tqdm_nor_flax():
    code = ("import sys, jaxtricks; jaxtricks.adam(1e-3); "
            "print(sorted(m for m in ('orbax.checkpoint', 'matplotlib', 'tqdm', 'flax') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_state_in_the_middle_of_an_epoch_is_refused():
    state = create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(TRAIN_IMAGES[:2]))
    state = state._replace(step=jnp.array(STEPS // 2, jnp.int32))
    with pytest.raises(ValueError, match="initial_state"):
        run(initial_state=state)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": len(TRAIN_IMAGES) + 1}, "batch_size"),
        ({"batch_size": 8.0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"runner": "unrolled"}, "runner"),
        ({"callbacks": [3]}, "callbacks"),
        ({"skip_nonfinite": None}, "skip_nonfinite"),
        ({"progress": "yes"}, "progress"),
        ({"initial_state": {"params": {}}}, "initial_state"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"validation_split": -0.1}, "validation_split"),
        ({"validation_split": 0.2}, "validation_data or validation_split"),
        ({"validation_data": (VAL_IMAGES,)}, "validation_data must be a pair"),
        ({"validation_data": (VAL_IMAGES, VAL_LABELS[:-1])}, r"validation_data\[1\]"),
        ({"validation_data": (VAL_IMAGES, VAL_LABELS + 3)}, "validation y"),
        ({"y": TRAIN_LABELS[:-1]}, "y has 259 examples"),
        ({"y": TRAIN_LABELS.astype(np.float32)}, "y must hold integer labels"),
        ({"y": TRAIN_LABELS + 3}, r"y must hold integer labels in \[0, 2\]"),
        ({"x": TRAIN_IMAGES[:0], "y": TRAIN_LABELS[:0]}, "x must have a leading axis"),
        ({"x": [1, 2]}, r"x\[0\] must be an array"),
        ({"loss_fn": "mse"}, "loss_fn"),
        ({"metrics": {"loss": jt.training.accuracy}}, "reserved"),
        ({"model": lambda x: x}, "model"),
        ({"optimizer": optax.sgd}, "optimizer"),
    ],
)
def test_bad_arguments_are_refused(overrides, name):
    arguments = {
        "model": MODEL, "optimizer": OPTIMIZER, "x": TRAIN_IMAGES, "y": TRAIN_LABELS,
        "validation_data": (VAL_IMAGES, VAL_LABELS),
        "epochs": 1, "batch_size": BATCH, "runner": "loop", "progress": False,
    } | overrides  # fmt: skip
    with pytest.raises(ValueError, match=name):
        fit(**arguments)


def test_hooks_run_in_their_order():
    order = []

    class Named(LambdaHook):
        def __init__(self, name, position):
            super().__init__(lambda state, record: order.append(name))
            self.order = position

    run(epochs=1, callbacks=[Named("late", 75), EvaluationHook("other", VAL_IMAGES, VAL_LABELS),
                             Named("early", 5)])
    assert order == ["early", "late"]
