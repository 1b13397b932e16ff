"""Sharding checks run in a process of their own on 8 simulated CPU devices; prints JSON.

``test_sharding.py`` runs ``python sharding_worker.py CHECK ...`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which takes effect only if set before JAX
starts, so not inside the pytest process (the rest of the suite keeps one device). Each check
returns plain numbers and lists; the assertions live in the test module.
"""

import json
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from training_toys import CLASSES, toy_problem

import jaxtricks as jt
from jaxtricks.training import create_train_state, fit, make_train_step
from jaxtricks.training.sharding import (
    batch_sharding,
    make_mesh,
    per_device_bytes,
    shard_batch,
    shard_dataset,
    shard_train_state,
    zero1_sharding,
)

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

DEVICE_COUNTS = (1, 2, 4, 8)
BATCH = 16
STEPS = 6
OPTIMIZERS = {
    "sgd": lambda: jt.sgd(0.1),
    "adam": lambda: jt.adam(1e-2),
    "clipped_adamw": lambda: optax.chain(
        jt.clip_by_global_norm(1.0), jt.adamw(1e-2, weight_decay=1e-2)
    ),
}


class Net(nn.Module):
    """Dense (no bias) → BatchNorm → ReLU → Dropout → Dense on (N, 8, 8, 1) inputs.

    No bias before the batch norm: its gradient is zero in exact arithmetic (the norm subtracts
    the mean), so what is left is rounding noise, which Adam's per-coordinate normalization turns
    into ±lr steps that depend on the summation order; no tolerance could compare that leaf.
    """

    dropout_rate: float = 0.25

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(16, use_bias=False)(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(CLASSES)(x)


def _flat(tree):
    """{path: nested list} of a pytree of arrays, for JSON."""
    return {
        jax.tree_util.keystr(path): np.asarray(leaf).tolist()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _collectives(compiled_text):
    """How many of each collective op the compiled HLO text holds (async starts included)."""
    return {
        name: len(re.findall(rf"\s{name}(?:-start)?\(", compiled_text))
        for name in ("all-gather", "all-reduce", "all-to-all", "reduce-scatter")
    }


def _train(optimizer, images, labels, devices, shard_optimizer_state=False, dropout_key=None):
    """STEPS steps of make_train_step on consecutive batches; None devices means no mesh."""
    model = Net()
    mesh = None if devices is None else make_mesh(devices)
    state = create_train_state(model, optimizer, jax.random.key(0), images[:1])
    if dropout_key is not None:
        state = state._replace(rng=dropout_key)
    if mesh is not None:
        state = shard_train_state(state, mesh, shard_optimizer_state=shard_optimizer_state)
    step = make_train_step(
        model, optimizer, mesh=mesh, shard_optimizer_state=shard_optimizer_state
    )
    grad_norms = []
    for i in range(STEPS):
        rows = slice(i * BATCH % len(images), i * BATCH % len(images) + BATCH)
        batch = (images[rows], labels[rows])
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        state, metrics = step(state, batch)
        grad_norms.append(float(metrics["grad_norm"]))
    return state, grad_norms


def check_training():
    """Final params and batch stats on no mesh, 1, 2, 4, 8 devices and 8 with ZeRO-1.

    A control run on 8 devices with another dropout key shows what a real difference (other
    masks) looks like next to the float32 rounding the equal runs differ by.
    """
    images, labels = toy_problem(0, 4 * BATCH)
    results = {}
    for name, make_optimizer in OPTIMIZERS.items():
        optimizer = make_optimizer()
        runs = {}
        for devices in (None, *DEVICE_COUNTS, "8_zero1", "8_other_dropout_key"):
            zero = devices == "8_zero1"
            state, grad_norms = _train(
                optimizer, images, labels, devices if isinstance(devices, int | None) else 8,
                shard_optimizer_state=zero,
                dropout_key=jax.random.key(1) if devices == "8_other_dropout_key" else None,
            )
            kernel = state.params["Dense_0"]["kernel"]
            runs[str(devices)] = {
                "params": _flat(state.params),
                "batch_stats": _flat(state.model_state["batch_stats"]),
                "grad_norms": grad_norms,
                "param_devices": len(kernel.sharding.device_set),
                "opt_state_bytes_per_device": per_device_bytes(state.opt_state),
                "opt_state_bytes": sum(leaf.nbytes for leaf in jax.tree.leaves(state.opt_state)),
            }
        results[name] = runs
    return results


def check_fit():
    """fit with and without an 8-device mesh (ZeRO-1), 70 examples: the dataset is padded."""
    images, labels = toy_problem(1, 70)
    optimizer = OPTIMIZERS["clipped_adamw"]()
    runs = {}
    for name, mesh in (("none", None), ("8_zero1", make_mesh(8))):
        state, history = fit(
            Net(), optimizer, images, labels, validation_data=(images[:30], labels[:30]),
            epochs=2, batch_size=BATCH, runner="auto", progress=False,
            mesh=mesh, shard_optimizer_state=mesh is not None,
        )
        runs[name] = {
            "params": _flat(state.params),
            "batch_stats": _flat(state.model_state["batch_stats"]),
            "val_loss": history["val_loss"],
            "train_loss": history["loss"],
            "data_parallel_devices": history.header["data_parallel_devices"],
            "kernel_spec": str(
                getattr(state.opt_state[1][0].mu["Dense_0"]["kernel"].sharding, "spec", None)
            ),
        }
    return runs


def check_batch_norm():
    """Running statistics after one step on 8 devices against the global and one shard's."""
    images, labels = toy_problem(2, BATCH)
    model = Net(dropout_rate=0.0)
    # A zero learning rate: the step changes only the batch statistics.
    optimizer = jt.sgd(0.0)
    state = create_train_state(model, optimizer, jax.random.key(0), images[:1])
    kernel = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
    hidden = images.reshape(BATCH, -1).astype(np.float64) @ kernel
    shard = hidden[: BATCH // 8]
    mesh = make_mesh(8)
    sharded, _ = make_train_step(model, optimizer, mesh=mesh)(
        shard_train_state(state, mesh), shard_batch((images, labels), mesh)
    )
    state = create_train_state(model, optimizer, jax.random.key(0), images[:1])
    single, _ = make_train_step(model, optimizer)(state, (images, labels))
    # jaxtricks' models.BatchNorm, whose per-channel sums reshape each example's positions, in
    # a CNN (a conv layer's and a dense layer's batch norm): 8 devices against one, and the
    # collectives of the sharded step (a reshape across the batch axis would gather it).
    cnn = jt.models.CNN(features=(4,), hidden=8, use_batch_norm=True)
    cnn_step = make_train_step(cnn, optimizer, mesh=mesh)
    cnn_state = shard_train_state(
        create_train_state(cnn, optimizer, jax.random.key(0), images[:1]), mesh
    )
    cnn_batch = shard_batch((images, labels), mesh)
    cnn_text = cnn_step.lower(cnn_state, cnn_batch).compile().as_text()
    cnn_sharded, _ = cnn_step(cnn_state, cnn_batch)
    cnn_single, _ = make_train_step(cnn, optimizer)(
        create_train_state(cnn, optimizer, jax.random.key(0), images[:1]), (images, labels)
    )
    return {
        "cnn_sharded": _flat(cnn_sharded.model_state["batch_stats"]),
        "cnn_single": _flat(cnn_single.model_state["batch_stats"]),
        "cnn_collectives": _collectives(cnn_text),
        "sharded": _flat(sharded.model_state["batch_stats"]),
        "single": _flat(single.model_state["batch_stats"]),
        # Running averages with momentum 0.9 from mean 0 and variance 1.
        "global": {"mean": (0.1 * hidden.mean(0)).tolist(),
                   "var": (0.9 + 0.1 * hidden.var(0)).tolist()},
        "one_shard": {"mean": (0.1 * shard.mean(0)).tolist(),
                      "var": (0.9 + 0.1 * shard.var(0)).tolist()},
    }


def check_dropout():
    """Dropout masks on 8 devices and on one, with each threefry setting."""
    mesh = make_mesh(8)
    ones = jnp.ones((BATCH, 64), jnp.float32)
    dropout = nn.Dropout(0.5, deterministic=False)
    apply = jax.jit(lambda x, key: dropout.apply({}, x, rngs={"dropout": key}))
    default = bool(jax.config.jax_threefry_partitionable)
    results = {"default_partitionable": default}
    for partitionable in (True, False):
        jax.config.update("jax_threefry_partitionable", partitionable)
        key = jax.random.key(3)
        single = np.asarray(apply(ones, key))
        sharded = apply(jax.device_put(ones, batch_sharding(mesh)), key)
        results[str(partitionable)] = {
            "equal": bool(np.array_equal(single, np.asarray(sharded))),
            "kept": float((single != 0).mean()),
            "output_devices": len(sharded.sharding.device_set),
        }
    jax.config.update("jax_threefry_partitionable", default)
    return results


def check_transforms():
    """Global norms, clipping and every optimizer on ZeRO-1-sharded trees against one device."""
    mesh = make_mesh(8)
    shapes = {"w": (64, 16), "b": (16,), "v": (16, 3), "odd": (3,)}
    keys = jax.random.split(jax.random.key(4), 2 * len(shapes))
    grads = {
        name: 3.0 * jax.random.normal(key, shape) for (name, shape), key in
        zip(shapes.items(), keys[: len(shapes)], strict=True)
    }
    params = {
        name: jax.random.normal(key, shape) for (name, shape), key in
        zip(shapes.items(), keys[len(shapes):], strict=True)
    }
    shardings = {name: zero1_sharding(shape, mesh) for name, shape in shapes.items()}
    sharded_grads = jax.device_put(grads, shardings)
    sharded_params = jax.device_put(params, shardings)
    exact = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values())))
    norm = jax.jit(jt.global_norm)
    results = {
        "global_norm": {
            "exact": exact,
            "single": float(norm(grads)),
            "sharded": float(norm(sharded_grads)),
            "collectives": _collectives(norm.lower(sharded_grads).compile().as_text()),
        },
        "split_leaves": sum(not s.is_fully_replicated for s in shardings.values()),
        "transforms": {},
    }
    transforms = {
        "clip_by_global_norm": jt.clip_by_global_norm(1.0),
        "normalize_by_global_norm": jt.normalize_by_global_norm(),
        "clip_by_norm": jt.clip_by_norm(1.0),
        **{name: jt.optimizers.get(name, 0.1) for name in jt.optimizers.OPTIMIZERS},
    }

    for name, transform in transforms.items():
        def two_updates(grads, params, transform=transform):
            state = transform.init(params)
            _, state = transform.update(grads, state, params)
            return transform.update(grads, state, params)[0]

        run = jax.jit(two_updates)
        single = run(grads, params)
        sharded = run(sharded_grads, sharded_params)
        results["transforms"][name] = {
            "max_abs_diff": max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True)
            ),
            "max_abs": max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(single)),
            "kept_sharding": all(
                sharded[leaf].sharding.is_equivalent_to(shardings[leaf], len(shapes[leaf]))
                for leaf in shapes
            ),
            "collectives": _collectives(
                run.lower(sharded_grads, sharded_params).compile().as_text()
            ),
        }
    return results


def check_zero1_memory():
    """Per-device optimizer-state bytes, replicated and ZeRO-1, for Adam on 2, 4, 8 devices."""
    images, _ = toy_problem(0, 1)
    optimizer = jt.adam(1e-3)
    state = create_train_state(Net(), optimizer, jax.random.key(0), images)
    results = {
        "leaves": [
            {"shape": list(leaf.shape), "itemsize": leaf.dtype.itemsize}
            for leaf in jax.tree.leaves(state.opt_state)
        ],
    }
    for devices in DEVICE_COUNTS[1:]:
        mesh = make_mesh(devices)
        replicated = shard_train_state(state, mesh).opt_state
        sharded = shard_train_state(state, mesh, shard_optimizer_state=True).opt_state
        results[str(devices)] = {
            "replicated": per_device_bytes(replicated),
            "zero1": per_device_bytes(sharded),
            "zero1_from_shard_shape": sum(
                int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
                for leaf in jax.tree.leaves(sharded)
            ),
        }
    return results


def check_zero1_specs():
    """The ZeRO-1 partition specs of a few shapes on 8 devices."""
    mesh = make_mesh(8)
    shapes = [(64, 16), (16,), (16, 3), (3,), (), (3, 64, 16), (8, 24), (12, 4), (16, 16), (4, 0)]
    return [[list(shape), str(zero1_sharding(shape, mesh).spec)] for shape in shapes]


def check_donation():
    """One ZeRO-1 step on 8 devices: the state keeps its shardings and its buffers are reused."""
    images, labels = toy_problem(0, BATCH)
    mesh = make_mesh(8)
    optimizer = jt.adam(1e-2)
    state = shard_train_state(
        create_train_state(Net(), optimizer, jax.random.key(0), images[:1]), mesh,
        shard_optimizer_state=True,
    )
    before = jax.tree.map(lambda leaf: leaf.sharding, state)
    step = make_train_step(Net(), optimizer, mesh=mesh, shard_optimizer_state=True, donate=True)
    new_state, _ = step(state, shard_batch((images, labels), mesh))
    return {
        "same_shardings": all(jax.tree.leaves(jax.tree.map(
            lambda sharding, leaf: sharding.is_equivalent_to(leaf.sharding, leaf.ndim),
            before, new_state,
        ))),
        "donated": all(leaf.is_deleted() for leaf in jax.tree.leaves(state)),
    }


def check_shard_dataset():
    """70 rows on 8 devices: padded to 72 by repeating the last row, 9 rows a device."""
    images, labels = toy_problem(0, 70)
    sharded_images, sharded_labels = shard_dataset((images, labels), make_mesh(8))
    host = np.asarray(sharded_images)
    return {
        "shape": list(sharded_images.shape),
        "shard_rows": sorted({s.data.shape[0] for s in sharded_images.addressable_shards}),
        "devices": len(sharded_images.sharding.device_set),
        "prefix_equal": bool(np.array_equal(host[:70], images)),
        "padding_is_last_row": bool(np.array_equal(host[70:], np.stack([images[-1]] * 2))),
        "labels_padding": np.asarray(sharded_labels)[68:].tolist(),
        "last_labels": labels[68:].tolist(),
    }


def check_errors():
    """The messages of the ValueErrors for sizes that do not split over 8 devices."""
    images, labels = toy_problem(0, 64)
    mesh = make_mesh(8)
    optimizer = jt.sgd(0.1)
    messages = {}

    def message(name, function):
        try:
            function()
        except ValueError as err:
            messages[name] = str(err)
        else:
            messages[name] = None

    message("fit_batch_size", lambda: fit(
        Net(), optimizer, images, labels, validation_data=(images, labels),
        epochs=1, batch_size=12, progress=False, mesh=mesh,
    ))
    state = shard_train_state(
        create_train_state(Net(), optimizer, jax.random.key(0), images[:1]), mesh
    )
    message("train_step_batch", lambda: make_train_step(Net(), optimizer, mesh=mesh)(
        state, (images[:12], labels[:12])
    ))
    message("shard_batch", lambda: shard_batch((images[:12], labels[:12]), mesh))
    message("make_mesh", lambda: make_mesh(9))
    return messages


CHECKS = {
    name.removeprefix("check_"): function
    for name, function in globals().items()
    if name.startswith("check_")
}


def main(names):
    if jax.device_count() != 8:
        raise SystemExit(
            f"expected 8 devices from XLA_FLAGS, got {jax.device_count()}: set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 before running"
        )
    print(json.dumps({name: CHECKS[name]() for name in names}))


if __name__ == "__main__":
    main(sys.argv[1:])
