"""The guard-cost benchmark runs both steps on real MNIST and reports what it measured."""

import importlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guard():
    """``benchmarks.nonfinite_guard`` from the repository root (see test_train_throughput)."""
    sys.path.insert(0, str(ROOT))
    package = sys.modules.get("benchmarks")
    if package is not None and getattr(package, "__file__", None) is None:
        del sys.modules["benchmarks"]
    try:
        yield importlib.import_module("benchmarks.nonfinite_guard")
    finally:
        sys.path.remove(str(ROOT))


@pytest.mark.slow
def test_a_short_run_reports_both_steps_and_their_ratio(guard, capsys):
    records = guard.main(["--config", "flax_example", "--rounds", "2", "--steps", "2",
                          "--batch-size", "32"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert lines == json.loads(json.dumps(records))
    (record,) = records
    assert record["config"] == "flax_example" and record["rounds"] == 2
    for key in ("guarded_ms", "unguarded_ms", "ratio"):
        assert record[key]["n"] == 2 and 0 < record[key]["min"] <= record[key]["max"]
    # Each round's ratio lies between the slowest and fastest rounds' extremes.
    low = record["guarded_ms"]["min"] / record["unguarded_ms"]["max"]
    high = record["guarded_ms"]["max"] / record["unguarded_ms"]["min"]
    assert low <= record["ratio"]["min"] <= record["ratio"]["median"] <= record["ratio"]["max"]
    assert record["ratio"]["max"] <= high


def test_rounds_must_be_positive(guard):
    with pytest.raises(SystemExit, match="at least 1"):
        guard.main(["--rounds", "0"])
