"""The ``jaxtricks`` command line: ``python -m jaxtricks train ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jaxtricks.cli import experiment, train
from jaxtricks.training.host_allocator import configure_host_allocator
from jaxtricks.training.xla_cpu import configure_xla_cpu


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="jaxtricks",
        description="The tricks that make deep networks train, in JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser(
        "train",
        help="train a model on MNIST or Fashion-MNIST with switchable tricks",
        description=train.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_arguments(train_parser)
    train_parser.set_defaults(run=train.run, parser=train_parser)
    experiment_parser = commands.add_parser(
        "experiment",
        help="run an experiment that measures one claim of the lesson (or all of them)",
        description=experiment.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    experiment.add_arguments(experiment_parser)
    experiment_parser.set_defaults(run=experiment.run, parser=experiment_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; returns the exit status.

    First of all it sets XLA's CPU flags for fast convolutions
    (:func:`jaxtricks.training.configure_xla_cpu`), which must happen before JAX starts, and
    makes glibc's malloc keep freed memory, so XLA:CPU's scratch buffer is not page-faulted
    afresh on every step (:func:`jaxtricks.training.configure_host_allocator`).
    """
    configure_xla_cpu()
    configure_host_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args, args.parser)
