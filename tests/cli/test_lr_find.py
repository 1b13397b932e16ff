"""``jaxtricks lr-find`` end to end on a real MNIST subset: outputs, summary, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxtricks.cli import lr_find
from jaxtricks.cli.main import main
from jaxtricks.data import DatasetNotFoundError, load
from jaxtricks.training import suggest_learning_rates

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def real_mnist():
    try:
        load("mnist", download=False)
    except DatasetNotFoundError as err:
        pytest.skip(f"MNIST is not on this machine: {err}")


def flags(out, *extra):
    return ["lr-find", "--model", "mlp", "--train-examples", "1024", "--validation-examples",
            "256", "--num-steps", "60", "--batch-size", "32", "--out", str(out), *extra]


def exit_status(argv):
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.mark.slow
def test_lr_find_writes_the_curve_the_plot_and_a_one_line_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(flags(out, "--optimizer", "momentum", "--clip", "global_norm")) == 0
    saved = json.loads((out / lr_find.RESULT_FILE).read_text())
    assert (out / lr_find.FIGURE_FILE).read_bytes()[:8] == PNG
    steps = len(saved["learning_rates"])
    assert 2 <= steps <= 60 and len(saved["losses"]) == len(saved["smoothed_losses"]) == steps
    assert saved["learning_rates"][0] == pytest.approx(1e-7)
    assert saved["stop_reason"] in ("completed", "diverged", "nonfinite")
    assert (steps == 60) or saved["stopped_early"]
    assert saved["arguments"]["optimizer"] == "momentum" and saved["arguments"]["clip"] == (
        "global_norm")
    assert "epochs" not in saved["arguments"]  # not an lr-find flag
    assert saved["settings"]["train_examples"] == 1024
    assert saved["dataset_source"]
    expected = suggest_learning_rates(saved["learning_rates"], saved["smoothed_losses"])
    assert (saved["suggestion_steepest"], saved["suggestion_min_over_10"]) == expected[:2]
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["suggestion_steepest"] == saved["suggestion_steepest"]
    assert summary["suggestion_min_over_10"] == saved["suggestion_min_over_10"]
    assert summary["steps"] == steps and summary["lr_find"] == str(out / lr_find.RESULT_FILE)
    assert "range test on 1024 training images" in captured.err


@pytest.mark.slow
def test_without_matplotlib_the_plot_is_skipped_with_a_note(tmp_path):
    script = ("import sys; sys.modules['matplotlib'] = None\n"
              "from jaxtricks.cli.main import main\nsys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", script, *flags(out, "--num-steps", "10")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "plot skipped: matplotlib is not installed" in result.stderr
    assert (out / lr_find.RESULT_FILE).exists() and not (out / lr_find.FIGURE_FILE).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-lr", "0"], "--min-lr must be a finite number > 0, got 0.0"),
        (["--max-lr", "1e-8"], "--max-lr must be a finite number > --min-lr 1e-07, got 1e-08"),
        (["--max-lr", "inf"], "--max-lr must be a finite number"),
        (["--num-steps", "1"], "--num-steps must be an integer >= 2, got 1"),
        (["--smoothing", "1"], "--smoothing must be a number in [0, 1), got 1.0"),
        (["--diverge-factor", "0.5"], "--diverge-factor must be 0 or a finite number > 1"),
        (["--skip-start", "-0.1"], "--skip-start must be a number in [0, 1)"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--batch-size", "2000"], "--batch-size must be at most the 1024 training images"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
        (["--dropout", "1"], "--dropout must be a number in [0, 1)"),
        (["--momentum", "2"], "--momentum must be a number in [0, 1]"),
        (["--train-examples", "0"], "--train-examples must be an integer >= 1"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it_with_status_2(tmp_path, capsys, extra, message):
    assert exit_status(flags(tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtricks lr-find: error: ") and len(err.splitlines()) == 1
    assert message in err
    assert not (tmp_path / "out" / lr_find.RESULT_FILE).exists()


def test_an_out_that_is_a_file_and_a_train_only_flag_are_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert exit_status(flags(tmp_path / "file")) == 2
    assert "--out" in capsys.readouterr().err
    assert exit_status(flags(tmp_path / "out", "--epochs", "3")) == 2
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err


@pytest.mark.slow
def test_a_steeper_optimizer_finds_smaller_rates(tmp_path, capsys):
    """Adam's steps are about η per weight whatever the gradient's scale, SGD's are η times the
    gradient: on this MLP SGD needs larger rates, and the test says so."""
    suggestions = {}
    for optimizer in ("sgd", "adam"):
        assert main(flags(tmp_path / optimizer, "--optimizer", optimizer, "--no-plot",
                          "--num-steps", "100")) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        suggestions[optimizer] = summary["suggestion_min_over_10"]
    assert suggestions["adam"] < suggestions["sgd"]
    assert np.isfinite(list(suggestions.values())).all()
