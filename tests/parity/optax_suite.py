"""Optax's own test suite, run against jaxtricks: the harness of ``test_optax_suite.py``.

The installed Optax wheel ships its tests (``optax/_src/alias_test.py`` and others). Each is an
``absltest`` module that reaches Optax's functions through module attributes such as
``alias.sgd``, ``transform.scale_by_adam`` or ``_schedule.exponential_decay``. To run one
against jaxtricks, :func:`load` executes a fresh copy of the module while Optax's modules are
replaced, in ``sys.modules`` and in their parent packages, by :class:`Redirected` proxies: a
proxy answers every name that jaxtricks shares with Optax (:func:`shared_names`) with a
:class:`Tally` wrapper around the jaxtricks function, and every other name with Optax's own
object. The copy's globals keep the proxies (parameters built at import time, like
``named_parameters(('adam', transform.scale_by_adam))``, hold the wrappers); Optax's own modules
are put back as soon as the copy is loaded, so Optax's internals never see jaxtricks.

:func:`run` runs the *selected* tests of the modules: those that name a shared function,
either in their source (``alias.sgd(...)``, in the test, its ``setUp`` or a module helper it
refers to) or in their parameters (a wrapper captured at import time, or a shared name as a
string, the ``opt_name`` of ``getattr(alias, opt_name)``). The same selection runs with the
proxies pointing at Optax's own functions (the baseline), so the two runs differ only in
whose function each test calls. Every wrapper call is counted against the running test: a
selected test that ran without calling jaxtricks would prove nothing, and the tests of this
harness require at least one call.

The suite runs with JAX's standard dtype promotion and rank promotion allowed, as Optax's
tests expect (this project's own tests run strict), and each test's changes to
``jax_enable_x64`` are undone after it. scikit-learn is only used by Optax's L-BFGS tests,
which are never selected; when it is not installed a placeholder lets ``alias_test`` import.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import pathlib
import re
import sys
import textwrap
import traceback
import types
import unittest
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import jax
import optax
import optax.contrib
import optax.schedules
import optax.transforms

import jaxtricks as jt

MODULES = (
    "optax._src.alias_test",
    "optax._src.transform_test",
    "optax._src.float64_test",
    "optax.transforms._clipping_test",
    "optax.transforms._adding_test",
    "optax.schedules._schedule_test",
    "optax.schedules._inject_test",
    "optax.transforms._conditionality_test",
    "optax.contrib._reduce_on_plateau_test",
)

# Where Optax exports the functions a user may call; a jaxtricks name found in one of them is
# a name the two libraries share.
NAMESPACES = (optax, optax.schedules, optax.transforms, optax.contrib)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


def shared_names() -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    """``{name: (jaxtricks function, Optax function)}`` for every function both export.

    Classes (the state NamedTuples jaxtricks reuses from Optax) and submodules are left out,
    and so is a name whose jaxtricks object *is* Optax's (a re-export has nothing to test).
    """
    shared = {}
    for name in jt.__all__:
        ours = getattr(jt, name)
        if isinstance(ours, type | types.ModuleType) or not callable(ours):
            continue
        for namespace in NAMESPACES:
            theirs = getattr(namespace, name, None)
            if callable(theirs) and theirs is not ours:
                shared[name] = (ours, theirs)
                break
    return shared


class Tally:
    """Counts calls of the shared functions, per running test."""

    def __init__(self) -> None:
        self.test_id: str | None = None
        self.calls: Counter[str] = Counter()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with every call counted against the running test."""

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.test_id is not None:
                self.calls[self.test_id] += 1
            return function(*args, **kwargs)

        counted.parity_name = name
        return counted


class Redirected(types.ModuleType):
    """An Optax module whose shared names answer with the given replacements.

    The replacements live in the instance dictionary; every other name is looked up in the
    real module.
    """

    def __init__(self, real: types.ModuleType, replacements: dict[str, Any]):
        super().__init__(real.__name__, real.__doc__)
        vars(self).update(replacements)
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_real"), name)


@contextlib.contextmanager
def _scikit_learn_placeholder() -> Iterator[None]:
    """A ``sklearn`` that fails when used, for as long as a test module is being imported."""
    try:
        importlib.import_module("sklearn")
        yield
        return
    except ModuleNotFoundError:
        pass

    class Missing(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            raise ModuleNotFoundError("scikit-learn is not installed (Optax's L-BFGS tests)")

    placeholder = types.ModuleType("sklearn")
    parts = {"sklearn": placeholder}
    for sub in ("datasets", "linear_model"):
        parts[f"sklearn.{sub}"] = Missing(f"sklearn.{sub}")
        setattr(placeholder, sub, parts[f"sklearn.{sub}"])
    sys.modules.update(parts)
    try:
        yield
    finally:
        for key in parts:
            sys.modules.pop(key, None)


@dataclasses.dataclass
class Loaded:
    """A test module loaded with its Optax modules redirected, and the tally of its calls."""

    module: types.ModuleType
    names: frozenset[str]  # the shared names
    tally: Tally


def load(name: str, target: str) -> Loaded:
    """A fresh copy of the Optax test module ``name`` calling ``target``'s shared functions.

    Args:
      name: a module of :data:`MODULES`.
      target: ``"jaxtricks"`` or ``"optax"`` (the baseline: Optax's functions, wrapped and
        counted the same way).
    """
    shared = shared_names()
    index = {"jaxtricks": 0, "optax": 1}[target]
    tally = Tally()
    replacements = {n: tally.wrap(n, pair[index]) for n, pair in shared.items()}
    with _scikit_learn_placeholder():
        # The real test module first: everything it imports is then imported with Optax's own
        # bindings, before any proxy is in place.
        importlib.import_module(name)
        proxies = {}
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith("optax") or not isinstance(module, types.ModuleType):
                continue
            mine = {n: r for n, r in replacements.items() if n in vars(module)}
            if mine:
                proxies[module_name] = Redirected(module, mine)
        spec = importlib.util.find_spec(name)
        copy = importlib.util.module_from_spec(
            importlib.util.spec_from_file_location(f"parity_{target}.{name}", spec.origin)
        )
        saved = {m: sys.modules[m] for m in proxies}
        parents = {}
        for module_name in proxies:
            parent, _, child = module_name.rpartition(".")
            if parent:
                parents[module_name] = (sys.modules[parent], child)
        try:
            for module_name, proxy in proxies.items():
                sys.modules[module_name] = proxy
                if module_name in parents:
                    parent, child = parents[module_name]
                    setattr(parent, child, proxy)
            copy.__spec__.loader.exec_module(copy)
        finally:
            for module_name, real in saved.items():
                sys.modules[module_name] = real
                if module_name in parents:
                    parent, child = parents[module_name]
                    setattr(parent, child, real)
    return Loaded(copy, frozenset(shared), tally)


def _closure(function: Callable[..., Any]) -> dict[str, Any]:
    code = getattr(function, "__code__", None)
    if code is None or not function.__closure__:
        return {}
    return dict(zip(code.co_freevars, (c.cell_contents for c in function.__closure__), strict=True))


def _source_mentions(function: Any, loaded: Loaded, seen: set[int]) -> bool:
    """Whether ``function``'s source, or a helper of the module it names, names a shared one.

    A mention is an attribute ``module.name`` in the function's body (not its decorators),
    where ``module`` is a redirected global of the test module and ``name`` a shared name.
    """
    if id(function) in seen or getattr(function, "__module__", None) != loaded.module.__name__:
        return False
    seen.add(id(function))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        # A lambda's source is the middle of a line; it names nothing a test would call.
        return False
    namespace = vars(loaded.module)
    (definition,) = tree.body
    # The body only: a parameterized test's decorator names every case's function.
    statements = definition.body if isinstance(definition, ast.FunctionDef) else [definition]
    for node in (node for statement in statements for node in ast.walk(statement)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in loaded.names
            and isinstance(node.value, ast.Name)
            and isinstance(namespace.get(node.value.id), Redirected)
        ):
            return True
        if isinstance(node, ast.Name) and inspect.isfunction(namespace.get(node.id)):
            if _source_mentions(namespace[node.id], loaded, seen):
                return True
    return False


def _value_mentions(value: Any, loaded: Loaded, seen: set[int]) -> bool:
    """Whether a test's parameter is, holds or names a shared function."""
    if hasattr(value, "parity_name"):
        return True
    if isinstance(value, str):
        return value in loaded.names
    if isinstance(value, dict):
        return any(_value_mentions(v, loaded, seen) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_value_mentions(v, loaded, seen) for v in value)
    if inspect.isfunction(value):
        return _source_mentions(value, loaded, seen)
    return False


def names_shared_function(test: unittest.TestCase, loaded: Loaded) -> bool:
    """Whether ``test`` names a function that jaxtricks shares with Optax (see the module doc)."""
    method = getattr(type(test), test._testMethodName)
    closure = _closure(method)
    # absl's parameterized tests are closures over the test function and its parameters.
    body = closure.get("test_method", method)
    seen: set[int] = set()
    if _source_mentions(body, loaded, seen):
        return True
    if _value_mentions(closure.get("testcase_params"), loaded, seen):
        return True
    set_up = getattr(type(test), "setUp", None)
    return set_up is not None and _source_mentions(set_up, loaded, seen)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one test did."""

    status: str  # PASSED, FAILED or SKIPPED
    detail: str  # the first line of the failure or skip reason; "" for a pass
    calls: int  # calls of a shared function (jaxtricks' or, in the baseline, Optax's)
    params: str  # absl's description of the parameters, "" for a plain test


def test_id_of(test: unittest.TestCase) -> str:
    """``<module after optax.>.<class>.<method>``, e.g. ``_src.alias_test.AliasTest.test_x0``.

    absl's own ``id()`` appends the parameters, whose reprs may hold memory addresses.
    """
    # The copy's module is parity_<target>.optax.<...>.
    module = type(test).__module__.split(".", 1)[1].removeprefix("optax.")
    return f"{module}.{type(test).__name__}.{test._testMethodName}"


class _Result(unittest.TestResult):
    """Records one :class:`Outcome` per test and puts back the global JAX settings it changed."""

    def __init__(self, tally: Tally):
        super().__init__()
        self.tally = tally
        self.outcomes: dict[str, Outcome] = {}
        self._problems: list[str] = []
        self._skip = ""

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self.tally.test_id = test.id()
        self._x64 = jax.config.jax_enable_x64
        self._problems, self._skip = [], ""

    def _first_line(self, err: Any) -> str:
        return traceback.format_exception_only(err[0], err[1])[-1].strip()

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._problems.append(self._first_line(err))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._problems.append(self._first_line(err))

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._problems.append(self._first_line(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._skip = reason

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        jax.config.update("jax_enable_x64", self._x64)
        method = getattr(type(test), test._testMethodName, None)
        if self._problems:
            status, detail = FAILED, self._problems[0]
        elif self._skip:
            status, detail = SKIPPED, self._skip
        else:
            status, detail = PASSED, ""
        self.outcomes[test_id_of(test)] = Outcome(
            status,
            detail,
            self.tally.calls[test.id()],
            getattr(method, "__x_params_repr__", ""),
        )
        self.tally.test_id = None


def run(target: str, modules: tuple[str, ...] = MODULES) -> dict[str, Outcome]:
    """Runs the selected tests of ``modules`` against ``target``; outcomes by test id.

    A test id is the module's dotted name after ``optax.``, the class and the method, e.g.
    ``_src.alias_test.AliasTest.test_optimization12``.
    """
    outcomes = {}
    for name in modules:
        loaded = load(name, target)
        tests = [
            test
            for case in unittest.defaultTestLoader.loadTestsFromModule(loaded.module)
            for test in case
            if names_shared_function(test, loaded)
        ]
        result = _Result(loaded.tally)
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            unittest.TestSuite(tests).run(result)
        outcomes.update(result.outcomes)
    return outcomes


DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "optax_parity.md"


def documented_differences() -> dict[str, list[str]]:
    """The deliberate-differences table of docs/optax_parity.md: ``{row id: Optax test ids}``.

    A row is a table line whose first cell is a backticked id; its last cell lists, in
    backticks, the selected Optax tests that fail against jaxtricks because of it (or "—").
    """
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        first = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if line.startswith("|") else None
        if first:
            rows[first.group(1)] = re.findall(r"`([^`]+)`", cells[-1])
    return rows


def report(outcomes: dict[str, dict[str, Outcome]]) -> str:
    """A few lines: run / passed / failed / skipped per target, then each jaxtricks failure."""
    lines = []
    for target, by_test in outcomes.items():
        counts = Counter(outcome.status for outcome in by_test.values())
        lines.append(
            f"{target}: {len(by_test)} run, {counts[PASSED]} passed, {counts[FAILED]} failed, "
            f"{counts[SKIPPED]} skipped"
        )
    for test_id, outcome in sorted(outcomes.get("jaxtricks", {}).items()):
        if outcome.status != PASSED and outcomes.get("optax", {}).get(test_id) != outcome:
            lines.append(f"  {outcome.status}: {test_id} {outcome.params}: {outcome.detail}")
    return "\n".join(lines)


if __name__ == "__main__":
    import time

    results = {}
    for target in ("optax", "jaxtricks"):
        start = time.perf_counter()
        results[target] = run(target, tuple(sys.argv[1:]) or MODULES)
        print(f"{target}: {time.perf_counter() - start:.0f} s", flush=True)
    print(report(results))
