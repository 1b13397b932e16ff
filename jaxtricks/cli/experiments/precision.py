"""Mixed precision: float32 against bfloat16 and float16 compute, on the main recipe's CNN.

Each precision trains the ``train`` command's default recipe (the CNN with batch norm, dropout
0.1 before the last dense layer, Adam on a one-cycle schedule peaking at 2e-3, batch 128,
standardized inputs) with a :func:`~jaxtricks.training.precision.precision_policy`:

    fp32   everything float32
    bf16   parameters and inputs cast to bfloat16 for each step; float32 master weights,
           optimizer state, batch norm and loss
    fp16   the same in float16, with Flax's dynamic loss scale (initial 2¹⁶, halved and the
           step skipped when the scaled gradients overflow)

and is scored on the test split after its last epoch, in its own precision. Memory is measured
once per precision, for one batch, on the backend it runs on:

- ``param_bytes`` / ``opt_state_bytes``: the float32 master parameters and Adam's state (the
  same in every precision), ``compute_param_bytes``: the copy cast to the compute dtype (none
  in float32);
- ``activation_bytes``: what the backward pass keeps, the residuals of ``jax.vjp`` of the
  compiled loss of one batch, split by dtype (``activation_bytes_by_dtype``);
- ``step_temp_bytes`` / ``step_argument_bytes``: XLA's ``memory_analysis()`` of the compiled
  train step (temporary buffers; arguments: state and batch) on this backend.

Speed is left to a GPU: XLA's CPU backend computes bfloat16 and float16 convolutions by
converting them, so CPU timings say nothing about a GPU's tensor cores (they are recorded as
``train_time_s`` all the same).

Full config: MNIST, 55,000 train / 5,000 validation / 10,000 test images, CNN (32, 64) with
dense 256, **1 epoch** (the ``train`` command's default is 4: one epoch per run keeps 3
precisions × 3 seeds within about 20 minutes on a 2-core CPU), 3 seeds: 9 runs.
Quick config: 2,048 train / 512 validation / 1,000 test images, CNN (8, 16) with dense 32,
1 epoch, 1 seed.
"""

from __future__ import annotations

import collections
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks.cli.experiments import common
from jaxtricks.models import CNN
from jaxtricks.training import (
    LambdaHook,
    create_train_state,
    make_train_step,
    precision_policy,
    softmax_cross_entropy,
)
from jaxtricks.training.model import functional_model
from jaxtricks.tricks import optimizers, schedules

NAME = "precision"
CLAIM = (
    "beyond the lesson: mixed precision (bfloat16, or float16 with dynamic loss scaling, and "
    "float32 master weights) trains to float32's accuracy with smaller activations"
)

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "train_examples": None,
    "validation_examples": 5000,
    "test_examples": None,
    "conv_features": [32, 64],
    "hidden": 256,
    "dropout_rate": 0.1,
    "optimizer": "adam",
    "learning_rate": 2e-3,
    "schedule": "one_cycle",
    "epochs": 1,
    "batch_size": 128,
    "precisions": ["fp32", "bf16", "fp16"],
    "seeds": 3,
}
QUICK: dict[str, Any] = {
    **FULL,
    "train_examples": 2048,
    "validation_examples": 512,
    "test_examples": 1000,
    "conv_features": [8, 16],
    "hidden": 32,
    "seeds": 1,
}


def _nbytes(tree: Any) -> int:
    return int(sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes")))


def _memory(model: CNN, optimizer: Any, name: str, batch: tuple[Any, Any]) -> dict[str, Any]:
    """Bytes of the parameters, the optimizer state, the activations kept for the backward
    pass and the compiled step's buffers, for one batch in precision ``name``."""
    policy = precision_policy(name)
    state = create_train_state(model, optimizer, jax.random.key(0), batch[0][:1],
                               precision=policy)
    fm = functional_model(model)
    x, y = batch

    def loss(params):
        outputs, _ = fm.apply(policy.cast_to_compute(params), state.model_state,
                              policy.cast_to_compute(x), train=True, key=state.rng)
        return jnp.mean(softmax_cross_entropy(policy.cast_to_output(outputs), y))

    _, backward = jax.vjp(jax.jit(loss), state.params)
    by_dtype: collections.Counter[str] = collections.Counter()
    for leaf in jax.tree.leaves(backward):
        if hasattr(leaf, "nbytes"):
            by_dtype[str(leaf.dtype)] += int(leaf.nbytes)
    # make_train_step's step is a jax.jit function, which lowers.
    step = cast(jax.stages.Wrapped,
                make_train_step(model, optimizer, precision=policy, donate=False))
    analysis = step.lower(state, batch).compile().memory_analysis()
    return {
        "param_bytes": _nbytes(state.params),
        "opt_state_bytes": _nbytes(state.opt_state),
        # No copy when the compute dtype is the param dtype (the cast is the identity).
        "compute_param_bytes": 0 if policy.compute_dtype == policy.param_dtype else _nbytes(
            policy.cast_to_compute(state.params)),
        "activation_bytes": sum(by_dtype.values()),
        "activation_bytes_by_dtype": dict(sorted(by_dtype.items())),
        "step_temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
        "step_argument_bytes": None if analysis is None else int(
            analysis.argument_size_in_bytes),
    }


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Trains the CNN in every precision at every seed; measures each precision's memory."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
        validation_examples=config["validation_examples"],
    )
    model = CNN(features=tuple(config["conv_features"]), hidden=config["hidden"],
                use_batch_norm=True, dropout_rate=config["dropout_rate"])
    steps = config["epochs"] * (data.train_x.shape[0] // config["batch_size"])
    if config["schedule"] != "one_cycle":
        raise ValueError(f"schedule must be 'one_cycle', got {config['schedule']!r}")
    optimizer = optimizers.get(config["optimizer"],
                               schedules.one_cycle(steps, config["learning_rate"]))
    batch = (jnp.asarray(data.train_x[:config["batch_size"]]),
             jnp.asarray(data.train_y[:config["batch_size"]]))
    runs, memory = [], {}
    for name in config["precisions"]:
        memory[name] = _memory(model, optimizer, name, batch)
        for seed in seeds:
            overflows: list[float] = []

            def count_overflows(state, record, seen=overflows):
                del state
                seen.append(record.metrics.get("overflow_steps", 0.0))
                return False

            result, state = common.fit_run(
                model,
                optimizer,
                data,
                condition=name,
                seed=seed,
                epochs=config["epochs"],
                batch_size=config["batch_size"],
                log=log,
                return_state=True,
                callbacks=[LambdaHook(count_overflows)],
                precision=name,
            )
            scale = getattr(state.opt_state, "loss_scale", None)
            result["final"]["overflow_steps"] = int(sum(overflows))
            result["final"]["final_loss_scale"] = None if scale is None else float(scale.scale)
            runs.append(result)
    summary = common.summarize(runs)
    headline = []
    for name, s in summary.items():
        m = memory[name]
        headline.append(
            f"{name}: test accuracy {common.pm(s['final']['test_accuracy'], 100)} %, skipped "
            f"{s['final']['skipped_steps']['mean']:.0f}, overflows "
            f"{s['final']['overflow_steps']['mean']:.1f}; activations "
            f"{m['activation_bytes'] / 2**20:.1f} MiB per batch, parameters "
            f"{m['param_bytes'] / 2**20:.2f} MiB (+ {m['compute_param_bytes'] / 2**20:.2f} "
            f"MiB compute copy), step temporaries "
            + ("n/a" if m["step_temp_bytes"] is None else f"{m['step_temp_bytes'] / 2**20:.1f} MiB")
        )
    return {"runs": runs, "summary": summary, "memory": memory, "headline": headline}


def plot(results: dict[str, Any], path: str) -> str:
    """Test accuracy per precision (mean ± std, seeds as dots) and memory per precision."""
    plt = common.pyplot()
    summary, memory = results["summary"], results["memory"]
    names = list(summary)
    fig, (accuracy_ax, memory_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    stats = [summary[n]["final"]["test_accuracy"] for n in names]
    accuracy_ax.errorbar(range(len(names)), [100 * s["mean"] for s in stats],
                         yerr=[100 * s["std"] for s in stats], fmt="o", capsize=5)
    for run in results["runs"]:
        accuracy_ax.plot(names.index(run["condition"]), 100 * run["final"]["test_accuracy"],
                         ".", color="gray", alpha=0.6)
    accuracy_ax.set_xticks(range(len(names)), names)
    accuracy_ax.set(title=f"test accuracy after {results['config']['epochs']} epoch(s) "
                          "(mean ± std, dots: seeds)", ylabel="accuracy (%)")
    accuracy_ax.grid(alpha=0.3, axis="y")
    groups = {"float32": ("float32",), "bfloat16 / float16": ("bfloat16", "float16"),
              "bool / int32 (masks, indices)": ("bool", "int32")}
    bottom = np.zeros(len(names))
    for label, dtypes in groups.items():
        values = np.asarray([sum(memory[n]["activation_bytes_by_dtype"].get(d, 0) for d in dtypes)
                             for n in names], np.float64) / 2**20
        memory_ax.bar(range(len(names)), values, 0.5, bottom=bottom,
                      label=f"kept for the backward pass: {label}")
        bottom += values
    temps = [memory[n]["step_temp_bytes"] for n in names]
    top = bottom.max()
    if all(t is not None for t in temps):
        temps_mib = np.asarray(temps, np.float64) / 2**20
        memory_ax.plot(range(len(names)), temps_mib, "k_", markersize=30,
                       label="compiled train step's temporary buffers")
        top = max(top, temps_mib.max())
    memory_ax.set_xticks(range(len(names)), names)
    memory_ax.set(title=f"memory for one batch of {results['config']['batch_size']}",
                  ylabel="MiB")
    memory_ax.set_ylim(0, 1.45 * top)
    memory_ax.legend(fontsize=8, loc="upper right")
    memory_ax.grid(alpha=0.3, axis="y")
    seeds = len(results["seeds"])
    fig.suptitle(f"mixed precision: CNN with batch norm on {results['config']['dataset']} "
                 f"({seeds} seed{'s' * (seeds > 1)}, {results['machine']['backend']})")
    fig.tight_layout()
    return common.save_figure(fig, path)
