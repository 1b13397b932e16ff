"""One optimizer step: every jaxtricks optimizer against its Optax counterpart, same process.

A step is one jit-compiled function doing ``tx.update`` and ``optax.apply_updates``, with the
parameters and the optimizer state donated. It runs on two parameter trees:

* ``resnet50``: ResNet-50's 161 parameter tensors (25,557,032 float32): HWIO convolution
  kernels, batch-norm scale and bias, and the 2048 × 1000 classifier with its bias;
* ``small_leaves``: 2,004 small float32 leaves (1,036,068 parameters) in nested dicts, 167
  blocks of 3 layers of a 44 × 44 kernel, a bias, a scale and an offset.

Each optimizer runs in up to five implementations, interleaved repeat by repeat:

    optax                  the Optax optimizer on the tree
    jaxtricks              the jaxtricks optimizer on the tree
    jaxtricks_flat         flatten_by_dtype(jaxtricks optimizer) on the tree (concatenates
                           the gradients and parameters of leaves of at most 2¹⁶ elements,
                           splits the update, every step)
    jaxtricks_flat_params  the jaxtricks optimizer on flat_params buffers: the parameters
                           and gradients already are one buffer per dtype (the gradient of a
                           model that reads its parameters as views of the buffers)
    jaxtricks_flat_all     jaxtricks_flat with every leaf concatenated (not run by default)
    optax_flatten          optax.flatten(Optax optimizer) on the tree (not run by default)

Compile time is ``jit(step).lower(...)`` and ``.compile()``, timed apart; step time is one
call and ``block_until_ready`` per repeat, after two warm-up calls. Achieved bandwidth is the
ideal number of bytes a step must move divided by the median step time, counting one read
or write of one parameter-sized array as ``itemsize`` bytes per parameter: SGD reads g, w
and writes w (3 arrays, 12 bytes per float32 parameter); momentum, Nesterov, Adagrad and
RMSProp also read and write one accumulator (5 arrays, 20 bytes); Adam and AdamW read g, w,
m, v and write w, m, v (7 arrays, 28 bytes); normalized SGD and gradient clipping read g once
more for the global norm (+1 array).

    python -m benchmarks.optimizer_step [--quick] [--repeats 20] [--trees resnet50,small_leaves]
        [--optimizers adam,...] [--implementations optax,jaxtricks,...]

One JSON line per (tree, optimizer, implementation) on stdout; a table of medians and the
ratios jaxtricks / Optax on stderr.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import emit, machine, summarize, table
from jaxtricks.tricks import clipping, flat
from jaxtricks.tricks import optimizers as jto

LEARNING_RATE = 1e-3

# ResNet-50 (He et al. 2016): stages of bottleneck blocks (1×1, 3×3, 1×1 convolutions).
RESNET50_STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def resnet50_shapes(width: int = 64, stages=RESNET50_STAGES, classes: int = 1000):
    """The parameter shapes of ResNet-50 as a nested dict (``width`` and ``stages`` shrink it).

    Convolutions have no bias (batch norm follows); each batch norm has a scale and a bias;
    the first block of every stage has a 1×1 projection shortcut with its own batch norm.
    """
    scale = width / 64

    def bn(c):
        return {"scale": (c,), "bias": (c,)}

    tree: dict[str, Any] = {"stem": {"conv": {"kernel": (7, 7, 3, width)}, "bn": bn(width)}}
    channels = width
    for s, (blocks, base) in enumerate(stages):
        mid = int(base * scale)
        out = 4 * mid
        for b in range(blocks):
            block = {
                "conv1": {"kernel": (1, 1, channels, mid)}, "bn1": bn(mid),
                "conv2": {"kernel": (3, 3, mid, mid)}, "bn2": bn(mid),
                "conv3": {"kernel": (1, 1, mid, out)}, "bn3": bn(out),
            }
            if b == 0:
                block["proj"] = {"kernel": (1, 1, channels, out)}
                block["proj_bn"] = bn(out)
            tree[f"stage{s + 1}_block{b + 1}"] = block
            channels = out
    tree["fc"] = {"kernel": (channels, classes), "bias": (classes,)}
    return tree


def small_leaves_shapes(blocks: int = 167, layers: int = 3, width: int = 44):
    """``blocks × layers × 4`` small leaves: a ``width²`` kernel, a bias, a scale, an offset."""
    return {
        f"block{b}": {
            f"layer{i}": {
                "kernel": (width, width), "bias": (width,), "scale": (width,),
                "offset": (width,),
            }
            for i in range(layers)
        }
        for b in range(blocks)
    }


def tree_shapes(name: str, quick: bool):
    """The named tree's shapes; ``quick`` gives a small tree of the same kind."""
    if name == "resnet50":
        if quick:
            return resnet50_shapes(width=8, stages=((1, 8), (1, 16)), classes=10)
        return resnet50_shapes()
    if name == "small_leaves":
        return small_leaves_shapes(blocks=2, layers=2, width=8) if quick else small_leaves_shapes()
    raise ValueError(f"trees: unknown tree {name!r}, expected one of {list(TREES)}")


TREES = ("resnet50", "small_leaves")


def _is_shape(x):
    return isinstance(x, tuple)


def materialize(shapes, seed: int, scale: float):
    """Float32 arrays ``scale · N(0, 1)`` with the given shapes."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s, dtype=np.float32) * scale),
        shapes, is_leaf=_is_shape,
    )


# name -> (jaxtricks optimizer, Optax counterpart, parameter-sized arrays an ideal step moves)
OPTIMIZERS: dict[str, tuple[Callable[[], Any], Callable[[], Any], int]] = {
    "sgd": (lambda: jto.sgd(LEARNING_RATE), lambda: optax.sgd(LEARNING_RATE), 3),
    "momentum": (
        lambda: jto.momentum(LEARNING_RATE, 0.9),
        lambda: optax.sgd(LEARNING_RATE, momentum=0.9), 5,
    ),
    "nesterov": (
        lambda: jto.nesterov(LEARNING_RATE, 0.9),
        lambda: optax.sgd(LEARNING_RATE, momentum=0.9, nesterov=True), 5,
    ),
    "adagrad": (lambda: jto.adagrad(LEARNING_RATE), lambda: optax.adagrad(LEARNING_RATE), 5),
    "rmsprop": (lambda: jto.rmsprop(LEARNING_RATE), lambda: optax.rmsprop(LEARNING_RATE), 5),
    "adam": (lambda: jto.adam(LEARNING_RATE), lambda: optax.adam(LEARNING_RATE), 7),
    "adamw": (
        lambda: jto.adamw(LEARNING_RATE, weight_decay=1e-4),
        lambda: optax.adamw(LEARNING_RATE, weight_decay=1e-4), 7,
    ),
    "normalized_sgd": (
        lambda: jto.normalized_sgd(LEARNING_RATE, eps=1e-6),
        lambda: optax.chain(
            optax.normalize_by_update_norm(1.0, eps=1e-6), optax.sgd(LEARNING_RATE)
        ), 4,
    ),
    "clip_adamw": (
        lambda: optax.chain(
            clipping.clip_by_global_norm(1.0), jto.adamw(LEARNING_RATE, weight_decay=1e-4)
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(LEARNING_RATE, weight_decay=1e-4)
        ), 8,
    ),
}

QUICK_OPTIMIZERS = ("sgd", "adam", "clip_adamw")
IMPLEMENTATIONS = (
    "optax", "jaxtricks", "jaxtricks_flat", "jaxtricks_flat_params", "jaxtricks_flat_all",
    "optax_flatten",
)
DEFAULT_IMPLEMENTATIONS = IMPLEMENTATIONS[:4]


def _step_fn(tx: optax.GradientTransformation):
    """The jit-compiled step ``(w, state, g) -> (w', state')``, donating w and the state."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def _copy(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class _Runner:
    """One implementation of one optimizer: its compiled step, parameters and state."""

    def __init__(self, implementation: str, optimizer: str, params, grads):
        ours, theirs, _ = OPTIMIZERS[optimizer]
        if implementation == "jaxtricks_flat_params":
            params, unflatten = flat.flat_params(params)  # copies: the originals stay usable
            del unflatten
            grads = flat.FlatLayout.of(grads).flatten(grads)  # as the model's backward gives
            tx = ours()
        else:
            params = _copy(params)
            tx = {
                "optax": theirs,
                "jaxtricks": ours,
                "jaxtricks_flat": lambda: flat.flatten_by_dtype(ours()),
                "jaxtricks_flat_all": lambda: flat.flatten_by_dtype(ours(), max_leaf_size=None),
                "optax_flatten": lambda: optax.flatten(theirs()),
            }[implementation]()
        state = tx.init(params)
        self.state_leaves = len(jax.tree.leaves(state))
        step = _step_fn(tx)
        begin = time.perf_counter()
        lowered = step.lower(params, state, grads)
        self.lower_s = time.perf_counter() - begin
        begin = time.perf_counter()
        lowered.compile()
        self.compile_s = time.perf_counter() - begin
        self.step, self.params, self.state, self.grads = step, params, state, grads
        self.times: list[float] = []

    def call(self) -> float:
        begin = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - begin


def measure(tree: str, optimizer: str, implementations, params, grads, repeats: int, info):
    """Compiles every implementation, then times them in turns; returns their records."""
    runners = {name: _Runner(name, optimizer, params, grads) for name in implementations}
    first_call = {name: runner.call() for name, runner in runners.items()}
    for runner in runners.values():
        runner.call()
    order = list(runners)
    for repeat in range(repeats):
        # Rotating the order spreads any drift of the shared machine over all of them.
        for name in order[repeat % len(order):] + order[: repeat % len(order)]:
            runners[name].times.append(runners[name].call())
    leaves = jax.tree.leaves(params)
    size = sum(leaf.size for leaf in leaves)
    bytes_per_step = OPTIMIZERS[optimizer][2] * sum(leaf.nbytes for leaf in leaves)
    baseline = runners.get("optax")
    records = []
    for name, runner in runners.items():
        step = summarize(runner.times)
        record = {
            "benchmark": "optimizer_step",
            "tree": tree,
            "leaves": len(leaves),
            "params": int(size),
            "optimizer": optimizer,
            "implementation": name,
            "state_leaves": runner.state_leaves,
            "lower_s": runner.lower_s,
            "compile_s": runner.compile_s,
            "first_call_s": first_call[name],
            "step_s": step,
            "bytes_per_step": int(bytes_per_step),
            "gb_per_s": bytes_per_step / step["median"] / 1e9,
        }
        if baseline is not None and name != "optax":
            record["step_ratio_vs_optax"] = summarize(
                [a / b for a, b in zip(runner.times, baseline.times, strict=True)]
            )
            record["compile_ratio_vs_optax"] = (runner.lower_s + runner.compile_s) / (
                baseline.lower_s + baseline.compile_s
            )
        record["load_avg_1m"] = os.getloadavg()[0]
        record.update(info)
        emit(record)
        records.append(record)
    return records


def _names(text: str, choices, argument: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    for n in names:
        if n not in choices:
            raise SystemExit(f"{argument}: unknown name {n!r}, expected some of {list(choices)}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny trees, 3 repeats and (unless --optimizers) sgd, adam and "
                        "clip_adamw: checks that everything runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 20)")
    parser.add_argument("--trees", default=",".join(TREES))
    parser.add_argument("--optimizers", default=None, help="default: all")
    parser.add_argument("--implementations", default=",".join(DEFAULT_IMPLEMENTATIONS))
    args = parser.parse_args(argv)
    trees = _names(args.trees, TREES, "--trees")
    if args.optimizers is None:
        args.optimizers = ",".join(QUICK_OPTIMIZERS if args.quick else OPTIMIZERS)
    optimizers = _names(args.optimizers, OPTIMIZERS, "--optimizers")
    implementations = _names(args.implementations, IMPLEMENTATIONS, "--implementations")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 20)
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {repeats}")

    info = machine()
    rows = []
    for tree in trees:
        params = materialize(tree_shapes(tree, args.quick), seed=0, scale=0.05)
        grads = materialize(tree_shapes(tree, args.quick), seed=1, scale=1e-3)
        for optimizer in optimizers:
            for r in measure(tree, optimizer, implementations, params, grads, repeats, info):
                ratio = r.get("step_ratio_vs_optax", {}).get("median", float("nan"))
                rows.append([
                    tree, optimizer, r["implementation"], r["step_s"]["median"] * 1e3,
                    r["step_s"]["spread"], r["gb_per_s"], r["lower_s"] + r["compile_s"],
                    ratio, r.get("compile_ratio_vs_optax", float("nan")),
                ])
    table(rows, [
        "tree", "optimizer", "implementation", "step ms", "spread", "GB/s", "compile s",
        "step / optax", "compile / optax",
    ])


if __name__ == "__main__":
    main()
