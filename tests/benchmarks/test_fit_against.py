"""The fit-against-a-checkout benchmark imports another checkout beside this one and compares."""

import json
import sys

import pytest
from benchmark_modules import ROOT, import_benchmark


@pytest.fixture(scope="module")
def against():
    return import_benchmark("fit_against")


@pytest.mark.slow
def test_a_short_run_against_this_checkout_reports_both_rates_and_their_ratio(against, capsys):
    records = against.main([str(ROOT), "--config", "flax_example", "--rounds", "2",
                            "--steps", "2", "--batch-size", "32"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert lines == json.loads(json.dumps(records))
    (record,) = records
    assert record["config"] == "flax_example" and record["rounds"] == 2
    for key in ("this_examples_per_s", "other_examples_per_s", "ratio"):
        assert record[key]["n"] == 2 and 0 < record[key]["min"] <= record[key]["max"]
    low = record["this_examples_per_s"]["min"] / record["other_examples_per_s"]["max"]
    high = record["this_examples_per_s"]["max"] / record["other_examples_per_s"]["min"]
    assert low <= record["ratio"]["min"] <= record["ratio"]["max"] <= high
    # The other checkout's package is gone again from the process.
    assert not any(name.startswith(against.OTHER) for name in sys.modules)


def test_a_path_without_the_package_is_refused(against, tmp_path):
    with pytest.raises(SystemExit, match="PATH must be a checkout"):
        against.main([str(tmp_path), "--rounds", "1"])


def test_rounds_must_be_positive(against):
    with pytest.raises(SystemExit, match="at least 1"):
        against.main([str(ROOT), "--rounds", "0"])
