"""The results report: generated sections, verdict numbers checked against them, staleness."""

import json

from jaxtricks.cli.experiments import provenance, report


def _results(**extra):
    stats = {"mean": 0.9712, "std": 0.0021, "min": 0.969, "max": 0.9731, "n": 3, "missing": 0}
    loss = {"mean": None, "std": None, "n": 3, "missing": 0}  # NaN in some seed
    return {
        "experiment": "clipping", "claim": "L6: a claim", "mode": "full",
        "command": "python -m jaxtricks experiment clipping", "config": {"epochs": 5},
        "seeds": [0, 1, 2], "wall_time_s": 12.3, "cpu_time_s": 4.5,
        "summary": {"θ=1": {"final": {"test_accuracy": stats, "test_loss": loss,
                                      "train_time_s": stats}}},
        "headline": ["θ=1: test accuracy 97.12 ± 0.21 %"],
        "machine": {"backend": "cpu", "cpu_count": 2, "processor": "x86_64", "jax": "0.1"},
        **extra,
    }


def test_a_section_shows_the_claim_command_seeds_table_and_headline():
    text = report.render_section("clipping", _results())
    assert '<a id="clipping"></a>' in text and "## L6: a claim" in text
    assert "`python -m jaxtricks experiment clipping`" in text and "**seeds:** 0–2" in text
    assert "| θ=1 | 97.12 ± 0.21 % | NaN |" in text  # times are left out of the table
    assert "train time" not in text and "- θ=1: test accuracy 97.12 ± 0.21 %" in text
    assert "**Code changed since:** unknown" in text and "not written yet" in text


def test_a_verdict_may_quote_only_numbers_its_section_shows():
    good = _results(verdict="holds: 97.12 % after 5 epochs (θ=1)")
    assert report.unsupported_numbers("clipping", good) == []
    bad = _results(verdict="holds: 97.5 % after 5 epochs")
    assert report.unsupported_numbers("clipping", bad) == ["97.5"]
    assert "**Verdict:** holds: 97.5 %" in report.render_section("clipping", bad)


def test_a_result_whose_code_changed_is_marked(monkeypatch):
    module = "jaxtricks.cli.experiments.clipping"
    recorded = provenance.provenance(module)
    assert provenance.changed_since(recorded) == []
    assert "**Code changed since:** no." in report.render_section(
        "clipping", _results(provenance=recorded))
    edited = dict(recorded["module_digests"], **{"jaxtricks.tricks.clipping": "0" * 64})
    stale = dict(recorded, module_digests=edited)
    assert provenance.changed_since(stale) == ["jaxtricks.tricks.clipping"]
    assert "**yes**, in `jaxtricks.tricks.clipping`" in report.render_section(
        "clipping", _results(provenance=stale))


def test_load_results_reads_results_and_verdicts_in_order(tmp_path):
    for name in ("lr_decay", "scaling"):
        folder = tmp_path / "experiments" / name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_results(experiment=name)))
    (tmp_path / "experiments" / "scaling" / report.VERDICT_FILE).write_text("holds\n")
    loaded = report.load_results(tmp_path)
    assert list(loaded) == ["scaling", "lr_decay"]
    assert loaded["scaling"]["verdict"] == "holds" and "verdict" not in loaded["lr_decay"]
    text = report.render(loaded)
    assert text.index('<a id="scaling">') < text.index('<a id="lr_decay">')
