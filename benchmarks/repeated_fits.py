"""Memory of one process that calls ``fit`` again and again, as a hyperparameter sweep does.

    python -m benchmarks.repeated_fits [--fits 90] [--every 15] [--quick]

Each fit trains a fresh ``MLP(features=(32,))`` with a fresh ``jt.adam(1e-3)`` (so no two fits
share a train step) for one epoch on 2,048 real MNIST images, batch 128. After every ``every``
fits the process collects garbage and records its resident set size (``VmRSS``). A process that
keeps what each fit compiled grows by the size of those executables per fit; one that frees
them levels off. The figure is the growth per fit over the second half of the fits.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence
from typing import Any

import jaxtricks as jt
from benchmarks.common import emit, machine, mnist, table
from jaxtricks.models import MLP
from jaxtricks.training import fit


def resident_mib() -> float:
    """The process's resident set size in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns the record it printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fits", type=int, default=90)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="4 fits, 256 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.fits, args.every = 4, 2
    if args.fits < 2 or not 1 <= args.every <= args.fits:
        raise SystemExit("--fits must be at least 2 and --every in [1, --fits]")
    images, labels, _, _ = mnist(train_examples=256 if args.quick else 2048, test_examples=1)
    series = []
    for done in range(1, args.fits + 1):
        fit(MLP(features=(32,)), jt.adam(1e-3), images, labels, epochs=1, batch_size=128,
            progress=False)
        if done % args.every == 0 or done == args.fits:
            gc.collect()
            series.append((done, resident_mib()))
    half = [point for point in series if point[0] >= args.fits / 2]
    first, last = half[0], half[-1]
    # None when the second half holds a single measurement: no slope to report.
    growth = (round((last[1] - first[1]) / (last[0] - first[0]), 3) if last[0] > first[0]
              else None)
    record = {
        "benchmark": "repeated_fits", "fits": args.fits,
        "rss_mib": [{"fits": fits, "rss_mib": round(rss, 1)} for fits, rss in series],
        "growth_mib_per_fit_second_half": growth, **machine(),
    }
    emit(record)
    table([[fits, f"{rss:.1f}"] for fits, rss in series], ["fits", "RSS MiB"])
    return record


if __name__ == "__main__":
    main()
