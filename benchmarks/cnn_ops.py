"""Where a CNN training step's time goes on this backend: its operations timed one by one.

For a :class:`jaxtricks.models.CNN` at batch ``B`` (128), by default the Flax example's
(``--features 32 64 --hidden 256``): each 3×3 convolution's forward pass, input gradient and
weight gradient, in NHWC (jaxtricks' layout) and NCHW dimension numbers; 2×2 average pooling
forward and forward+backward as jaxtricks computes it (reshape and mean) and as
``lax.reduce_window``; the hidden dense layer's forward+backward; a dropout mask of the hidden
layer's shape with each PRNG implementation; and, to set the parts against, the whole training
step of that CNN with batch norm, Adam at a constant 1e-3 and the cross-entropy on a batch of
real MNIST images, as :func:`~jaxtricks.training.steps.make_train_step` builds it (with this
backend's speed paths, not donating its state). Each figure is the best of ``--rounds`` rounds
of ``--calls`` calls of one jit-compiled function, in milliseconds, so compare figures of one
run only. Where XLA's cost analysis counts an operation's floating-point work, ``gflop_per_s``
is that work over the time, beside ``matmul_gflop_per_s``, this machine's float32 rate on a
2048×2048 matrix product (256×256 with ``--quick``).

    python -m benchmarks.cnn_ops [--batch-size 128] [--features 32 64] [--hidden 256]
                                 [--rounds 3] [--calls 10] [--quick]
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

import jaxtricks as jt
from benchmarks.common import emit, machine, mnist_batches, table, xla_flops
from benchmarks.time_to_99 import matmul_flops_per_s
from jaxtricks.models import CNN
from jaxtricks.models.cnn import average_pool_2x2
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import make_train_step


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


def flops(function: Callable, *args: Any) -> float | None:
    """:func:`benchmarks.common.xla_flops` of ``function(*args)``; None where XLA counts none."""
    return xla_flops(function, *args) or None


def _conv_timings(layout, batch, size, cin, cout, rng, timer) -> dict[str, tuple[float, Any]]:
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
    parser.add_argument("--features", type=int, nargs=2, default=[32, 64], metavar=("C1", "C2"),
                        help="the channels of the two conv layers")
    parser.add_argument("--hidden", type=int, default=256, help="the hidden dense layer's width")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="batch 8, 1 round of 1 call")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.calls = 8, 1, 1
    if min(args.batch_size, args.rounds, args.calls, args.hidden, *args.features) < 1:
        raise ValueError(
            "--batch-size, --features, --hidden, --rounds and --calls must be >= 1, got "
            f"{args.batch_size}, {args.features}, {args.hidden}, {args.rounds}, {args.calls}"
        )
    batch, (c1, c2), hidden = args.batch_size, args.features, args.hidden

    def timer(function, *inputs):
        return best_ms(function, *inputs, rounds=args.rounds, calls=args.calls), flops(
            function, *inputs)

    rng = np.random.default_rng(0)
    info = machine() | {"batch_size": batch, "features": [c1, c2], "hidden": hidden,
                        "load_average_1min": os.getloadavg()[0]}
    matmul_size = 256 if args.quick else 2048
    info["matmul_gflop_per_s"] = matmul_flops_per_s(size=matmul_size) / 1e9
    records = []

    def record(operation: str, variant: str, timing: tuple[float, float | None]) -> None:
        ms, work = timing
        records.append({"benchmark": "cnn_ops", "operation": operation, "variant": variant,
                        "ms": ms, "flops": work,
                        "gflop_per_s": None if work is None else work / ms / 1e6, **info})
        emit(records[-1])

    for name, (size, cin, cout) in {"conv1": (28, 1, c1), "conv2": (14, c1, c2)}.items():
        for layout in ("NHWC", "NCHW"):
            for part, timing in _conv_timings(layout, batch, size, cin, cout, rng, timer).items():
                record(f"{name}_{part}", layout, timing)
    h = jnp.asarray(rng.standard_normal((batch, 28, 28, c1), np.float32))

    def reduce_window_pool(h):
        return lax.reduce_window(h, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") * 0.25

    pools = {"reshape_mean": average_pool_2x2, "reduce_window": reduce_window_pool}
    for variant, pool in pools.items():
        record("avg_pool_forward", variant, timer(jax.jit(pool), h))
        grad = jax.jit(jax.grad(lambda h, pool=pool: jnp.sum(pool(h))))
        record("avg_pool_forward_backward", variant, timer(grad, h))
    flat = 7 * 7 * c2
    a = jnp.asarray(rng.standard_normal((batch, flat), np.float32))
    w = jnp.asarray(rng.standard_normal((flat, hidden), np.float32) * 0.02)
    dense = jax.jit(jax.grad(lambda w, a: jnp.sum(jax.nn.relu(a @ w)), argnums=(0, 1)))
    record("dense_forward_backward", f"{flat}x{hidden}", timer(dense, w, a))
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        mask = jax.jit(lambda key: jax.random.bernoulli(key, 0.9, (batch, hidden)))
        record("dropout_mask", impl, timer(mask, jax.random.key(0, impl=impl)))
    model = CNN(features=(c1, c2), hidden=hidden, use_batch_norm=True)
    optimizer = jt.adam(1e-3)
    images, labels = mnist_batches(batch, 1)[0]
    state = create_train_state(model, optimizer, jax.random.key(0), images[:1])
    # Not donated, so that every call can take the same state.
    train_step = make_train_step(model, optimizer, donate=False)
    record("train_step", "BN, Adam", timer(train_step, state, (images, labels)))
    rows = [[r["operation"], r["variant"], r["ms"], r["gflop_per_s"] or ""] for r in records]
    matmul = [f"matmul {matmul_size}x{matmul_size}", "float32", "", info["matmul_gflop_per_s"]]
    table([*rows, matmul], ["operation", "variant", "ms", "GFLOP/s"])
    return records


if __name__ == "__main__":
    main()
