"""``jaxtricks train`` end to end: flags, outputs, determinism, errors.

The fast tests train on small made-up IDX files written here (the checksum table is patched so
they verify); the slow test trains on real MNIST.
"""

import hashlib
import json

import numpy as np
import pytest

from jaxtricks.cli import train as train_cli
from jaxtricks.cli.main import build_parser, main
from jaxtricks.data import datasets, write_idx


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A data folder with 256 train and 64 test 28×28 images of two easily told classes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    table = {}

    def images_and_labels(n):
        labels = (np.arange(n) % 2).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[labels == 1, 8:20, 8:20] = 250
        return images, labels

    train, test = images_and_labels(256), images_and_labels(64)
    for name, array in zip(datasets.FILES, (*train, *test), strict=True):
        write_idx(folder / name, array)
        table[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(datasets, "SHA256", {**datasets.SHA256, "mnist": table})
    return folder


def _train(folder, out, *extra):
    argv = [
        "train", "--data-dir", str(folder), "--out", str(out), "--epochs", "2",
        "--batch-size", "32", "--model", "mlp", "--no-progress", "--runner", "loop", *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_train_writes_metrics_and_curves_and_learns(fake_mnist, tmp_path, capsys):
    metrics = _train(fake_mnist, tmp_path / "run")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epochs = metrics["epochs"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate",
                "epoch_time_s"):
        assert all(np.isfinite(r[key]) for r in epochs), key
    assert epochs[-1]["test_accuracy"] > 0.9
    assert 0 < epochs[0]["elapsed_s"] < epochs[1]["elapsed_s"]
    assert metrics["header"]["arguments"]["model"] == "mlp"
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final_test_accuracy"] == epochs[-1]["test_accuracy"]


def test_same_seed_same_metrics_other_seed_other_metrics(fake_mnist, tmp_path):
    strip = lambda m: [
        {k: v for k, v in r.items() if not k.endswith("_s")}
        for r in m["epochs"]
    ]
    first = strip(_train(fake_mnist, tmp_path / "a", "--seed", "3"))
    again = strip(_train(fake_mnist, tmp_path / "b", "--seed", "3"))
    other = strip(_train(fake_mnist, tmp_path / "c", "--seed", "4"))
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    "flags",
    [
        ["--optimizer", "momentum_lesson", "--schedule", "per_epoch", "--learning-rate", "0.05"],
        ["--optimizer", "nesterov", "--schedule", "step", "--clip", "global_norm"],
        ["--optimizer", "adamw", "--weight-decay", "1e-4", "--schedule", "warmup_cosine"],
        ["--optimizer", "rmsprop", "--clip", "value", "--clip-threshold", "10", "--learning-rate",
         "1e-3"],
        ["--optimizer", "normalized_sgd", "--learning-rate", "0.1", "--schedule", "cosine"],
        ["--optimizer", "adagrad", "--weight-decay", "1e-4", "--clip", "norm", "--learning-rate",
         "0.05"],
        ["--model", "cnn", "--no-batch-norm", "--dropout", "0.3", "--initializer", "glorot_uniform",
         "--activation", "tanh", "--scaling", "unit"],
        ["--model", "resnet", "--scaling", "raw", "--initializer", "orthogonal"],
        ["--model", "mlp", "--devices", "all", "--shard-optimizer-state"],
    ],
)
def test_every_switch_trains(fake_mnist, tmp_path, flags):
    metrics = _train(fake_mnist, tmp_path / "run", *flags, "--no-plot", "--train-examples", "128")
    assert all(np.isfinite(r["train_loss"]) for r in metrics["epochs"])


def test_the_per_epoch_schedule_decays_by_the_factor(fake_mnist, tmp_path):
    metrics = _train(
        fake_mnist, tmp_path / "run", "--schedule", "per_epoch", "--decay-factor", "0.5",
        "--learning-rate", "0.01", "--no-plot",
    )
    rates = [r["learning_rate"] for r in metrics["epochs"]]
    # logged at each epoch's last step: epoch 1 still runs at η, epoch 2 at η·0.5
    assert rates == pytest.approx([0.01, 0.005])


def test_gradient_health_is_logged_per_epoch_and_plotted(fake_mnist, tmp_path):
    metrics = _train(fake_mnist, tmp_path / "run", "--gradient-health", "--optimizer", "sgd",
                     "--schedule", "constant", "--learning-rate", "0.05", "--no-batch-norm")
    assert (tmp_path / "run" / "gradient_norms.png").read_bytes()[:4] == b"\x89PNG"
    for record in metrics["epochs"]:
        health = record["health"]
        assert set(health["module_grad_norms"]) == {"Dense_0", "Dense_1", "head"}
        # Plain SGD: the update is -η g, so every layer's update norm is η times its gradient's.
        for name, norm in health["module_grad_norms"].items():
            assert norm > 0
            assert health["module_update_norms"][name] == pytest.approx(0.05 * norm, rel=1e-5)


def test_early_stopping_and_an_average_from_the_command_line(fake_mnist, tmp_path):
    metrics = _train(fake_mnist, tmp_path / "run", "--early-stopping", "1", "--monitor",
                     "test_accuracy", "--ema", "0.5", "--epochs", "3")
    assert metrics["early_stopping"]["monitor"] == "test_accuracy"
    assert all(0 <= r["test_accuracy_averaged"] <= 1 for r in metrics["epochs"])
    swa = _train(fake_mnist, tmp_path / "swa", "--swa-start", "2", "--no-plot")
    assert all("test_loss_averaged" in r for r in swa["epochs"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dropout", "1.5"], "dropout_rate"),
        (["--initializer", "nope"], "name"),
        (["--learning-rate", "-1"], "--learning-rate"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--train-examples", "0"], "--train-examples"),
        (["--clip", "global_norm", "--clip-threshold", "0"], "max_norm"),
        (["--momentum", "2", "--optimizer", "momentum"], "momentum"),
        (["--devices", "-1"], "--devices"),
        (["--devices", "two"], "--devices"),
        (["--devices", "1000"], "--devices"),
        (["--shard-optimizer-state"], "--shard-optimizer-state"),
        (["--early-stopping", "0"], "--early-stopping"),
        (["--ema", "1.5"], "--ema"),
        (["--swa-start", "0"], "--swa-start"),
        (["--ema", "0.9", "--swa-start", "2"], "--swa-start"),
    ],
)
def test_bad_flags_fail_with_a_message_naming_them(fake_mnist, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data-dir", str(fake_mnist), "--out", str(tmp_path), "--no-progress",
              *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: jaxtricks train" in err
    assert not (tmp_path / "metrics.json").exists()


def test_a_missing_dataset_fails_with_what_was_tried(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": (), "fashion_mnist": ()})
    monkeypatch.setattr(datasets, "SYSTEM_PATHS", {"mnist": (), "fashion_mnist": ()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    with pytest.raises(SystemExit):
        main(["train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "JAXTRICKS_DATA_DIR" in err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    for action in train_parser._actions:
        for option in action.option_strings:
            assert option in text
        if action.dest != "help":
            assert action.help, f"{action.dest} has no help text"
    assert set(train_cli.OPTIMIZERS) >= {"sgd", "momentum", "momentum_lesson", "adam", "adamw"}


@pytest.mark.slow
def test_real_mnist_short_run_learns(tmp_path):
    """Two epochs on 6,400 real MNIST images: the CNN passes 90% test accuracy."""
    out = tmp_path / "run"
    assert main(["train", "--train-examples", "6400", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["header"]["test_examples"] == 10000
    assert metrics["epochs"][-1]["test_accuracy"] > 0.9
