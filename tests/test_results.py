"""docs/results.md is what the committed results and today's code give, and its verdicts quote
only numbers the results show."""

import pathlib

import pytest

from jaxtricks.cli import experiments
from jaxtricks.cli.experiments import report

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    return report.load_results(ROOT / "results")


def test_every_experiment_has_full_results(results):
    assert set(results) == {*experiments.NAMES, report.MODEL_AVERAGING}
    assert {name: r.get("mode") for name, r in results.items()} == dict.fromkeys(results, "full")


@pytest.mark.slow
def test_docs_results_md_is_the_report_of_todays_results_and_code(results):
    # Regenerate with: python -m jaxtricks experiment report
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == report.render(results)


@pytest.mark.slow
def test_every_result_records_its_code_and_has_a_verdict_quoting_only_its_numbers(results):
    for name, result in results.items():
        assert result.get("provenance", {}).get("commit"), f"{name}: no commit recorded"
        assert result.get("verdict"), f"{name}: no {report.VERDICT_FILE}"
        assert report.unsupported_numbers(name, result) == [], name
