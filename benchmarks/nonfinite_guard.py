"""What the train step's non-finite guard costs: ``skip_nonfinite`` True and ``"strict"``
against False.

    python -m benchmarks.nonfinite_guard [--rounds 6] [--steps 60] [--config default]

Four train steps (:func:`jaxtricks.training.steps.make_train_step`) run in one process on real
MNIST batches, interleaved round by round so that a change of load affects all alike:
unguarded; guarded (the default, which tests the loss, the gradients' norm and the new model
state, all known before the update); strict as the backend's speed paths choose (it also tests
the new parameters and optimizer state; on the CPU through row sums first,
:data:`jaxtricks.backend.SpeedPaths`); and strict with the exact element-wise test only (the
plain path's). A round is ``steps`` steps after one untimed step; odd rounds run the steps in
reverse order. The figures are the per-round ratios of milliseconds per step, guarded over
unguarded (median, min, max). Configs are train_throughput's: ``default`` (batch norm, dropout
0.1, Adam) and ``flax_example`` (no batch norm, momentum).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax

from benchmarks.common import emit, interleaved_step_ms, machine, mnist_batches, summarize, table
from benchmarks.train_throughput import CONFIGS
from jaxtricks.backend import speed_paths, use_speed_paths
from jaxtricks.models import CNN
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step

# The record's key for each guarded step's ratio to the unguarded one.
RATIOS = {"guarded": "ratio", "strict": "ratio_strict", "strict_exact": "ratio_strict_exact"}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the records it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit("--rounds and --steps must be at least 1")
    batches = mnist_batches(args.batch_size, args.steps + 1)
    records, rows = [], []
    for name in CONFIGS if args.config == "all" else [args.config]:
        config = CONFIGS[name]
        model, tx = CNN(**config["model"]), config["optimizer"]()
        steps = {"unguarded": make_train_step(model, tx, skip_nonfinite=False),
                 "guarded": make_train_step(model, tx),
                 "strict": make_train_step(model, tx, skip_nonfinite="strict")}
        with use_speed_paths(speed_paths()._replace(finite_check_by_sums=False)):
            steps["strict_exact"] = make_train_step(model, tx, skip_nonfinite="strict")
        states = {kind: create_train_state(model, tx, jax.random.key(0), batches[0][0][:1])
                  for kind in steps}
        ms = interleaved_step_ms(steps, states, batches, args.rounds)
        record = {
            "benchmark": "nonfinite_guard", "config": name, "rounds": args.rounds,
            "steps": args.steps, "batch_size": args.batch_size,
            "finite_check_by_sums": speed_paths().finite_check_by_sums,
            **{f"{kind}_ms": summarize(ms[kind]) for kind in steps},
            **{RATIOS[kind]: summarize([a / b for a, b in zip(ms[kind], ms["unguarded"],
                                                              strict=True)])
               for kind in RATIOS},
            **machine(),
        }
        emit(record)
        records.append(record)
        for kind, key in RATIOS.items():
            rows.append([name, kind, record[f"{kind}_ms"]["median"],
                         record["unguarded_ms"]["median"], record[key]["median"],
                         record[key]["min"], record[key]["max"]])
    table(rows, ["config", "guard", "guarded ms", "unguarded ms", "ratio", "min", "max"])
    return records


if __name__ == "__main__":
    main()
