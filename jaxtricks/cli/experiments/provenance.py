"""What a result was produced with, so that a stale result can be found.

A results file records the code it measured as a fingerprint: the SHA-256 of every jaxtricks
module the experiment imports, directly or not, each as its syntax tree without docstrings
(comments are not in the tree). Editing prose changes nothing; changing what the code does,
anywhere the experiment reaches, changes the fingerprint, and the result is stale until the
experiment runs again. ``tests/test_results.py`` compares the fingerprints of the committed
results with the code's.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pathlib
import platform
import subprocess
from typing import Any

__all__ = ["code_fingerprint", "imported_modules", "provenance"]

PACKAGE = "jaxtricks"


_ROOT = pathlib.Path(__file__).resolve().parents[3]  # the folder holding the package


def _source(module: str) -> pathlib.Path | None:
    """The file of a jaxtricks module (read, not imported), or None for a name that is not a
    module (``from jaxtricks.models import CNN`` names a class)."""
    base = _ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """The jaxtricks modules a module's syntax tree imports, anywhere in it."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # ``from package import module`` imports a module, not just a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def imported_modules(module: str) -> list[str]:
    """``module`` and every jaxtricks module it imports, directly or not, sorted.

    Example:
        >>> "jaxtricks.training.steps" in imported_modules("jaxtricks.training.fit")
        True
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source(name)
        if path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo.extend(_imports(tree, name, path.name == "__init__.py") - seen)
    return sorted(seen)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(module: str) -> str:
    """SHA-256 of the code of ``module`` and every jaxtricks module it imports, docstrings and
    comments left out.

    Example:
        >>> len(code_fingerprint("jaxtricks.tricks.checks"))
        64
    """
    digest = hashlib.sha256()
    for name in imported_modules(module):
        path = _source(name)
        assert path is not None  # imported_modules keeps only names that have a file
        tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
        digest.update(name.encode())
        digest.update(ast.dump(tree, include_attributes=False).encode())
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def provenance(module: str) -> dict[str, Any]:
    """The code fingerprint of ``module``, the git commit (and whether the working tree had
    uncommitted changes) and the versions a result is produced with."""
    import flax
    import jax
    import numpy as np
    import optax

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "module": module,
        "code_fingerprint": code_fingerprint(module),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": importlib.import_module("jaxlib").__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
    }
