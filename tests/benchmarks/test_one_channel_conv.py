"""The one-channel convolution benchmark times both paths on real MNIST and reports the ratio."""

import json

import pytest
from benchmark_modules import import_benchmark


@pytest.fixture(scope="module")
def conv():
    return import_benchmark("one_channel_conv")


@pytest.mark.slow
def test_a_short_run_reports_both_paths_and_their_ratio(conv, capsys):
    records = conv.main(["--config", "time_to_99", "--rounds", "2", "--steps", "2",
                         "--batch-size", "16"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert lines == json.loads(json.dumps(records))
    (record,) = records
    assert record["config"] == "time_to_99" and record["model"]["features"] == [16, 32]
    # The two steps differ: with the path, XLA convolves one input fewer (the first layer's
    # forward pass); both keep the gradients' convolutions.
    assert record["convolutions"]["shifts"] == record["convolutions"]["xla"] - 1 > 0
    for key in ("xla_ms", "shifts_ms", "ratio"):
        assert record[key]["n"] == 2 and 0 < record[key]["min"] <= record[key]["max"]
    low = record["xla_ms"]["min"] / record["shifts_ms"]["max"]
    high = record["xla_ms"]["max"] / record["shifts_ms"]["min"]
    ratio = record["ratio"]
    assert low <= ratio["min"] <= ratio["median"] <= ratio["max"] <= high


@pytest.mark.parametrize("flag", ["--rounds", "--steps", "--batch-size"])
def test_counts_must_be_positive(conv, flag):
    with pytest.raises(SystemExit, match="at least 1"):
        conv.main([flag, "0"])
