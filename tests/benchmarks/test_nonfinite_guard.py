"""The guard-cost benchmark runs its four steps on real MNIST and reports what it measured."""

import json

import pytest
from benchmark_modules import import_benchmark


@pytest.fixture(scope="module")
def guard():
    return import_benchmark("nonfinite_guard")


@pytest.mark.slow
def test_a_short_run_reports_each_guard_and_its_ratio(guard, capsys):
    records = guard.main(["--config", "flax_example", "--rounds", "2", "--steps", "2",
                          "--batch-size", "32"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert lines == json.loads(json.dumps(records))
    (record,) = records
    assert record["config"] == "flax_example" and record["rounds"] == 2
    assert record["finite_check_by_sums"] is True  # the CPU's speed path
    for key in ("unguarded_ms", *(f"{kind}_ms" for kind in guard.RATIOS),
                *guard.RATIOS.values()):
        assert record[key]["n"] == 2 and 0 < record[key]["min"] <= record[key]["max"]
    # Each round's ratio lies between the slowest and fastest rounds' extremes.
    for kind, key in guard.RATIOS.items():
        low = record[f"{kind}_ms"]["min"] / record["unguarded_ms"]["max"]
        high = record[f"{kind}_ms"]["max"] / record["unguarded_ms"]["min"]
        assert low <= record[key]["min"] <= record[key]["median"] <= record[key]["max"] <= high


def test_rounds_must_be_positive(guard):
    with pytest.raises(SystemExit, match="at least 1"):
        guard.main(["--rounds", "0"])
