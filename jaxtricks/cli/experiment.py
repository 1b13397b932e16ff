"""``jaxtricks experiment NAME``: run one of the lesson's experiments (or ``all``) on real data.

Each experiment trains with the library's own ``fit`` on real MNIST or Fashion-MNIST over several
seeds and writes ``results.json`` (config, seeds, per-seed curves, mean and std over seeds, wall
and CPU time, machine) and ``figure.png`` into ``--out`` (default
``results/experiments/NAME``; with ``all``, one subfolder per experiment). ``--quick`` runs a
small version of each in under a minute.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Sequence

from jaxtricks.cli import experiments
from jaxtricks.cli.experiments import common, report
from jaxtricks.data import DatasetNotFoundError
from jaxtricks.files import atomic_write

DESCRIPTION = (
    "Run an experiment that measures one claim of the lesson on real MNIST/Fashion-MNIST, over "
    "several seeds; writes results.json and figure.png. Experiments: "
    + ", ".join(experiments.NAMES)
    + "; 'all' runs every one; 'report' writes docs/results.md from the results."
)
DEFAULT_OUT = os.path.join("results", "experiments")
DEFAULT_REPORT = os.path.join("docs", "results.md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``experiment`` arguments to ``parser``."""
    parser.add_argument("name", choices=(*experiments.NAMES, "all", "report"), metavar="NAME",
                        help="the experiment: " + ", ".join(experiments.NAMES)
                             + ", all, or report (docs/results.md from results/)")
    parser.add_argument("--quick", action="store_true",
                        help="small subsets, few epochs and seeds: under a minute each")
    parser.add_argument("--seeds", type=_positive_int, default=None,
                        help="number of seeds (default: the experiment's config)")
    parser.add_argument("--out", default=None,
                        help=f"output folder (default: {DEFAULT_OUT}/NAME; with all, "
                             f"one subfolder per experiment; with report, the file, default "
                             f"{DEFAULT_REPORT})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs the chosen experiment(s), or writes the report; returns the exit status."""
    if args.name == "report":
        path = args.out or DEFAULT_REPORT
        atomic_write(path, report.render(report.load_results()))
        common.log_to_stderr(f"wrote {path}")
        return 0
    names = experiments.NAMES if args.name == "all" else (args.name,)
    command = ["python", "-m", "jaxtricks", "experiment", args.name]
    command += ["--quick"] * args.quick
    command += [] if args.seeds is None else ["--seeds", str(args.seeds)]
    command += [] if args.out is None else ["--out", args.out]
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for name in names:
        if args.out is None:
            out = os.path.join(DEFAULT_OUT, name)
        else:
            out = os.path.join(args.out, name) if args.name == "all" else args.out
        common.log_to_stderr(f"experiment {name} ({'quick' if args.quick else 'full'}) -> {out}")
        try:
            common.run_experiment(
                experiments.get(name),
                quick=args.quick,
                seeds=args.seeds,
                out_dir=out,
                command=shlex.join(command),
            )
        except DatasetNotFoundError as err:
            parser.error(f"experiment {name}: {err}")
    if len(names) > 1:
        common.log_to_stderr(
            f"all experiments: {time.perf_counter() - started_wall:.1f} s wall, "
            f"{time.process_time() - started_cpu:.1f} s CPU"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m jaxtricks experiment``."""
    parser = argparse.ArgumentParser(
        prog="jaxtricks experiment",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``jaxtricks experiment`` on its own: parses ``argv`` (the arguments after
    ``experiment``) and runs; bad arguments exit with status 2 and a message."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)
