"""``jaxtricks lr-find``: the learning-rate range test for the run ``train`` would make.

It takes ``train``'s flags for the data, the model and the optimizer (the same builders make
them; the flags it does not take keep ``train``'s defaults), raises the learning rate
exponentially from ``--min-lr`` to ``--max-lr`` over at most ``--num-steps`` steps on the
training images ``train`` would train on (the validation images held out), and writes

- ``lr_find.json``: the flags, the data's source, the curve (learning rate, loss and smoothed
  loss of every step), why it stopped, and both suggestions;
- ``lr_find.png``: the curve on a log learning-rate axis with the suggestions marked (skipped,
  with a note, without matplotlib);

into ``--out``, then prints a one-line JSON summary. See
:func:`jaxtricks.training.lr_finder.find_learning_rate` for the test and its suggestions.
Failures are one line on stderr naming the flag, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import jax

from jaxtricks.cli import train
from jaxtricks.cli.train import CommandError
from jaxtricks.files import strict_json, write_json
from jaxtricks.training.lr_finder import LRFinderResult, find_learning_rate

DESCRIPTION = (
    "Learning-rate range test (Smith 2015): train the model, optimizer and data that train's "
    "flags describe for a few hundred steps while the learning rate grows exponentially, stop "
    "when the smoothed loss blows up, and suggest a learning rate (steepest descent and "
    "minimum/10). Writes lr_find.json and lr_find.png into --out."
)
RESULT_FILE = "lr_find.json"
FIGURE_FILE = "lr_find.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``lr-find`` flags to ``parser``."""
    train.add_data_arguments(parser.add_argument_group("data (as for train)"))
    train.add_model_arguments(parser.add_argument_group("model (as for train)"))
    train.add_optimizer_arguments(parser.add_argument_group("optimizer (as for train)"),
                                  schedule=False)
    sweep = parser.add_argument_group("range test")
    sweep.add_argument("--min-lr", type=float, default=1e-7, help="the first learning rate")
    sweep.add_argument("--max-lr", type=float, default=10.0,
                       help="the learning rate of the last step, if the loss has not blown up")
    sweep.add_argument("--num-steps", type=int, default=200, help="the most steps to run")
    sweep.add_argument("--smoothing", type=float, default=0.98,
                       help="β of the loss's moving average, in [0, 1)")
    sweep.add_argument("--diverge-factor", type=float, default=4.0,
                       help="stop once the smoothed loss exceeds this times its lowest value; "
                            "0: stop only on a NaN or infinite loss")
    sweep.add_argument("--skip-start", type=float, default=0.1,
                       help="fraction of the curve's first points the steepest-descent "
                            "suggestion ignores")
    sweep.add_argument("--batch-size", type=int, default=128, help="batch size")
    sweep.add_argument("--seed", type=int, default=0,
                       help="random seed in [0, 2**63): initial weights and batch order")
    sweep.add_argument("--out", default=os.path.join("runs", "lr_find"),
                       help=f"output folder for {RESULT_FILE} and {FIGURE_FILE}")
    sweep.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                       help=f"write {FIGURE_FILE} (skipped, with a note, without matplotlib)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs the range test as the flags say; returns the exit status (2 after a one-line
    error)."""
    del parser
    try:
        return _lr_find(args)
    except CommandError as err:
        print(f"jaxtricks lr-find: error: {err}", file=sys.stderr)
        return 2


def _train_defaults() -> dict[str, Any]:
    """Every ``train`` flag's default, by destination."""
    parser = argparse.ArgumentParser(add_help=False)
    train.add_arguments(parser)
    return vars(parser.parse_args([]))


def _check(condition: bool, flag: str, expected: str, value: Any) -> None:
    if not condition:
        raise CommandError(f"{flag} must be {expected}, got {value!r}")


def validate(args: argparse.Namespace) -> None:
    """Checks the range test's flags, then (with ``train``'s defaults for the flags ``lr-find``
    does not take) the ``train`` flags; ``CommandError`` names the first bad flag."""
    _check(math.isfinite(args.min_lr) and args.min_lr > 0, "--min-lr", "a finite number > 0",
           args.min_lr)
    _check(math.isfinite(args.max_lr) and args.max_lr > args.min_lr, "--max-lr",
           f"a finite number > --min-lr {args.min_lr:g}", args.max_lr)
    _check(args.num_steps >= 2, "--num-steps", "an integer >= 2", args.num_steps)
    _check(math.isfinite(args.smoothing) and 0 <= args.smoothing < 1, "--smoothing",
           "a number in [0, 1)", args.smoothing)
    _check(args.diverge_factor == 0 or (math.isfinite(args.diverge_factor)
                                        and args.diverge_factor > 1),
           "--diverge-factor", "0 or a finite number > 1", args.diverge_factor)
    _check(math.isfinite(args.skip_start) and 0 <= args.skip_start < 1, "--skip-start",
           "a number in [0, 1)", args.skip_start)
    for dest, value in _train_defaults().items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    train.validate(args)


def _lr_find(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items()
             if v is None or isinstance(v, bool | int | float | str)}
    validate(args)
    train.prepare_output(args, set())
    data = train.split_data(args)
    model = train.build_model(args)
    # A number, not a schedule: the test sets the injected rate before every step.
    optimizer = train.build_optimizer(args, args.min_lr)
    print(
        f"{args.dataset}: range test on {data.train_x.shape[0]} training images from "
        f"{data.source}; {args.model}, {args.optimizer}, learning rate {args.min_lr:g} to "
        f"{args.max_lr:g} over at most {args.num_steps} steps on {jax.default_backend()}",
        file=sys.stderr,
    )
    result = find_learning_rate(
        model, optimizer, data.train_x, data.train_y, min_lr=args.min_lr, max_lr=args.max_lr,
        num_steps=args.num_steps, batch_size=args.batch_size, smoothing=args.smoothing,
        diverge_factor=args.diverge_factor or None, skip_start=args.skip_start, seed=args.seed,
    )
    path = os.path.join(args.out, RESULT_FILE)
    record = {
        "arguments": given,
        "dataset_source": data.source,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        **result.to_dict(),
    }
    try:
        write_json(path, record)
    except OSError as err:
        raise CommandError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    if args.plot:
        try:
            plot_lr_find(result, os.path.join(args.out, FIGURE_FILE),
                         title=f"{args.model}, {args.optimizer}, batch {args.batch_size}, "
                               f"{args.dataset}")
        except ImportError:
            print(f"plot skipped: matplotlib is not installed (pip install matplotlib, or the "
                  f"jaxtricks[plots] extra); the curve is in {RESULT_FILE}", file=sys.stderr)
    summary = {
        "suggestion_steepest": result.suggestion_steepest,
        "suggestion_min_over_10": result.suggestion_min_over_10,
        "stop_reason": result.stop_reason,
        "steps": len(result.learning_rates),
        "last_learning_rate": float(result.learning_rates[-1]),
        "lr_find": path,
    }
    print(json.dumps(strict_json(summary), allow_nan=False))
    return 0


def draw_curve(ax: Any, result: dict[str, Any], *, label: str | None = None,
               color: str | None = None) -> None:
    """Draws one range test (a :meth:`LRFinderResult.to_dict`) on ``ax``: the raw loss faint,
    the smoothed loss solid, the steepest-descent suggestion as a dot on it and the minimum/10
    suggestion as a dashed vertical line."""
    rates, smoothed = result["learning_rates"], result["smoothed_losses"]
    (line,) = ax.plot(rates, smoothed, "-", color=color, label=label)
    ax.plot(rates, result["losses"], "-", color=line.get_color(), alpha=0.2, linewidth=0.8)
    if result["steepest_index"] is not None:
        ax.plot([rates[result["steepest_index"]]], [smoothed[result["steepest_index"]]], "o",
                color=line.get_color())
    if result["suggestion_min_over_10"] is not None:
        ax.axvline(result["suggestion_min_over_10"], color=line.get_color(), linestyle="--",
                   alpha=0.6)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)


def loss_limits(results: list[dict[str, Any]]) -> tuple[float, float] | None:
    """y limits showing every curve down to its lowest point and up to 1.5 × the highest
    smoothed loss before its minimum, so a final blow-up does not flatten the rest."""
    lows, highs = [], []
    for result in results:
        end = result["minimum_index"]
        if end is None:
            continue
        finite = [v for v in result["losses"] if math.isfinite(v)]
        lows.append(min(finite))
        highs.append(1.5 * max(result["smoothed_losses"][: end + 1]))
    if not lows:
        return None
    return min(lows) - 0.05 * abs(min(lows)), max(highs)


def plot_lr_find(result: LRFinderResult, path: str, *, title: str = "") -> str:
    """Draws the curve of one range test into ``path`` (PNG); returns the path."""
    from jaxtricks.cli.plots import pyplot, save_figure

    plt = pyplot()
    record = result.to_dict()
    fig, ax = plt.subplots(figsize=(8, 5))
    draw_curve(ax, record, label="smoothed loss")
    limits = loss_limits([record])
    if limits is not None:
        ax.set_ylim(*limits)
    steepest, low = result.suggestion_steepest, result.suggestion_min_over_10
    ax.set(xlabel="learning rate", ylabel="training loss",
           title=f"{title}\nsteepest {'-' if steepest is None else f'{steepest:.3g}'} (dot), "
                 f"minimum/10 {'-' if low is None else f'{low:.3g}'} (dashed)\n"
                 f"{result.stop_reason} after {len(result.learning_rates)} steps")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
