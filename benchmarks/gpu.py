"""The GPU checks in one prepared script: optimizer step vs memory bandwidth, throughput vs
PyTorch, time to 99%.

Three benchmarks of this folder run in turn, each printing its own JSON lines, and after each
one line of this script (``"benchmark": "gpu_..."``) sets its figure against the goal:

1. ``gpu_optimizer_step``: :mod:`benchmarks.optimizer_step` for Adam on ResNet-50's parameter
   tree (25,557,032 float32), each implementation (Optax, jaxtricks, its flattened forms). An
   ideal Adam step moves 7 parameter-sized arrays (reads g, w, m, v, writes w, m, v: 28 bytes
   per parameter, 716 MB), so its achieved bandwidth is

       fraction = (bytes per step / median step time) / peak memory bandwidth,

   goal ≥ 0.8. A step is one call and ``block_until_ready``, dispatch included. The peak comes
   from :data:`PEAK_BANDWIDTH` by the device's ``device_kind`` (vendors' figures, cited there)
   or from ``--bandwidth-gbps``; on an unknown device without it the fraction is null.
2. ``gpu_train_throughput``: :mod:`benchmarks.train_throughput` (jaxtricks' ``fit`` against a
   plain Flax loop and PyTorch, the same CNN and images), PyTorch on CUDA when it can use the GPU
   (else left out: a GPU against a CPU says nothing); goal ``fit`` ≥ PyTorch.
3. ``gpu_time_to_99``: :mod:`benchmarks.time_to_99` (its ``fast`` recipe, wall clock to 99 %
   MNIST test accuracy, compilation included), goal < 1 s (on an H100).

MNIST comes from ``--data-dir`` (which becomes ``JAXTRICKS_DATA_DIR`` for the benchmarks), else
from ``JAXTRICKS_DATA_DIR`` or the user cache; a machine that cannot download must carry the
four files, and the script stops before any benchmark when it finds no verified copy.

    python -m benchmarks.gpu [--data-dir DIR] [--out FILE.jsonl] [--bandwidth-gbps GB/s]
        [--quick]

``--out`` also writes every record (the benchmarks' and this script's) to a file, one JSON line
each, as stdout has them.
``--quick`` runs each benchmark's small version on any backend: it checks that the script runs,
not speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import jax

from benchmarks import optimizer_step, time_to_99, torch_baseline, train_throughput
from benchmarks.common import emit, machine
from jaxtricks.data import DatasetNotFoundError, load
from jaxtricks.data.datasets import ENV_VAR
from jaxtricks.files import atomic_write

# (what device_kind contains, lower case; peak memory bandwidth in GB/s; where the figure is
# from), the first match wins: more specific names first.
PEAK_BANDWIDTH: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 4800.0, "NVIDIA H200 Tensor Core GPU datasheet: 4.8 TB/s HBM3e"),
    (("h100", "nvl"), 3900.0, "NVIDIA H100 Tensor Core GPU datasheet: H100 NVL 3.9 TB/s"),
    (("h100", "pcie"), 2000.0,
     "NVIDIA H100 PCIe product brief PB-11133-001 and H100 datasheet: 2 TB/s HBM2e"),
    (("h100",), 3350.0, "NVIDIA H100 Tensor Core GPU datasheet: H100 SXM 3.35 TB/s HBM3"),
    (("a100", "80gb", "pcie"), 1935.0,
     "NVIDIA A100 Tensor Core GPU datasheet: A100 80GB PCIe 1,935 GB/s"),
    (("a100", "80gb"), 2039.0, "NVIDIA A100 Tensor Core GPU datasheet: A100 80GB SXM 2,039 GB/s"),
    (("a100",), 1555.0, "NVIDIA A100 Tensor Core GPU datasheet: A100 40GB 1,555 GB/s"),
)
BANDWIDTH_GOAL = 0.8  # of the peak, for Adam's step on the ResNet-50 tree
TIME_TO_99_GOAL_S = 1.0  # wall clock, compilation included, on an H100


def peak_bandwidth(device_kind: str) -> tuple[float | None, str | None]:
    """``(GB/s, source)`` of the first :data:`PEAK_BANDWIDTH` entry whose words are all in
    ``device_kind``; ``(None, None)`` for a device not in the table."""
    kind = device_kind.lower()
    for words, gbps, source in PEAK_BANDWIDTH:
        if all(word in kind for word in words):
            return gbps, source
    return None, None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def optimizer_step_check(quick: bool, repeats: int, bandwidth: tuple[float | None, str | None],
                         info: dict[str, Any]) -> list[dict[str, Any]]:
    """Adam on the ResNet-50 tree, every default implementation; returns the benchmark's
    records and this script's."""
    shapes = optimizer_step.tree_shapes("resnet50", quick)
    params = optimizer_step.materialize(shapes, seed=0, scale=0.05)
    grads = optimizer_step.materialize(shapes, seed=1, scale=1e-3)
    records = optimizer_step.measure("resnet50", "adam", optimizer_step.DEFAULT_IMPLEMENTATIONS,
                                     params, grads, repeats, info)
    gbps, source = bandwidth
    implementations = {
        r["implementation"]: {
            "step_ms": r["step_s"]["median"] * 1e3,
            "gb_per_s": r["gb_per_s"],
            "fraction": None if gbps is None else r["gb_per_s"] / gbps,
        }
        for r in records
    }
    best = max((r["gb_per_s"] for r in records if r["implementation"].startswith("jaxtricks")),
               default=None)
    fraction = None if gbps is None or best is None else best / gbps
    summary = {
        "benchmark": "gpu_optimizer_step",
        "tree": "resnet50",
        "params": records[0]["params"],
        "optimizer": "adam",
        "bytes_per_step": records[0]["bytes_per_step"],
        "peak_gb_per_s": gbps,
        "peak_source": source,
        "implementations": implementations,
        "best_jaxtricks_fraction": fraction,
        "goal_fraction": BANDWIDTH_GOAL,
        "meets_goal": None if fraction is None else fraction >= BANDWIDTH_GOAL,
        **info,
    }
    emit(summary)
    return [*records, summary]


def _torch_device() -> str | None:
    """``cuda`` when PyTorch is installed and sees a GPU, ``cpu`` when JAX runs on the CPU too,
    else None (no fair PyTorch figure)."""
    if not torch_baseline.available():
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if jax.default_backend() == "cpu" else None


def throughput_check(quick: bool, info: dict[str, Any]) -> list[dict[str, Any]]:
    """:mod:`benchmarks.train_throughput` with PyTorch on the same kind of device (``quick``:
    its small version, the Flax example's config only)."""
    device = _torch_device()
    if quick:
        argv = ["--quick", "--config", "flax_example"]
    else:  # 400 steps of batch 128 fit in MNIST's 60,000 images
        argv = ["--steps", "400", "--repeats", "3"]
    argv += ["--no-torch"] if device is None else ["--torch-device", device]
    records = train_throughput.main(argv)
    summaries = []
    for record in records:
        ratio = record["ratio_vs_torch"]
        summary = {
            "benchmark": "gpu_train_throughput",
            "config": record["config"],
            "jaxtricks_images_per_s": record["jaxtricks_images_per_s"]["median"],
            "flax_optax_images_per_s": record["flax_optax_images_per_s"]["median"],
            "torch_images_per_s": (None if record["torch_images_per_s"] is None
                                   else record["torch_images_per_s"]["median"]),
            "torch_device": device,
            "ratio_vs_torch": None if ratio is None else ratio["median"],
            "goal_ratio_vs_torch": 1.0,
            "meets_goal": None if ratio is None else ratio["median"] >= 1.0,
            **info,
        }
        emit(summary)
        summaries.append(summary)
    return [*records, *summaries]


def time_to_99_check(quick: bool, info: dict[str, Any]) -> list[dict[str, Any]]:
    """:mod:`benchmarks.time_to_99`'s ``fast`` recipe over three seeds (one with ``quick``)."""
    records = time_to_99.main(["--recipe", "fast", "--seeds", "0", "1", "2",
                               *(["--quick"] if quick else [])])
    reached = [r for r in records if r["reached"]]
    wall = _median([r["wall_s"] for r in reached])
    summary = {
        "benchmark": "gpu_time_to_99",
        "recipe": "fast",
        "target": records[0]["target"],
        "seeds": [r["seed"] for r in records],
        "reached": len(reached),
        "median_wall_s": wall,
        "median_compile_s": _median([r["compile_s"] for r in reached]),
        "median_train_s": _median([r["train_s"] for r in reached]),
        "goal_wall_s": TIME_TO_99_GOAL_S,
        "meets_goal": (len(reached) == len(records) and wall is not None
                       and wall < TIME_TO_99_GOAL_S),
        **info,
    }
    emit(summary)
    return [*records, summary]


def _data_source(data_dir: str | None) -> str:
    """Where MNIST will be read from; ``SystemExit`` naming the flag when nowhere verifies."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise SystemExit(f"--data-dir {data_dir}: no such folder")
        os.environ[ENV_VAR] = data_dir
    try:
        return load("mnist", download=False).source
    except DatasetNotFoundError as err:
        flag = f"--data-dir {data_dir}" if data_dir else f"{ENV_VAR} or the cache"
        raise SystemExit(f"{flag}: no verified MNIST ({err})") from None


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the three checks; returns every record printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help=f"folder of the four MNIST IDX files (else {ENV_VAR} or the cache)")
    parser.add_argument("--out", default=None, help="also write every JSON line to this file")
    parser.add_argument("--bandwidth-gbps", type=float, default=None,
                        help="peak memory bandwidth in GB/s (default: from the device table)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed optimizer steps (default 50; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="each benchmark's small version, on any backend: checks the script")
    args = parser.parse_args(argv)
    if args.bandwidth_gbps is not None and not (math.isfinite(args.bandwidth_gbps)
                                                and args.bandwidth_gbps > 0):
        raise SystemExit(f"--bandwidth-gbps must be a finite number > 0, got {args.bandwidth_gbps}")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 50)
    if repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {repeats}")
    source = _data_source(args.data_dir)

    device = jax.devices()[0]
    if args.bandwidth_gbps is None:
        bandwidth = peak_bandwidth(device.device_kind)
    else:
        bandwidth = (args.bandwidth_gbps, "--bandwidth-gbps")
    info = machine()
    setup = {"benchmark": "gpu_setup", "quick": args.quick, "data_source": source,
             "device_kind": device.device_kind, "device_count": jax.device_count(),
             "peak_gb_per_s": bandwidth[0], "peak_source": bandwidth[1], **info}
    if jax.default_backend() == "cpu" and not args.quick:
        print("note: JAX runs on the CPU here; these are not a GPU's figures", file=sys.stderr)
    emit(setup)
    records = [setup]
    records += optimizer_step_check(args.quick, repeats, bandwidth, info)
    records += throughput_check(args.quick, info)
    records += time_to_99_check(args.quick, info)
    if args.out is not None:
        atomic_write(args.out, "".join(json.dumps(record) + "\n" for record in records))
    return records


if __name__ == "__main__":
    main()
