"""What the ``one_channel_conv_by_shifts`` speed path gives a CNN's training step.

    python -m benchmarks.one_channel_conv [--rounds 8] [--steps 30] [--batch-size 128]

Two train steps (:func:`jaxtricks.training.steps.make_train_step`) of one model run in one
process on real MNIST batches, interleaved round by round: one built with the backend's speed
paths and ``one_channel_conv_by_shifts=False`` (the first convolution by XLA's kernel), one
with it True (its forward pass as shifted multiply-adds,
:func:`jaxtricks.models.conv.one_channel_conv`). A round is ``steps`` steps after one untimed
step; odd rounds run the two in reverse order. The figure is the per-round ratio of
milliseconds per step, XLA's kernel over shifted sums (median, min, max): above 1 the path is
faster. Configs: train_throughput's ``default`` (batch norm, dropout 0.1, Adam) and
``flax_example`` (no batch norm, momentum), both the default ``CNN`` (32 and 64 channels), and
``time_to_99``, that benchmark's ``fast`` recipe (16 and 32 channels, batch norm, Adam).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax

import jaxtricks as jt
from benchmarks.common import emit, interleaved_step_ms, machine, mnist_batches, summarize, table
from benchmarks.time_to_99 import RECIPES
from benchmarks.train_throughput import CONFIGS
from jaxtricks.backend import speed_paths, use_speed_paths
from jaxtricks.models import CNN
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step

_FAST = RECIPES["fast"]
MODELS: dict[str, tuple[dict[str, Any], Any]] = {
    **{name: (config["model"], config["optimizer"]) for name, config in CONFIGS.items()},
    "time_to_99": (_FAST["model"],
                   lambda: jt.adam(_FAST["peak_lr"], b1=_FAST["b1"], b2=_FAST["b2"])),
}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the records it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=(*MODELS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.batch_size) < 1:
        raise SystemExit("--rounds, --steps and --batch-size must be at least 1")
    batches = mnist_batches(args.batch_size, args.steps + 1)
    records, rows = [], []
    for name in MODELS if args.config == "all" else [args.config]:
        model_kwargs, optimizer = MODELS[name]
        model, tx = CNN(**model_kwargs), optimizer()
        steps, states, convolutions = {}, {}, {}
        for path, on in (("xla", False), ("shifts", True)):
            state = create_train_state(model, tx, jax.random.key(0), batches[0][0][:1])
            # A step keeps the paths it was built with; count the convolutions XLA is left with.
            with use_speed_paths(speed_paths()._replace(one_channel_conv_by_shifts=on)):
                steps[path] = make_train_step(model, tx)
            text = steps[path].lower(state, batches[0]).as_text()
            convolutions[path] = text.count("stablehlo.convolution")
            states[path], _ = steps[path](state, batches[0])
        ms = interleaved_step_ms(steps, states, batches, args.rounds)
        record = {
            "benchmark": "one_channel_conv", "config": name, "rounds": args.rounds,
            "steps": args.steps, "batch_size": args.batch_size,
            "model": {**model_kwargs, **({"features": list(model_kwargs["features"])}
                                         if "features" in model_kwargs else {})},
            "convolutions": convolutions,
            "xla_ms": summarize(ms["xla"]), "shifts_ms": summarize(ms["shifts"]),
            "ratio": summarize([a / b for a, b in zip(ms["xla"], ms["shifts"], strict=True)]),
            **machine(),
        }
        emit(record)
        records.append(record)
        rows.append([name, record["xla_ms"]["median"], record["shifts_ms"]["median"],
                     record["ratio"]["median"], record["ratio"]["min"], record["ratio"]["max"]])
    table(rows, ["config", "XLA conv ms", "shifted sums ms", "ratio", "min", "max"])
    return records


if __name__ == "__main__":
    main()
