"""Training across processes (``jax.distributed``, gloo on the CPU) against one process.

Each test starts real jobs: ``jaxtricks launch --processes 2 --devices-per-process 2 -- train``
(2 processes × 2 simulated CPU devices) against ``train --devices all`` in one process of 4
simulated devices, on 256 real MNIST images for one epoch (8 steps) of the CNN with batch norm,
dropout and AdamW after global-norm clipping. The final parameters are read back from each
run's last checkpoint. They agree within float32 rounding: the only difference between the
runs is the order in which the 4 devices' gradients are summed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtricks.cli import launch

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TRAIN = [
    "train", "--model", "cnn", "--batch-norm", "--dropout", "0.1", "--optimizer", "adamw",
    "--weight-decay", "1e-4", "--clip", "global_norm", "--train-examples", "256",
    "--validation-examples", "64", "--test-examples", "256", "--batch-size", "32",
    "--epochs", "1", "--runner", "loop", "--no-progress", "--no-plot",
]  # fmt: skip
STEPS = 8  # 256 images / batch 32
# Within float32 rounding, where rounding can grow (likely cause, not measured: Adam divides by
# sqrt(v) + eps, so a weight whose gradient is nearly 0 moves by up to ~lr per step in a
# direction its rounding decides). Seen, 2 x 2 vs 1 x 4, with and without ZeRO-1: 115 of
# Dense_0's 802,816 kernel entries and 1 of BatchNorm_2's 256 running means past rtol 1e-4 +
# atol 1e-5, by at most 8.2e-5 (one Adam step moves a weight by up to lr = 2e-3); every other
# entry within 6.0e-7; test losses within 2.4e-7. Hence: all within ATOL_GROWN, and all but
# a thousandth within rounding.
RTOL, ATOL = 1e-4, 1e-5
ATOL_GROWN, MOST = 2e-4, 0.999
JOB_TIMEOUT_S = 600


def one_process(out, *extra, devices=4):
    """``train`` in one process of ``devices`` simulated CPU devices."""
    env = launch.child_environment(dict(os.environ), devices)
    result = subprocess.run(
        [sys.executable, "-m", "jaxtricks", *TRAIN, "--devices", "all", "--out", str(out),
         "--checkpoint-every-epochs", "1", *extra],
        env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def launcher(out, *extra):
    """``jaxtricks launch`` of 2 processes × 2 devices, started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "jaxtricks", "launch", "--processes", "2",
         "--devices-per-process", "2", "--", *TRAIN, "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def two_processes(out, *extra):
    job = launcher(out, "--checkpoint-every-epochs", "1", *extra)
    stdout, stderr = job.communicate(timeout=JOB_TIMEOUT_S)
    assert job.returncode == 0, stderr[-3000:]
    return stdout


def final_checkpoint(out):
    """The last checkpoint's leaves by path (host arrays), and its per-leaf SHA-256."""
    with ocp.CheckpointManager(os.path.join(out, "checkpoints")) as manager:
        step = manager.latest_step()
        assert step == STEPS
        records = manager.restore(step, args=ocp.args.Composite(
            metadata=ocp.args.JsonRestore())).metadata["content"]["leaves"]
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        # Saved on other devices: restored onto this process's one device; a key as its key
        # data (threefry: two uint32 words per key).
        abstract = [jax.ShapeDtypeStruct((*r["shape"], 2) if r["key_impl"] else tuple(r["shape"]),
                                         np.uint32 if r["key_impl"] else np.dtype(r["dtype"]),
                                         sharding=device) for r in records]
        leaves = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract))).state
    arrays = {r["path"]: np.asarray(leaf) for r, leaf in zip(records, leaves, strict=True)}
    return arrays, {r["path"]: r["sha256"] for r in records}


def final_test_loss(out):
    return json.loads((Path(out) / "metrics.json").read_text())["header"]["final_test"]["loss"]


def assert_same_training(a, b):
    arrays_a, _ = final_checkpoint(a)
    arrays_b, _ = final_checkpoint(b)
    learned = [p for p in arrays_a if p.startswith(("[0].params", "[0].model_state"))]
    assert len(learned) >= 10
    assert arrays_a.keys() == arrays_b.keys()
    close = []
    for path in learned:
        np.testing.assert_allclose(arrays_a[path], arrays_b[path], rtol=0, atol=ATOL_GROWN,
                                   err_msg=path)
        close.append(np.isclose(arrays_a[path], arrays_b[path], rtol=RTOL, atol=ATOL).ravel())
    assert np.concatenate(close).mean() >= MOST
    np.testing.assert_allclose(final_test_loss(a), final_test_loss(b), rtol=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 1 × 4 run and the uninterrupted 2 × 2 run, shared by the tests."""
    root = tmp_path_factory.mktemp("reference")
    one_process(root / "one")
    summary = two_processes(root / "two")
    return root / "one", root / "two", summary


def test_two_processes_train_as_one(reference):
    one, two, summary = reference
    assert_same_training(one, two)
    header = json.loads((two / "metrics.json").read_text())["header"]
    assert header["process_count"] == 2
    assert header["device_count"] == 4
    # Process 0 alone prints the summary and writes --out. Gloo's own C++ code prints
    # "[Gloo] Rank I is connected to ..." lines on stdout, which only the lines of process 0
    # reach here; the summary is the last line.
    lines = [line for line in summary.strip().splitlines() if not line.startswith("[Gloo] ")]
    assert len(lines) == 1
    assert json.loads(lines[0])["test_loss"] == final_test_loss(two)
    assert sorted(os.listdir(two)) == ["checkpoints", "metrics.json"]


def test_two_processes_with_zero1_train_as_one(reference, tmp_path):
    one, _, _ = reference
    two_processes(tmp_path / "zero1", "--shard-optimizer-state")
    header = json.loads((tmp_path / "zero1" / "metrics.json").read_text())["header"]
    assert header["shard_optimizer_state"] is True
    assert_same_training(one, tmp_path / "zero1")


def child_of(parent, flag_value):
    """The pid of ``parent``'s child whose command line holds ``--process-id flag_value``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"--process-id" in argv and (
                argv[argv.index(b"--process-id") + 1] == flag_value.encode()):
            return int(entry)
    raise AssertionError(f"no child of {parent} with --process-id {flag_value}")


def test_a_killed_process_stops_the_job_and_resume_finishes_it(reference, tmp_path):
    _, two, _ = reference
    out = tmp_path / "killed"
    job = launcher(out, "--checkpoint-every-steps", "1")
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (checkpoints.is_dir() and any(p.isdigit() for p in os.listdir(checkpoints))):
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child_of(job.pid, "1"), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = job.communicate(timeout=120)
    assert time.monotonic() - killed < 30
    assert job.returncode == 128 + signal.SIGKILL
    assert stderr.strip().splitlines()[-1] == (
        "jaxtricks launch: error: process 1 exited with signal 9 (SIGKILL); stopped the others")
    steps = sorted(int(p) for p in os.listdir(checkpoints) if p.isdigit())
    assert steps and steps[-1] < STEPS  # stopped mid-epoch

    resumed = launcher(out, "--resume")
    _, stderr = resumed.communicate(timeout=JOB_TIMEOUT_S)
    assert resumed.returncode == 0, stderr[-3000:]
    # The same job, interrupted or not: bit for bit (every leaf's SHA-256), the same test loss.
    assert final_checkpoint(out)[1] == final_checkpoint(two)[1]
    assert final_test_loss(out) == final_test_loss(two)


def test_fit_with_a_mesh_from_python_across_processes(tmp_path):
    """``fit(..., mesh=make_mesh())`` after ``jax.distributed`` initialization, 2 × 2 against
    1 × 4 (tests/training/multi_process_worker.py), without and with ZeRO-1."""
    for extra in ([], ["--shard-optimizer-state"]):
        one, two = tmp_path / f"one{len(extra)}", tmp_path / f"two{len(extra)}"
        one.mkdir()
        two.mkdir()
        worker = [sys.executable, str(HERE / "multi_process_worker.py")]
        env = launch.child_environment(dict(os.environ), 4)
        subprocess.run([*worker, str(one), *extra], env=env, cwd=HERE, check=True,
                       timeout=JOB_TIMEOUT_S, capture_output=True)
        started = subprocess.run(
            [sys.executable, "-c",
             "import sys; from jaxtricks.cli.launch import launch; "
             f"sys.exit(launch({[*worker, str(two), *extra]!r}, 2, devices_per_process=2))"],
            cwd=HERE, timeout=JOB_TIMEOUT_S, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr[-3000:]
        alone = np.load(one / "process_0.npz")
        first, second = np.load(two / "process_0.npz"), np.load(two / "process_1.npz")
        assert (int(alone["processes"]), int(first["processes"])) == (1, 2)
        assert int(alone["devices"]) == int(first["devices"]) == 4
        learned = [name for name in alone.files if name not in ("processes", "devices")]
        assert len(learned) >= 8
        for name in learned:
            np.testing.assert_array_equal(first[name], second[name])  # one job, one result
            np.testing.assert_allclose(first[name], alone[name], rtol=RTOL, atol=ATOL,
                                       err_msg=name)
