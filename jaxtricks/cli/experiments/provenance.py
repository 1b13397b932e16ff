"""What a result was produced with, so that a stale result can be found.

A results file records the code it measured: a digest of every jaxtricks module the
experiment imports, directly or not, each taken over its syntax tree without docstrings, type
annotations and ``typing.cast`` (comments are not in the tree), and one fingerprint over them
all. Editing prose or types changes nothing; changing what the code does, anywhere the
experiment reaches, changes a digest, and :func:`changed_since` names the modules. The report
in ``docs/results.md`` says, per experiment, whether its code changed since it ran
(``tests/test_results.py`` checks that the report is today's).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pathlib
import platform
import subprocess
from typing import Any

__all__ = [
    "changed_since",
    "code_fingerprint",
    "imported_modules",
    "module_digest",
    "module_digests",
    "provenance",
]

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

    Examples:
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


class _Normalize(ast.NodeTransformer):
    """Drops what does not change what the code does: docstrings, type annotations, imports
    from ``typing``, ``typing.cast`` wrappers and ``if TYPE_CHECKING:`` blocks (comments are
    not in the tree)."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]  # same fields

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return ast.Pass()
        return self.generic_visit(ast.Assign(targets=[node.target], value=node.value))

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else None
        if name == "cast" and len(node.args) == 2 and not node.keywords:
            return self.visit(node.args[1])
        return self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        return ast.Pass() if node.module == "typing" else node

    def visit_If(self, node: ast.If) -> ast.AST:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            if not node.orelse:
                return ast.Pass()
            node.body = [ast.Pass()]
        return self.generic_visit(node)


def module_digest(source: str) -> str:
    r"""SHA-256 of a module's syntax tree, with docstrings, annotations, imports from
    ``typing``, ``typing.cast`` and ``if TYPE_CHECKING:`` blocks left out: equal digests mean
    code that does the same.

    Examples:
        >>> annotated = 'def f(x: int) -> int:\n    "Doc."\n    return x  # why\n'
        >>> module_digest(annotated) == module_digest("def f(x):\n    return x\n")
        True
    """
    tree = _Normalize().visit(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def module_digests(module: str) -> dict[str, str]:
    """:func:`module_digest` of ``module`` and of every jaxtricks module it imports, this
    module left out: it records results and computes none of them."""
    digests = {}
    for name in imported_modules(module):
        if name == __name__:
            continue
        path = _source(name)
        assert path is not None  # imported_modules keeps only modules with a source file
        digests[name] = module_digest(path.read_text(encoding="utf-8"))
    return digests


def code_fingerprint(module: str) -> str:
    """SHA-256 of the code of ``module`` and every jaxtricks module it imports: one digest of
    their :func:`module_digest` values.

    Examples:
        >>> len(code_fingerprint("jaxtricks.tricks.checks"))
        64
    """
    digest = hashlib.sha256()
    for name, value in module_digests(module).items():
        digest.update(f"{name}:{value};".encode())
    return digest.hexdigest()


def changed_since(recorded: dict[str, Any]) -> list[str] | None:
    """The jaxtricks modules whose code changed since a result's :func:`provenance` was
    recorded, among those its experiment reaches today (a new module counts as changed).

    Args:
        recorded: the ``provenance`` entry of a ``results.json``.

    Returns:
        The changed modules, sorted (empty when the result measures today's code), or None
        when that cannot be told: no recorded digests, and the recorded commit is not in this
        clone's history.
    """
    now = module_digests(recorded["module"])
    then = recorded.get("module_digests")
    if then is None:
        commit = recorded.get("commit")
        if not commit or _git("cat-file", "-e", f"{commit}^{{commit}}") is None:
            return None
        then = {}
        for name in now:
            path = _source(name)
            assert path is not None
            text = _git("show", f"{commit}:{path.relative_to(_ROOT).as_posix()}")
            if text is not None:
                then[name] = module_digest(text)
    return sorted(name for name, value in now.items() if then.get(name) != value)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def provenance(module: str) -> dict[str, Any]:
    """The code fingerprint and per-module digests of ``module``, the git commit (and whether
    the working tree had uncommitted changes to Python files), the CPU model and the versions
    a result is produced with."""
    import flax
    import jax
    import numpy as np
    import optax

    # Results files are tracked too: only changes to code make a result's commit inexact.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "*.py")
    return {
        "module": module,
        "code_fingerprint": code_fingerprint(module),
        "module_digests": module_digests(module),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": importlib.import_module("jaxlib").__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
    }
