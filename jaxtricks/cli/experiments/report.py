"""``docs/results.md``, written from the experiments' ``results.json`` files and nothing else.

Each experiment gets a section: its claim, the command, seeds, commit, versions and machine it
ran with, whether the code it reaches changed since (:func:`~.provenance.changed_since`), its
config, a table of every condition's final metrics (mean ± sample standard deviation over the
seeds) and the experiment's own headline lines. Below them stands the verdict a person wrote
after reading the numbers, ``results/experiments/NAME/verdict.md``; a number it quotes must be
one the generated part of its section shows (:func:`unsupported_numbers`), so that rerunning an
experiment and not rereading its verdict fails ``tests/test_results.py``, which also checks
that ``docs/results.md`` is what :func:`render` gives today.

Regenerate with ``python -m jaxtricks experiment report``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtricks.cli import experiments
from jaxtricks.cli.experiments.provenance import changed_since

__all__ = [
    "MODEL_AVERAGING",
    "VERDICT_FILE",
    "folders",
    "load_results",
    "render",
    "render_section",
    "unsupported_numbers",
]

VERDICT_FILE = "verdict.md"
MODEL_AVERAGING = "model_averaging"
_SKIPPED_METRICS = ("compile_time_s", "train_time_s", "best_test_accuracy")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

_INTRO = """\
# The lesson, measured

Each claim of the lesson (see [the lesson](lesson.md)) run on real MNIST or Fashion-MNIST over
several seeds, one command each. This page is generated from the `results.json` files under
`results/experiments/` by `python -m jaxtricks experiment report`; `tests/test_results.py`
fails when it is not what today's files and code give. Numbers are the mean ± sample standard
deviation over the seeds; the per-seed values and curves are in the JSON, the figure beside it.
Each section says whether the code the experiment reaches has changed since it ran: a result
whose code changed is marked, not hidden. The verdicts are written by people after reading the
numbers, and quote only numbers shown above them.

Run one: `./run python -m jaxtricks experiment NAME` (`--quick` for a small version that the
tests run: for the tests, not for conclusions); `all` runs every one.
"""


def folders(root: str | os.PathLike = "results") -> dict[str, str]:
    """Where each result lives under ``root``: ``experiments/NAME`` for each of
    :data:`~jaxtricks.cli.experiments.NAMES`, in their order, then ``model_averaging`` (the
    results of ``examples/model_averaging.py``)."""
    found = {name: os.path.join(root, "experiments", name) for name in experiments.NAMES}
    found[MODEL_AVERAGING] = os.path.join(root, MODEL_AVERAGING)
    return found


def load_results(root: str | os.PathLike = "results") -> dict[str, dict[str, Any]]:
    """Every ``results.json`` in :func:`folders` (with its verdict, if written), by name;
    missing ones left out."""
    found = {}
    for name, folder in folders(root).items():
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as file:
            results = json.load(file)
        verdict_path = os.path.join(folder, VERDICT_FILE)
        if os.path.exists(verdict_path):
            with open(verdict_path, encoding="utf-8") as file:
                results["verdict"] = file.read().strip()
        found[name] = results
    return found


def _format(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    if "accuracy" in metric or metric == "gap":
        return f"{100 * value:.2f} %"
    return f"{value:.4g}"


def _cell(metric: str, stats: Mapping[str, Any]) -> str:
    mean, std, n = stats.get("mean"), stats.get("std"), stats.get("n", 0)
    missing = stats.get("missing", 0)
    if mean is None:  # NaN in the JSON: a non-finite value in some seed, or no value at all
        return "NaN" if n else f"none of {missing}"
    text = _format(metric, mean)
    if n > 1 and std is not None:
        spread = _format(metric, std).removesuffix(" %")
        text = f"{text.removesuffix(' %')} ± {spread}{' %' if text.endswith('%') else ''}"
    return text + (f" ({missing} of {n + missing} without a value)" if missing else "")


def _metrics(summary: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for condition in summary.values():
        for name in condition.get("final", {}):
            if name not in names and name not in _SKIPPED_METRICS:
                names.append(name)
    return names


def _seeds(seeds: Sequence[int]) -> str:
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _provenance_line(results: Mapping[str, Any]) -> str:
    recorded = results.get("provenance")
    if recorded is None:
        return "**Code changed since:** unknown (this result records no provenance)."
    changed = changed_since(recorded)
    if changed is None:
        state = "unknown (its commit is not in this clone)"
    elif changed:
        state = "**yes**, in " + ", ".join(f"`{name}`" for name in changed)
    else:
        state = "no"
    return f"**Code changed since:** {state}."


def _generated(name: str, results: Mapping[str, Any]) -> str:
    machine = results.get("machine", {})
    recorded = results.get("provenance") or {}
    commit = (recorded.get("commit") or "unknown")[:10]
    if recorded.get("uncommitted_changes"):
        commit += " (with uncommitted changes)"
    versions = ", ".join(
        f"{key} {recorded.get(key) or machine.get(key)}" for key in ("jax", "optax", "flax")
        if recorded.get(key) or machine.get(key))
    where = recorded.get("cpu_model") or machine.get("processor") or "unknown CPU"
    lines = [
        f'<a id="{name}"></a>',
        "",
        f"## {results.get('claim', name)}",
        "",
        f"**Command:** `{results.get('command') or 'python -m jaxtricks experiment ' + name}` "
        f"({results.get('mode', '?')} config) · "
        f"**seeds:** {_seeds(results['seeds']) if results.get('seeds') else '?'} · "
        f"**commit:** {commit} · {versions} · {machine.get('backend', '?')} "
        f"({where}, {machine.get('cpu_count', '?')} cores) · "
        f"**finished:** {results.get('finished_at', '?')} · "
        f"**wall / CPU time:** {results['wall_time_s']:.0f} s / {results['cpu_time_s']:.0f} s.",
        "",
        _provenance_line(results),
        "",
        "**Config:** " + "; ".join(f"{key} = {json.dumps(value)}"
                                   for key, value in results.get("config", {}).items()) + ".",
        "",
    ]
    summary = results.get("summary", {})
    metrics = _metrics(summary)
    if metrics:
        lines += [
            "| condition | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for condition, entry in summary.items():
            final = entry.get("final", {})
            cells = [_cell(m, final[m]) if m in final else "–" for m in metrics]
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- {line.strip()}" for line in results.get("headline", [])]
    return "\n".join(lines).rstrip() + "\n"


def render_section(name: str, results: Mapping[str, Any]) -> str:
    """One experiment's section: the generated part, then its verdict (or a note that none
    was written for these numbers)."""
    verdict = results.get("verdict")
    text = _generated(name, results)
    if verdict:
        return f"{text}\n**Verdict:** {verdict}\n"
    return f"{text}\n**Verdict:** not written yet for these numbers.\n"


def unsupported_numbers(name: str, results: Mapping[str, Any]) -> list[str]:
    """The numbers in an experiment's verdict that its generated section does not show."""
    shown = set(_NUMBER.findall(_generated(name, results)))
    return [n for n in _NUMBER.findall(results.get("verdict") or "") if n not in shown]


def render(all_results: Mapping[str, Mapping[str, Any]]) -> str:
    """The whole of ``docs/results.md`` for :func:`load_results`' output."""
    sections = [render_section(name, results) for name, results in all_results.items()]
    figures = ("## Figures\n\n`figure.png` beside each `results.json`: "
               "`results/experiments/NAME/` and `results/model_averaging/`.\n")
    return "\n".join([_INTRO, *sections, figures])
