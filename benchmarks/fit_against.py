"""``fit``'s training rate against another checkout's, both in one process.

    python -m benchmarks.fit_against PATH [--rounds 14] [--steps 100] [--config default]

``PATH`` is the root of another checkout of jaxtricks (a ``git worktree`` of an earlier commit,
say). Its ``jaxtricks`` package is copied to a temporary folder as ``jaxtricks_other`` and
imported beside this checkout's, so both train under the same process, XLA flags and load.
Each round trains the config's CNN with each ``fit`` for 2 epochs of ``steps`` real MNIST
batches (validation on 1,024 test images) and reads the second epoch's examples per second;
odd rounds run the other checkout first. The figures are the medians of each side's rates and
the per-round ratios, this checkout's over the other's (median, min, max). Both run the
``loop`` runner. Configs are train_throughput's. The other checkout's ``fit`` may be this one's
(``validation_data=``, a ``History``) or the one before the training layer's rebuild (test
arrays as positional arguments, a dict history).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jaxtricks
from benchmarks.common import emit, machine, mnist, summarize, table
from benchmarks.train_throughput import CONFIGS

OTHER = "jaxtricks_other"


def import_other(root: Path, into: Path) -> Any:
    """Imports the ``jaxtricks`` package under ``root`` as :data:`OTHER`, copied into ``into``;
    :func:`forget_other` undoes it."""
    source = root / "jaxtricks"
    target = into / OTHER
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    # Every whole word "jaxtricks": imports, and string literals too (names of cache folders,
    # of the command line), which a benchmark of fit does not reach.
    for path in target.rglob("*.py"):
        path.write_text(re.sub(r"\bjaxtricks\b", OTHER, path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(OTHER)


def forget_other(into: Path) -> None:
    """Removes what :func:`import_other` added to ``sys.path`` and ``sys.modules``."""
    if str(into) in sys.path:
        sys.path.remove(str(into))
    for name in [name for name in sys.modules if name.split(".")[0] == OTHER]:
        del sys.modules[name]


def second_epoch_rate(package: Any, config: str, data: tuple, batch_size: int, seed: int) -> float:
    """Examples per second of the second of 2 epochs ``package``'s ``fit`` trains."""
    x, y, val_x, val_y = data
    fit = package.training.fit
    model_kwargs: Any = CONFIGS[config]["model"]
    model = package.models.CNN(**model_kwargs)
    optimizer = CONFIGS[config]["optimizer"](package)
    common = dict(epochs=2, batch_size=batch_size, seed=seed, runner="loop", progress=False)
    if "validation_data" in inspect.signature(fit).parameters:
        _, history = fit(model, optimizer, x, y, validation_data=(val_x, val_y), **common)
        return history.epochs[-1].examples_per_s
    _, history = fit(model, optimizer, x, y, val_x, val_y, **common)
    return history["epochs"][-1]["images_per_s"]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the records it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", type=Path, help="the root of the other checkout")
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="default")
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.batch_size) < 1:
        raise SystemExit("--rounds, --steps and --batch-size must be at least 1")
    if not (args.other / "jaxtricks" / "__init__.py").is_file():
        raise SystemExit(f"PATH must be a checkout holding jaxtricks/__init__.py, got {args.other}")
    images, labels, val_x, val_y = mnist(train_examples=args.steps * args.batch_size,
                                         test_examples=1024)
    data = (images, labels, val_x, val_y)
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    with tempfile.TemporaryDirectory() as folder:
        try:
            packages = {"this": jaxtricks,
                        "other": import_other(args.other.resolve(), Path(folder))}
            records = [compare(packages, config, data, args) for config in configs]
        finally:
            forget_other(Path(folder))
    table([[r["config"], r["this_examples_per_s"]["median"], r["other_examples_per_s"]["median"],
            r["ratio"]["median"], r["ratio"]["min"], r["ratio"]["max"]] for r in records],
          ["config", "this ex/s", "other ex/s", "ratio", "min", "max"])
    return records


def compare(packages: dict[str, Any], config: str, data: tuple,
            args: argparse.Namespace) -> dict[str, Any]:
    """Alternates the two sides' ``fit`` for ``args.rounds`` rounds; prints and returns the
    record."""
    rates: dict[str, list[float]] = {side: [] for side in packages}
    for round_ in range(args.rounds):
        for side in list(packages)[::-1 if round_ % 2 else 1]:
            rates[side].append(
                second_epoch_rate(packages[side], config, data, args.batch_size, round_))
    record = {
        "benchmark": "fit_against", "config": config, "other": str(args.other),
        "rounds": args.rounds, "steps": args.steps, "batch_size": args.batch_size,
        "this_examples_per_s": summarize(rates["this"]),
        "other_examples_per_s": summarize(rates["other"]),
        "ratio": summarize([a / b for a, b in zip(rates["this"], rates["other"], strict=True)]),
        **machine(),
    }
    emit(record)
    return record


if __name__ == "__main__":
    main()
