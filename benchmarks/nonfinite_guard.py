"""What the train step's non-finite guard costs: ``skip_nonfinite=True`` against ``False``.

    python -m benchmarks.nonfinite_guard [--rounds 6] [--steps 60] [--config default]

Both train steps (:func:`jaxtricks.training.steps.make_train_step`) run in one process on real
MNIST batches, interleaved round by round so that a change of load affects both alike; a round
is ``steps`` steps after one untimed step. The figure is the per-round ratio of milliseconds per
step, guarded over unguarded (median, min, max). Configs are train_throughput's: ``default``
(batch norm, dropout 0.1, Adam) and ``flax_example`` (no batch norm, momentum).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import emit, machine, mnist, summarize, table
from benchmarks.train_throughput import CONFIGS
from jaxtricks.models import CNN
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step


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
    images, labels, _, _ = mnist(train_examples=args.batch_size * (args.steps + 1))
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    batches = [(images[i * args.batch_size:(i + 1) * args.batch_size],
                labels[i * args.batch_size:(i + 1) * args.batch_size])
               for i in range(args.steps + 1)]
    records, rows = [], []
    for name in CONFIGS if args.config == "all" else [args.config]:
        config = CONFIGS[name]
        model, tx = CNN(**config["model"]), config["optimizer"]()
        guarded = {flag: make_train_step(model, tx, skip_nonfinite=flag) for flag in (True, False)}
        states = {flag: create_train_state(model, tx, jax.random.key(0), images[:1])
                  for flag in guarded}
        ms: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for flag, step in guarded.items():
                state, _ = step(states[flag], batches[0])
                jax.block_until_ready(state)
                tick = time.perf_counter()
                for batch in batches[1:]:
                    state, _ = step(state, batch)
                jax.block_until_ready(state)
                ms[flag].append((time.perf_counter() - tick) / args.steps * 1e3)
                states[flag] = state
        ratios = [a / b for a, b in zip(ms[True], ms[False], strict=True)]
        record = {
            "benchmark": "nonfinite_guard", "config": name, "rounds": args.rounds,
            "steps": args.steps, "batch_size": args.batch_size,
            "guarded_ms": summarize(ms[True]), "unguarded_ms": summarize(ms[False]),
            "ratio": summarize(ratios), **machine(),
        }
        emit(record)
        records.append(record)
        rows.append([name, record["guarded_ms"]["median"], record["unguarded_ms"]["median"],
                     record["ratio"]["median"], record["ratio"]["min"], record["ratio"]["max"]])
    table(rows, ["config", "guarded ms", "unguarded ms", "ratio", "min", "max"])
    return records


if __name__ == "__main__":
    main()
