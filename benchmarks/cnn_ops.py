"""Where a CNN training step's time goes on this backend: its operations timed one by one.

For the default :class:`jaxtricks.models.CNN` at batch ``B`` (128): each 3×3 convolution's
forward pass, input gradient and weight gradient, in NHWC (jaxtricks' layout) and NCHW
dimension numbers; 2×2 average pooling forward and forward+backward as jaxtricks computes it
(reshape and mean) and as ``lax.reduce_window``; the hidden dense layer's forward+backward; and
a dropout mask of the hidden layer's shape with each PRNG implementation. Each figure is the
best of ``--rounds`` rounds of ``--calls`` calls of one jit-compiled function, in milliseconds,
so compare figures of one run only.

    python -m benchmarks.cnn_ops [--batch-size 128] [--rounds 3] [--calls 10] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import emit, machine, table
from jaxtricks.models.cnn import average_pool_2x2


def best_ms(function: Callable, *args: Any, rounds: int, calls: int) -> float:
    """Milliseconds per call of ``function(*args)``, best of ``rounds`` after one warm-up."""
    jax.block_until_ready(function(*args))
    best = float("inf")
    for _ in range(rounds):
        begin = time.perf_counter()
        for _ in range(calls):
            out = function(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - begin) / calls)
    return best * 1e3


def _conv_timings(layout, batch, size, cin, cout, rng, timer) -> dict[str, float]:
    spec = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=spec)

    shapes = {
        "NHWC": ((batch, size, size, cin), (3, 3, cin, cout), (batch, size, size, cout)),
        "NCHW": ((batch, cin, size, size), (cout, cin, 3, 3), (batch, cout, size, size)),
    }[layout]
    x, w, g = (jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes)
    return {
        "forward": timer(jax.jit(conv), x, w),
        "input_grad": timer(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0]), x, w, g),
        "weight_grad": timer(jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1]), x, w, g),
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the timings; returns the records it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="batch 8, 1 round of 1 call")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.calls = 8, 1, 1
    if min(args.batch_size, args.rounds, args.calls) < 1:
        raise ValueError(
            f"--batch-size, --rounds and --calls must be >= 1, got {args.batch_size}, "
            f"{args.rounds}, {args.calls}"
        )
    batch = args.batch_size

    def timer(function, *inputs):
        return best_ms(function, *inputs, rounds=args.rounds, calls=args.calls)

    rng = np.random.default_rng(0)
    info = machine() | {"batch_size": batch, "load_average_1min": os.getloadavg()[0]}
    records = []

    def record(operation: str, variant: str, ms: float) -> None:
        records.append({"benchmark": "cnn_ops", "operation": operation, "variant": variant,
                        "ms": ms, **info})
        emit(records[-1])

    for name, (size, cin, cout) in {"conv1": (28, 1, 32), "conv2": (14, 32, 64)}.items():
        for layout in ("NHWC", "NCHW"):
            for part, ms in _conv_timings(layout, batch, size, cin, cout, rng, timer).items():
                record(f"{name}_{part}", layout, ms)
    h = jnp.asarray(rng.standard_normal((batch, 28, 28, 32), np.float32))

    def reduce_window_pool(h):
        return lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") * 0.25

    pools = {"reshape_mean": average_pool_2x2, "reduce_window": reduce_window_pool}
    for variant, pool in pools.items():
        record("avg_pool_forward", variant, timer(jax.jit(pool), h))
        grad = jax.jit(jax.grad(lambda h, pool=pool: jnp.sum(pool(h))))
        record("avg_pool_forward_backward", variant, timer(grad, h))
    a = jnp.asarray(rng.standard_normal((batch, 3136), np.float32))
    w = jnp.asarray(rng.standard_normal((3136, 256), np.float32) * 0.02)
    dense = jax.jit(jax.grad(lambda w, a: jnp.sum(jax.nn.relu(a @ w)), argnums=(0, 1)))
    record("dense_forward_backward", "3136x256", timer(dense, w, a))
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        mask = jax.jit(lambda key: jax.random.bernoulli(key, 0.9, (batch, 256)))
        record("dropout_mask", impl, timer(mask, jax.random.key(0, impl=impl)))
    table([[r["operation"], r["variant"], r["ms"]] for r in records],
          ["operation", "variant", "ms"])
    return records


if __name__ == "__main__":
    main()
