"""How long ``import jaxtricks`` takes, against ``import optax`` and ``import jax``.

    python -m benchmarks.import_time [--repeats 9]

Each import runs in a fresh interpreter (``python -X importtime -c "import M"``), alternating
between the modules so that a change of load affects both alike; the figure is the cumulative
time of the module's own import as ``-X importtime`` reports it, median over the repeats. The
ratio jaxtricks / optax is what a user adding jaxtricks to an Optax program pays. It also
records which heavy modules ``import jaxtricks`` loads (none of orbax, matplotlib, tqdm, flax
should be).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

MODULES = ("jaxtricks", "optax", "jax")
HEAVY = ("orbax.checkpoint", "matplotlib", "tqdm", "flax")


def import_seconds(module: str) -> float:
    """Seconds ``import module`` takes in a fresh interpreter (its cumulative import time)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, check=True,
    )
    for line in reversed(result.stderr.splitlines()):
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1]) / 1e6
    raise RuntimeError(f"-X importtime reported no line for {module}")


def loaded_heavy_modules() -> list[str]:
    """The heavy modules that ``import jaxtricks`` loads."""
    code = ("import json, sys, jaxtricks; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="fresh interpreters per module")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    times: dict[str, list[float]] = {module: [] for module in MODULES}
    for _ in range(args.repeats):
        for module in MODULES:
            times[module].append(import_seconds(module))
    medians = {module: statistics.median(values) for module, values in times.items()}
    record = {
        "benchmark": "import_time",
        "median_s": medians,
        "min_s": {module: min(values) for module, values in times.items()},
        "max_s": {module: max(values) for module, values in times.items()},
        "repeats": args.repeats,
        "jaxtricks_over_optax": medians["jaxtricks"] / medians["optax"],
        "heavy_modules_loaded": loaded_heavy_modules(),
    }
    from benchmarks.common import emit, machine

    emit({**record, "machine": machine()})
    return record


if __name__ == "__main__":
    main()
