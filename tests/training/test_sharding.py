"""Tests for jaxtricks.training.sharding and for data-parallel training with a mesh.

Multi-device checks run ``sharding_worker.py`` in a subprocess with 8 simulated CPU devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` works only if set before JAX starts, and
the rest of the suite keeps one device. The worker prints JSON; the assertions are here.

Tolerance for "same result as one device": atol = rtol = 1e-5 on parameters and batch
statistics of magnitude up to about 1. Partitioning turns each sum over the batch into
per-device partial sums joined by an all-reduce, so float32 additions happen in another order
and results differ by a few ulps (1 ulp = 1.2e-7 at 1.0); a handful of steps carries that
forward without amplifying it much. Measured: at most 3.0e-7 after 6 steps and 1.2e-6 after
12 (``fit``), so 1e-5 leaves headroom, while a real difference (other dropout masks, batch
statistics of one shard) moves values by 1e-2 or more, which the control checks show.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec
from training_toys import TinyNet, toy_problem

import jaxtricks as jt
from jaxtricks.training import create_train_state, fit, make_eval_step, make_train_step
from jaxtricks.training.sharding import (
    make_mesh,
    per_device_bytes,
    shard_batch,
    shard_dataset,
    shard_train_state,
    train_state_sharding,
)

WORKER = Path(__file__).with_name("sharding_worker.py")
DEVICES = 8
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
TRANSFORMS = ("clip_by_global_norm", "normalize_by_global_norm", "clip_by_norm",
              *jt.optimizers.OPTIMIZERS)


def _run_worker(*checks):
    flags = f"--xla_force_host_platform_device_count={DEVICES}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=" ".join(filter(None, (os.environ.get("XLA_FLAGS"), flags))))
    result = subprocess.run(
        [sys.executable, str(WORKER), *checks],
        env=env, cwd=WORKER.parent, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def checks():
    return _run_worker(
        "batch_norm", "dropout", "transforms", "zero1_specs", "zero1_memory", "donation",
        "shard_dataset", "errors",
    )


@pytest.fixture(scope="module")
def training():
    return _run_worker("training", "fit")


def _arrays(flat):
    return {path: np.asarray(values, np.float32) for path, values in flat.items()}


def _max_difference(run, reference):
    return max(
        float(np.max(np.abs(np.asarray(run[part][path]) - np.asarray(reference[part][path]))))
        for part in ("params", "batch_stats")
        for path in reference[part]
    )


# --- one device, in this process ---------------------------------------------------------


def test_make_mesh_uses_the_first_devices_on_a_named_auto_axis():
    mesh = make_mesh(axis="batch")
    assert dict(mesh.shape) == {"batch": jax.device_count()}
    assert list(mesh.devices.flat) == jax.devices()
    assert mesh.axis_types == (AxisType.Auto,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_devices": 0}, "num_devices"),
        ({"num_devices": jax.device_count() + 1}, "num_devices"),
        ({"num_devices": True}, "num_devices"),
        ({"num_devices": 1.0}, "num_devices"),
        ({"axis": ""}, "axis"),
    ],
)
def test_make_mesh_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(**kwargs)


def test_sharding_arguments_are_checked():
    two_axes = jax.make_mesh((1, 1), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
    optimizer = jt.sgd(0.1)
    with pytest.raises(ValueError, match="one axis"):
        make_train_step(TinyNet(), optimizer, mesh=two_axes)
    with pytest.raises(ValueError, match=r"jax\.sharding\.Mesh"):
        make_eval_step(TinyNet(), mesh="data")
    with pytest.raises(ValueError, match="needs a mesh"):
        make_train_step(TinyNet(), optimizer, shard_optimizer_state=True)
    with pytest.raises(ValueError, match="shard_optimizer_state"):
        make_train_step(TinyNet(), optimizer, mesh=make_mesh(1), shard_optimizer_state=1)
    images, labels = toy_problem(0, 8)
    with pytest.raises(ValueError, match="needs a mesh"):
        fit(TinyNet(), optimizer, images, labels, validation_data=(images, labels), epochs=1,
            batch_size=4, progress=False, shard_optimizer_state=True)
    with pytest.raises(ValueError, match="N >= 1"):
        shard_dataset(np.zeros((0, 3), np.float32), make_mesh(1))


@pytest.mark.slow
def test_a_one_device_mesh_trains_like_no_mesh_and_donates_the_state(getkey, allclose):
    images, labels = toy_problem(0, 16)
    optimizer = optax.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-2, weight_decay=1e-2))
    mesh = make_mesh(1)
    key = getkey()
    plain = create_train_state(TinyNet(), optimizer, key, images[:1])
    placed = shard_train_state(
        create_train_state(TinyNet(), optimizer, key, images[:1]), mesh,
        shard_optimizer_state=True,
    )
    expected = jax.tree.map(lambda leaf: leaf.sharding, placed)
    plain, _ = make_train_step(TinyNet(), optimizer)(plain, (images, labels))
    sharded_step = make_train_step(TinyNet(), optimizer, mesh=mesh, shard_optimizer_state=True,
                                   donate=True)
    new, _ = sharded_step(placed, shard_batch((images, labels), mesh))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(placed))
    assert all(jax.tree.leaves(jax.tree.map(
        lambda s, leaf: s.is_equivalent_to(leaf.sharding, leaf.ndim), expected, new
    )))
    allclose((new.params, new.model_state), (plain.params, plain.model_state), **TOLERANCE)


def test_per_device_bytes_counts_whole_unsharded_leaves():
    tree = {"w": jnp.ones((4, 2), jnp.float32), "n": jnp.zeros((), jnp.int32), "none": None}
    assert per_device_bytes(tree) == 4 * 2 * 4 + 4
    assert per_device_bytes({}) == 0


def test_train_state_sharding_replicates_all_but_zero1_optimizer_state():
    images, _ = toy_problem(0, 1)
    state = create_train_state(TinyNet(), jt.adam(1e-3), jax.random.key(0), images)
    mesh = make_mesh(1)
    for zero in (False, True):
        shardings = train_state_sharding(state, mesh, shard_optimizer_state=zero)
        others = (shardings.step, shardings.params, shardings.model_state, shardings.rng)
        assert set(shardings.model_state) == {"batch_stats"}
        assert all(s.spec == PartitionSpec() for s in jax.tree.leaves(others))
        kernel = shardings.opt_state[0].mu["Dense_0"]["kernel"].spec
        assert kernel == (PartitionSpec("data") if zero else PartitionSpec())


# --- 8 simulated devices, in a subprocess ------------------------------------------------


@pytest.mark.slow
def test_batch_norm_statistics_are_over_the_whole_global_batch(checks):
    result = checks["batch_norm"]
    for name in ("mean", "var"):
        path = f"['BatchNorm_0']['{name}']"
        expected = np.asarray(result["global"][name], np.float32)
        np.testing.assert_allclose(result["sharded"][path], expected, **TOLERANCE)
        np.testing.assert_allclose(result["single"][path], expected, **TOLERANCE)
        # The statistics of one device's rows alone are far off: the check can tell them apart.
        one_shard = np.asarray(result["one_shard"][name])
        assert np.max(np.abs(one_shard - expected)) > 100 * TOLERANCE["atol"]


def test_jaxtricks_batch_norm_is_over_the_whole_global_batch_without_gathering_it(checks):
    result = checks["batch_norm"]
    assert set(result["cnn_sharded"]) == set(result["cnn_single"])
    assert len(result["cnn_single"]) == 4  # mean and var of a conv and a dense batch norm
    for path, single in result["cnn_single"].items():
        np.testing.assert_allclose(result["cnn_sharded"][path], single, **TOLERANCE)
    # The statistics are summed across devices; the activations are never gathered.
    assert result["cnn_collectives"]["all-reduce"] >= 1
    assert result["cnn_collectives"]["all-gather"] == 0
    assert result["cnn_collectives"]["all-to-all"] == 0


@pytest.mark.parametrize("partitionable", ["True", "False"])
def test_dropout_masks_do_not_depend_on_the_device_count(checks, partitionable):
    result = checks["dropout"]
    assert result["default_partitionable"] is True
    masks = result[partitionable]
    assert masks["equal"]
    assert masks["output_devices"] == DEVICES
    assert 0.4 < masks["kept"] < 0.6


def test_global_norm_of_a_sharded_tree_is_one_all_reduce_and_exact(checks):
    result = checks["transforms"]
    assert result["split_leaves"] == 3
    norm = result["global_norm"]
    assert norm["sharded"] == pytest.approx(norm["exact"], rel=1e-6)
    assert norm["single"] == pytest.approx(norm["exact"], rel=1e-6)
    assert norm["collectives"]["all-reduce"] >= 1
    assert norm["collectives"]["all-gather"] == 0


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transforms_on_sharded_trees_match_one_device_without_gathering(checks, name):
    result = checks["transforms"]
    transform = result["transforms"][name]
    # The gradients' global norm is far above the clipping threshold 1: clipping is active.
    assert result["global_norm"]["exact"] > 10
    assert transform["max_abs_diff"] <= 1e-6 * max(1.0, transform["max_abs"])
    assert transform["kept_sharding"]
    assert transform["collectives"]["all-gather"] == 0
    if "global_norm" in name or name == "normalized_sgd":
        assert transform["collectives"]["all-reduce"] >= 1


def test_zero1_splits_the_largest_divisible_dimension(checks):
    specs = {tuple(shape): spec for shape, spec in checks["zero1_specs"]}
    assert specs == {
        (64, 16): "P('data',)",
        (16,): "P('data',)",
        (16, 3): "P('data',)",
        (3,): "P()",
        (): "P()",
        (3, 64, 16): "P(None, 'data')",
        (8, 24): "P(None, 'data')",
        (12, 4): "P()",
        (16, 16): "P('data',)",
        (4, 0): "P()",
    }


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_zero1_holds_about_one_nth_of_the_optimizer_state_per_device(checks, devices):
    result = checks["zero1_memory"]
    measured = result[str(devices)]

    def per_device(leaf):
        size = math.prod(leaf["shape"]) * leaf["itemsize"]
        splits = any(n >= devices and n % devices == 0 for n in leaf["shape"])
        return size // devices if splits else size

    total = sum(math.prod(leaf["shape"]) * leaf["itemsize"] for leaf in result["leaves"])
    assert measured["replicated"] == total
    assert measured["zero1"] == sum(per_device(leaf) for leaf in result["leaves"])
    assert measured["zero1_from_shard_shape"] == measured["zero1"]
    assert measured["zero1"] / total == pytest.approx(1 / devices, abs=0.01)


def test_a_zero1_step_keeps_the_shardings_and_reuses_the_buffers(checks):
    assert checks["donation"] == {"same_shardings": True, "donated": True}


def test_shard_dataset_pads_with_the_last_row(checks):
    result = checks["shard_dataset"]
    assert result["shape"] == [72, 8, 8, 1]
    assert result["shard_rows"] == [9]
    assert result["devices"] == DEVICES
    assert result["prefix_equal"]
    assert result["padding_is_last_row"]
    assert result["labels_padding"] == result["last_labels"] + [result["last_labels"][-1]] * 2


def test_sizes_that_do_not_split_fail_with_a_message(checks):
    errors = checks["errors"]
    assert "batch_size must be divisible by the 8 devices" in errors["fit_batch_size"]
    assert "got 12" in errors["fit_batch_size"]
    for name in ("train_step_batch", "shard_batch"):
        assert "batch size must be divisible by the 8 devices" in errors[name]
    assert "num_devices must be in [1, 8]" in errors["make_mesh"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "clipped_adamw"])
@pytest.mark.parametrize("devices", ["1", "2", "4", "8", "8_zero1"])
def test_training_on_n_devices_matches_one_device(training, allclose, optimizer, devices):
    runs = training["training"][optimizer]
    run, reference = runs[devices], runs["None"]
    allclose(_arrays(run["params"]), _arrays(reference["params"]), **TOLERANCE)
    allclose(_arrays(run["batch_stats"]), _arrays(reference["batch_stats"]), **TOLERANCE)
    assert run["param_devices"] == (8 if devices == "8_zero1" else int(devices))
    if devices == "8_zero1" and optimizer != "sgd":
        assert run["opt_state_bytes_per_device"] < run["opt_state_bytes"] / 4
    if optimizer == "clipped_adamw":
        assert max(reference["grad_norms"]) > 1.0  # clipping at 1.0 did act


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "clipped_adamw"])
def test_another_dropout_key_is_a_difference_the_tolerance_sees(training, optimizer):
    runs = training["training"][optimizer]
    assert _max_difference(runs["8_other_dropout_key"], runs["None"]) > 100 * TOLERANCE["atol"]


@pytest.mark.slow
def test_fit_on_eight_devices_with_zero1_matches_one_device(training, allclose):
    sharded, single = training["fit"]["8_zero1"], training["fit"]["none"]
    allclose(_arrays(sharded["params"]), _arrays(single["params"]), **TOLERANCE)
    allclose(_arrays(sharded["batch_stats"]), _arrays(single["batch_stats"]), **TOLERANCE)
    np.testing.assert_allclose(sharded["val_loss"], single["val_loss"], **TOLERANCE)
    np.testing.assert_allclose(sharded["train_loss"], single["train_loss"], **TOLERANCE)
    assert sharded["data_parallel_devices"] == DEVICES
    assert single["data_parallel_devices"] == 1
    assert sharded["kernel_spec"] == "P('data',)"
