"""The repository's ``benchmarks`` package, for the tests in this folder."""

import importlib
import pathlib
import sys
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[2]


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks.<name>``, imported from the repository root.

    pytest puts ``tests/`` on ``sys.path``, where ``tests/benchmarks`` would shadow the
    top-level ``benchmarks`` package as a namespace package: one imported that way is dropped
    first.
    """
    sys.path.insert(0, str(ROOT))
    package = sys.modules.get("benchmarks")
    if package is not None and getattr(package, "__file__", None) is None:
        del sys.modules["benchmarks"]
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(ROOT))
