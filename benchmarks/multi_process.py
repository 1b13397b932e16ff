"""Per-process peak memory and step time: 1 process × 4 CPU devices vs 2 processes × 2.

Both layouts train the same CNN (:class:`jaxtricks.models.CNN`, batch norm and dropout, AdamW
after global-norm clipping) with ``fit(..., mesh=make_mesh())`` on the same real MNIST images
for two epochs; the 2 × 2 job is started by :func:`jaxtricks.cli.launch.launch` and joins
``jax.distributed`` (gloo collectives). Each process reports:

- its peak resident memory (``ru_maxrss``), the whole process: Python, JAX, XLA's code, the
  MNIST files it reads (every process reads the whole files and standardizes with the whole
  training split's statistics) and the arrays it keeps;
- the rows of the training images its own devices hold (``addressable_shards`` of the placed
  array; ``fit`` places it the same way, each process copying only its devices' rows);
- the step time: the second epoch's wall time / its steps (compilation and the first epoch
  excluded).

On a machine with fewer cores than devices the simulated devices share the cores, and two
processes add a cross-process all-reduce per step: the numbers show what each process holds
and that the job runs, not a speed-up.

    python -m benchmarks.multi_process [--train-examples 8192] [--batch-size 128]

Prints one JSON line per process and layout on stdout, and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

LAYOUTS = ((1, 4), (2, 2))  # (processes, devices per process)


def worker(args: argparse.Namespace) -> None:
    """One process of a layout: trains, then writes its numbers to ``args.out``."""
    from jaxtricks.backend import initialize_distributed

    if args.num_processes is not None:
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    import jax
    import numpy as np
    import optax

    import jaxtricks as jt
    from benchmarks.common import mnist
    from jaxtricks.models import CNN
    from jaxtricks.training import fit
    from jaxtricks.training.sharding import make_mesh, shard_dataset

    mesh = make_mesh()
    train_x, train_y, _, _ = (np.asarray(a) for a in mnist(args.train_examples, 1))
    model = CNN(use_batch_norm=True, dropout_rate=0.1)
    optimizer = optax.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-3, weight_decay=1e-4))
    _, history = fit(model, optimizer, train_x, train_y, epochs=2, batch_size=args.batch_size,
                     seed=0, mesh=mesh, progress=False, runner="loop")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    placed = shard_dataset(train_x, mesh)
    rows = sum(shard.data.shape[0] for shard in placed.addressable_shards)
    record = {
        "processes": jax.process_count(), "process": jax.process_index(),
        "devices": mesh.size, "local_devices": jax.local_device_count(),
        "peak_rss_mib": peak_kib / 1024, "train_rows_on_devices": rows,
        "train_rows": train_x.shape[0],
        "step_time_s": history.epochs[-1].epoch_time_s / history.header["steps_per_epoch"],
        "batch_size": args.batch_size,
    }
    with open(os.path.join(args.out, f"{jax.process_index()}.json"), "w") as file:
        json.dump(record, file)


def run_layout(processes: int, devices: int, args: argparse.Namespace) -> list[dict]:
    """Runs one layout in fresh processes; their records."""
    from jaxtricks.cli.launch import child_environment, launch

    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "benchmarks.multi_process", "--worker", "--out", out,
                "--train-examples", str(args.train_examples),
                "--batch-size", str(args.batch_size)]
        if processes == 1:
            subprocess.run(argv, env=child_environment(dict(os.environ), devices), check=True)
        elif launch(argv, processes, devices_per_process=devices) != 0:
            raise SystemExit(f"the {processes} × {devices} job failed")
        return [json.load(open(os.path.join(out, name)))
                for name in sorted(os.listdir(out))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator-address", help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from benchmarks.common import emit, table

    rows = []
    for processes, devices in LAYOUTS:
        for record in run_layout(processes, devices, args):
            emit(record)
            rows.append([f"{processes} x {devices}", record["process"], record["peak_rss_mib"],
                         record["train_rows_on_devices"], record["step_time_s"]])
    table(rows, ["layout", "process", "peak RSS MiB", "train rows held", "step s"])


if __name__ == "__main__":
    main()
