"""What every benchmark shares: real MNIST, timing statistics, JSON lines and a table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load
from jaxtricks.tricks import preprocessing

# Every benchmark runs with XLA's fast CPU convolutions unless XLA_FLAGS names the setting
# already (``--xla_cpu_experimental_ynn_fusion_type=+dot`` measures jaxlib's default), and with
# glibc's malloc keeping freed memory unless JAXTRICKS_DEFAULT_MALLOC=1 (glibc's default).
configure_xla_cpu()
HOST_ALLOCATOR = (
    "default" if os.environ.get("JAXTRICKS_DEFAULT_MALLOC") == "1" else configure_host_allocator()
)


def xla_flops(function: Any, *args: Any) -> float:
    """The floating-point operations of one call of the jit-compiled ``function(*args)``, as
    XLA's cost analysis counts them (0.0 where it counts none)."""
    analysis = function.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):  # one entry per program on older jax
        analysis = analysis[0]
    return float((analysis or {}).get("flops", 0.0))


def machine() -> dict[str, Any]:
    """The machine and versions a measurement was taken on."""
    import flax
    import optax

    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "host_allocator": HOST_ALLOCATOR,
    }


def mnist(train_examples: int | None = None, test_examples: int | None = None):
    """Real MNIST as float32 (N, 28, 28, 1) standardized with train statistics, int32 labels."""
    data = load("mnist")
    train = preprocessing.scale_to_unit(data.train_images[:train_examples, ..., None])
    test = preprocessing.scale_to_unit(data.test_images[:test_examples, ..., None])
    stats = preprocessing.fit_standardization(train)
    return (
        preprocessing.standardize(train, stats),
        data.train_labels[:train_examples].astype(np.int32),
        preprocessing.standardize(test, stats),
        data.test_labels[:test_examples].astype(np.int32),
    )


def mnist_batches(batch_size: int, count: int) -> list[tuple[jax.Array, jax.Array]]:
    """The first ``count`` batches of ``batch_size`` real MNIST training images and labels, on
    the device."""
    images, labels, _, _ = mnist(train_examples=batch_size * count)
    return [(jax.device_put(images[i * batch_size:(i + 1) * batch_size]),
             jax.device_put(labels[i * batch_size:(i + 1) * batch_size])) for i in range(count)]


def interleaved_step_ms(steps: dict[str, Any], states: dict[str, Any], batches: list[Any],
                        rounds: int) -> dict[str, list[float]]:
    """Milliseconds per step of each ``step(state, batch) -> (state, metrics)``, per round.

    A round runs every step once over ``batches[0]`` untimed, then times it over the rest;
    odd rounds take the steps in reverse order, so that a change of load affects all alike.
    ``states`` is updated in place with each step's last state.
    """
    ms: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds):
        for name in list(steps)[::-1 if round_ % 2 else 1]:
            step = steps[name]
            state, _ = step(states[name], batches[0])
            jax.block_until_ready(state)
            tick = time.perf_counter()
            for batch in batches[1:]:
                state, _ = step(state, batch)
            jax.block_until_ready(state)
            ms[name].append((time.perf_counter() - tick) / (len(batches) - 1) * 1e3)
            states[name] = state
    return ms


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else float("nan"),
        "n": len(values),
    }


def emit(record: dict[str, Any]) -> None:
    """Prints one measurement as a JSON line on stdout."""
    print(json.dumps(record), flush=True)


def table(rows: list[list[Any]], header: list[str]) -> None:
    """Prints a plain-text table on stderr (stdout stays JSON lines)."""
    cells = [header, *[[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=sys.stderr)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=sys.stderr)
