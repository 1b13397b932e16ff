"""The ``jaxtricks`` command line: ``python -m jaxtricks train ...``, ``lr-find ...``,
``experiment ...``, ``launch ...``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.cli import experiment, launch, lr_find, train


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per job."""
    parser = Parser(
        prog="jaxtricks",
        description="The tricks that make deep networks train, in JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)
    train_parser = commands.add_parser(
        "train",
        help="train a model on MNIST or Fashion-MNIST with switchable tricks",
        description=train.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_arguments(train_parser)
    train_parser.set_defaults(run=train.run, parser=train_parser)
    lr_find_parser = commands.add_parser(
        "lr-find",
        help="learning-rate range test: suggest a learning rate for train's model and optimizer",
        description=lr_find.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lr_find.add_arguments(lr_find_parser)
    lr_find_parser.set_defaults(run=lr_find.run, parser=lr_find_parser)
    experiment_parser = commands.add_parser(
        "experiment",
        help="run an experiment that measures one claim of the lesson (or all of them)",
        description=experiment.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    experiment.add_arguments(experiment_parser)
    experiment_parser.set_defaults(run=experiment.run, parser=experiment_parser)
    launch_parser = commands.add_parser(
        "launch",
        help="start a job of several train processes on this machine (jax.distributed)",
        description=launch.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    launch.add_arguments(launch_parser)
    launch_parser.set_defaults(run=launch.run, parser=launch_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; returns the exit status.

    First of all it sets XLA's CPU flags for fast convolutions
    (:func:`jaxtricks.backend.configure_xla_cpu`), which must happen before JAX starts, and
    makes glibc's malloc keep freed memory, so XLA:CPU's scratch buffer is not page-faulted
    afresh on every step (:func:`jaxtricks.backend.configure_host_allocator`).
    """
    configure_xla_cpu()
    configure_host_allocator()
    # A warning is one line on the command line (a damaged checkpoint skipped, ...).
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, so its errors all begin alike
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.given = train.explicit_destinations(args.parser, argv)
    return args.run(args, args.parser)
