"""The fit-against-a-checkout benchmark imports another checkout beside this one and compares."""

import json
import sys
from types import SimpleNamespace

import numpy as np
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


def test_a_checkout_from_before_the_rebuild_gets_its_test_arrays_and_dict_history(against):
    # fit before the training layer's rebuild: test arrays as positional arguments, a dict
    # history whose epochs hold "images_per_s". A stand-in package records what it was given.
    calls = []

    def old_fit(model, optimizer, x, y, test_x, test_y, **kwargs):
        calls.append((model, optimizer, x, y, test_x, test_y, kwargs))
        return None, {"epochs": [{"images_per_s": 1.0}, {"images_per_s": 2.5}]}

    package = SimpleNamespace(
        training=SimpleNamespace(fit=old_fit),
        models=SimpleNamespace(CNN=lambda **kwargs: ("cnn", kwargs)),
        momentum=lambda *args: ("momentum", args),
        adam=lambda *args: ("adam", args),
    )
    x, y, val_x, val_y = (np.full(2, i) for i in range(4))
    rate = against.second_epoch_rate(package, "default", (x, y, val_x, val_y), 32, 7)
    assert rate == 2.5
    ((model, optimizer, *arrays, kwargs),) = calls
    configs = import_benchmark("train_throughput").CONFIGS
    assert model == ("cnn", configs["default"]["model"]) and optimizer == ("adam", (2e-3,))
    assert all(a is b for a, b in zip(arrays, (x, y, val_x, val_y), strict=True))
    assert kwargs == dict(epochs=2, batch_size=32, seed=7, runner="loop", progress=False)
