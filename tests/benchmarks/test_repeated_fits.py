"""The repeated-fits memory benchmark runs on real MNIST and reports what it measured."""

import json

import pytest
from benchmark_modules import import_benchmark


@pytest.fixture(scope="module")
def repeated_fits():
    return import_benchmark("repeated_fits")


@pytest.mark.slow
def test_a_quick_run_records_the_resident_size_after_every_few_fits(repeated_fits, capsys):
    record = repeated_fits.main(["--quick"])
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    assert line == json.loads(json.dumps(record))
    assert [point["fits"] for point in record["rss_mib"]] == [2, 4]
    assert all(point["rss_mib"] > 50 for point in record["rss_mib"])
    first, last = record["rss_mib"]
    assert record["growth_mib_per_fit_second_half"] == pytest.approx(
        (last["rss_mib"] - first["rss_mib"]) / 2, abs=0.05)


def test_bad_counts_are_refused(repeated_fits):
    with pytest.raises(SystemExit):
        repeated_fits.main(["--fits", "1"])
