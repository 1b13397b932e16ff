"""MNIST training throughput: jaxtricks' ``fit`` against a plain Flax-plus-Optax loop.

Both train the same Linen module with the same optimizer and batch size on the same real MNIST
images, in one process, alternating repeats. The baseline is the loop of the Flax MNIST
example: ``flax.training.train_state.TrainState``, a ``jax.jit`` step, and each batch sliced
from host memory by a NumPy permutation. jaxtricks' figure is the epoch time ``fit`` reports
(compilation and evaluation excluded); the baseline's excludes its first (compiling) step.

    python -m benchmarks.train_throughput [--steps 100] [--repeats 3] [--config default]
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxtricks as jt
from benchmarks.common import emit, machine, mnist, summarize, table
from jaxtricks.models import CNN
from jaxtricks.training import fit

CONFIGS = {
    # The Flax MNIST example: its CNN, SGD with momentum, batch 128.
    "flax_example": dict(
        model=dict(use_batch_norm=False, dropout_rate=0.0),
        optimizer=lambda: jt.momentum(0.1, 0.9),
        reference=lambda: optax.sgd(0.1, momentum=0.9),
    ),
    # The command line's defaults: batch norm, dropout 0.1, Adam.
    "default": dict(
        model=dict(use_batch_norm=True, dropout_rate=0.1),
        optimizer=lambda: jt.adam(2e-3),
        reference=lambda: optax.adam(2e-3),
    ),
}


def _plain_loop(model: nn.Module, tx, images, labels, batch_size, steps, seed) -> float:
    """Images per second of the Flax-example loop over ``steps`` steps after one warm-up."""
    rng = jax.random.key(seed)
    variables = model.init(rng, jnp.asarray(images[:1]), train=False)
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    batch_stats = variables.get("batch_stats", {})

    @jax.jit
    def step(state, batch_stats, x, y, key):
        def loss_fn(params):
            variables = {"params": params}
            if batch_stats:
                variables["batch_stats"] = batch_stats
            logits, updates = model.apply(
                variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates.get("batch_stats", batch_stats)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), new_stats, loss

    order = np.random.default_rng(seed).permutation(images.shape[0])
    batches = order[: (steps + 1) * batch_size].reshape(steps + 1, batch_size)
    state, batch_stats, loss = step(
        state, batch_stats, images[batches[0]], labels[batches[0]], jax.random.fold_in(rng, 0)
    )
    loss.block_until_ready()
    begin = time.perf_counter()
    for i in range(1, steps + 1):
        idx = batches[i]
        state, batch_stats, loss = step(
            state, batch_stats, images[idx], labels[idx], jax.random.fold_in(rng, i)
        )
    loss.block_until_ready()
    return steps * batch_size / (time.perf_counter() - begin)


def _jaxtricks_fit(model, tx, images, labels, test_images, test_labels, batch_size, runner, seed):
    """Images per second of ``fit`` for one epoch over ``images``, and its compile time."""
    _, history = fit(
        model, tx, images, labels, test_images, test_labels,
        epochs=1, batch_size=batch_size, seed=seed, runner=runner, progress=False,
    )
    return history["epochs"][0]["images_per_s"], history["header"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--runner", choices=("loop", "scan", "auto"), default="loop")
    args = parser.parse_args()

    images, labels, test_images, test_labels = mnist(
        train_examples=(args.steps + 1) * args.batch_size, test_examples=1024
    )
    info = machine()
    rows = []
    for name in CONFIGS if args.config == "all" else [args.config]:
        config = CONFIGS[name]
        model = CNN(**config["model"])
        ours, theirs, header = [], [], None
        for repeat in range(args.repeats):
            rate, header = _jaxtricks_fit(
                model, config["optimizer"](), images[: args.steps * args.batch_size],
                labels[: args.steps * args.batch_size], test_images, test_labels,
                args.batch_size, args.runner, repeat,
            )
            ours.append(rate)
            theirs.append(
                _plain_loop(
                    model, config["reference"](), images, labels, args.batch_size, args.steps,
                    repeat,
                )
            )
        record = {
            "benchmark": "train_throughput",
            "config": name,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "runner": header["runner"],
            "jaxtricks_images_per_s": summarize(ours),
            "flax_optax_images_per_s": summarize(theirs),
            "ratio": summarize([a / b for a, b in zip(ours, theirs, strict=True)]),
            "jaxtricks_compile_time_s": header["compile_time_s"],
            **info,
        }
        emit(record)
        rows.append([
            name, header["runner"], record["jaxtricks_images_per_s"]["median"],
            record["flax_optax_images_per_s"]["median"], record["ratio"]["median"],
        ])
    table(rows, ["config", "runner", "jaxtricks img/s", "flax+optax img/s", "ratio"])


if __name__ == "__main__":
    main()
