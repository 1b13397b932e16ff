"""MNIST training throughput: jaxtricks' ``fit`` vs a plain Flax-plus-Optax loop vs PyTorch.

All three train the same CNN (:class:`jaxtricks.models.CNN`; PyTorch's twin is
:func:`benchmarks.torch_baseline.cnn`) with the same optimizer and batch size on the same real
MNIST images, in one process, interleaved: each repeat runs jaxtricks, then the Flax loop, then
PyTorch (when it is installed), so that a change in the machine's load hits all three alike.
The Flax baseline is the loop of the Flax MNIST example: ``flax.training.train_state.TrainState``,
a ``jax.jit`` step, and each batch sliced from host memory by a NumPy permutation; its model is
the same CNN with stock Flax layers (``flax.linen.BatchNorm``, not jaxtricks' faster one).
jaxtricks' figure is the time ``fit`` reports for its second epoch (compilation, evaluation and
the whole first epoch excluded, as warm-up); the Flax loop's and PyTorch's exclude their first
(compiling, warming) step. PyTorch runs on ``os.cpu_count()`` intra-op threads unless
``--torch-threads`` says otherwise (on a machine shared with other jobs one thread can be much
faster than two), on the CPU unless ``--torch-device cuda`` puts its model and images on a GPU.

    python -m benchmarks.train_throughput [--steps 100] [--repeats 3] [--config all] [--quick]
        [--torch-threads N] [--torch-device cpu|cuda] [--no-torch]

Prints one JSON line per configuration (images/s: median, min, max, spread of the repeats; the
ratios jaxtricks / Flax and jaxtricks / PyTorch per repeat) and a table on stderr.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import jaxtricks as jt
from benchmarks import torch_baseline
from benchmarks.common import emit, machine, mnist, summarize, table
from jaxtricks.models import CNN
from jaxtricks.training import fit

# Each config's ``optimizer`` builds jaxtricks' optimizer from a jaxtricks package, this one by
# default (fit_against passes another checkout's).
CONFIGS = {
    # The Flax MNIST example: its CNN, SGD with momentum, batch 128.
    "flax_example": dict(
        model=dict(use_batch_norm=False, dropout_rate=0.0),
        optimizer=lambda package=jt: package.momentum(0.1, 0.9),
        reference=lambda: optax.sgd(0.1, momentum=0.9),
        torch_optimizer=lambda torch, params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    ),
    # The command line's defaults: batch norm, dropout 0.1, Adam.
    "default": dict(
        model=dict(use_batch_norm=True, dropout_rate=0.1),
        optimizer=lambda package=jt: package.adam(2e-3),
        reference=lambda: optax.adam(2e-3),
        torch_optimizer=lambda torch, params: torch.optim.Adam(params, lr=2e-3),
    ),
}


class FlaxCNN(CNN):
    """jaxtricks' CNN with stock ``flax.linen.BatchNorm`` and ``flax.linen.Conv`` (no speed
    path for the one-channel first convolution), for the plain-Flax baseline."""

    batch_norm_layer = nn.BatchNorm

    def conv(self, features: int, kernel_size: int, strides: int = 1, *, train: bool = False,
             **kwargs: Any) -> nn.Conv:
        del train  # the training path is the speed path; the baseline takes XLA's convolution
        return super().conv(features, kernel_size, strides, **kwargs)


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
    """Images per second of ``fit``'s second epoch over ``images``, and its history header."""
    _, history = fit(
        model, tx, images, labels, validation_data=(test_images, test_labels),
        epochs=2, batch_size=batch_size, seed=seed, runner=runner, progress=False,
    )
    return history.epochs[-1].examples_per_s, history.header


def _torch_run(config, images, labels, batch_size, steps, seed) -> float:
    """Images per second of the PyTorch twin, on the device of ``images``, over ``steps`` steps
    after one warm-up."""
    import torch

    model = torch_baseline.cnn(**config["model"], seed=seed).to(images.device)
    optimizer = config["torch_optimizer"](torch, model.parameters())
    rate, _ = torch_baseline.train_images_per_s(
        model, optimizer, images, labels, batch_size, steps, seed
    )
    return rate


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns the records it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--runner", choices=("loop", "scan", "auto"), default=None,
                        help="the epoch runner; unset: the backend's choice, as fit makes it")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument(
        "--torch-threads", type=int, default=os.cpu_count(),
        help="PyTorch intra-op threads (default: os.cpu_count())",
    )
    parser.add_argument("--torch-device", default="cpu",
                        help="PyTorch's device: cpu, or cuda to compare on a GPU")
    parser.add_argument(
        "--quick", action="store_true",
        help="a few steps, one repeat, a small test split: checks the benchmark runs, not speed",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = min(args.steps, 4), 1
    if min(args.steps, args.batch_size, args.repeats, args.torch_threads) < 1:
        raise ValueError(
            f"--steps, --batch-size, --repeats and --torch-threads must be >= 1, got "
            f"{args.steps}, {args.batch_size}, {args.repeats}, {args.torch_threads}"
        )
    use_torch = torch_baseline.available() and not args.no_torch

    images, labels, test_images, test_labels = mnist(
        train_examples=(args.steps + 1) * args.batch_size, test_examples=256 if args.quick else 1024
    )
    info = machine() | {"torch": torch_baseline.version() if use_torch else None}
    if use_torch:
        import torch

        info["torch_threads"] = torch_baseline.set_threads(args.torch_threads)
        info["torch_device"] = args.torch_device
        torch_images = torch_baseline.to_nchw(images).to(args.torch_device)
        torch_labels = torch.from_numpy(labels.astype(np.int64)).to(args.torch_device)
    info["load_average_1min"] = os.getloadavg()[0]
    train_n = args.steps * args.batch_size
    records, rows = [], []
    for name in CONFIGS if args.config == "all" else [args.config]:
        config = CONFIGS[name]
        model, flax_model = CNN(**config["model"]), FlaxCNN(**config["model"])
        ours, theirs, torch_rates, header = [], [], [], None
        for repeat in range(args.repeats):
            rate, header = _jaxtricks_fit(
                model, config["optimizer"](), images[:train_n], labels[:train_n],
                test_images, test_labels, args.batch_size, args.runner, repeat,
            )
            ours.append(rate)
            theirs.append(
                _plain_loop(
                    flax_model, config["reference"](), images, labels, args.batch_size,
                    args.steps, repeat,
                )
            )
            if use_torch:
                torch_rates.append(
                    _torch_run(
                        config, torch_images, torch_labels, args.batch_size, args.steps, repeat
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
            "torch_images_per_s": summarize(torch_rates) if use_torch else None,
            "ratio": summarize([a / b for a, b in zip(ours, theirs, strict=True)]),
            "ratio_vs_torch": (
                summarize([a / b for a, b in zip(ours, torch_rates, strict=True)])
                if use_torch else None
            ),
            "jaxtricks_compile_time_s": header["compile_time_s"],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            **info,
            "load_average_1min_end": os.getloadavg()[0],
        }
        emit(record)
        records.append(record)
        rows.append([
            name, header["runner"], record["jaxtricks_images_per_s"]["median"],
            record["flax_optax_images_per_s"]["median"],
            record["torch_images_per_s"]["median"] if use_torch else "-",
            record["ratio"]["median"],
            record["ratio_vs_torch"]["median"] if use_torch else "-",
        ])
    table(rows, [
        "config", "runner", "jaxtricks img/s", "flax+optax img/s", "torch img/s",
        "jt/flax", "jt/torch",
    ])
    return records


if __name__ == "__main__":
    main()
