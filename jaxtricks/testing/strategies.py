"""Hypothesis strategies for property tests: random pytrees, learning rates and schedules.

A pytree is drawn in two stages. First its *spec*: a nesting of dicts, lists and tuples
(with the odd ``None`` and empty container) whose leaves are :class:`Leaf` records, a shape
from :data:`SHAPES` (scalar, vector, matrix, 4-D conv kernel, zero-size) and a dtype from
:data:`DTYPES` (float32, bfloat16, float16, complex64), each leaf its own. Then values for that
spec, as NumPy arrays: float64 leaves must be built before a test enters ``jax.enable_x64``, so
the strategies leave the move to the device to the test (the checks of
:mod:`jaxtricks.testing.checks` do it). Values lie in ``[-LIMIT, LIMIT]`` (a complex value in
the disc of radius ``LIMIT``), so squares and sums of squares stay far from float16's largest
value (65504), and none is subnormal in its dtype: XLA on CPU flushes subnormals to zero, so
one would change under any arithmetic, even ``p + 0``, and a test would test XLA.

Shapes come from a small fixed menu because compilation is what property tests of JAX code
spend their time on: eager JAX compiles each primitive once per shape and dtype, so after the
first examples every op hits the cache. Tests that ``jit`` a whole update should draw their
structure from :data:`TEMPLATES` instead, so that a transformation compiles twice whatever the
number of examples.

This module needs Hypothesis: ``pip install "jaxtricks[testing]"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as error:  # pragma: no cover - the message is what matters
    raise ImportError(
        "jaxtricks.testing's strategies need Hypothesis: pip install \"jaxtricks[testing]\""
    ) from error

from jaxtricks.tricks import schedules as factories

LIMIT = 10.0
SHAPES = ((), (3,), (2, 3), (2, 2, 1, 3), (0,))
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
BFLOAT16 = np.dtype(jnp.bfloat16)
FLOAT16 = np.dtype(np.float16)
COMPLEX64 = np.dtype(np.complex64)
REAL_DTYPES = (FLOAT32, BFLOAT16, FLOAT16)
DTYPES = (*REAL_DTYPES, COMPLEX64)
KEYS = ("w", "b", "kernel", "bias", "scale", "layer")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """The shape and dtype of one array of a drawn pytree (a pytree leaf, not a node)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def leaves(
    dtypes: Sequence[Any] = DTYPES, shapes: Sequence[tuple[int, ...]] = SHAPES
) -> st.SearchStrategy[Leaf]:
    """A :class:`Leaf` with one of ``shapes`` and one of ``dtypes``.

    Args:
      dtypes: the dtypes to draw from.
      shapes: the shapes to draw from.

    Returns:
      A strategy of :class:`Leaf` records.

    Examples:
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=5, deadline=None)
      ... @given(leaves([np.float32], [(2, 0)]))
      ... def test(leaf):
      ...     assert leaf == Leaf((2, 0), np.dtype(np.float32))
      >>> test()
    """
    return st.builds(
        Leaf, st.sampled_from([tuple(s) for s in shapes]),
        st.sampled_from([np.dtype(d) for d in dtypes]),
    )


def specs(
    dtypes: Sequence[Any] = DTYPES,
    *,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
    max_leaves: int = 5,
) -> st.SearchStrategy[Any]:
    """A pytree of :class:`Leaf` records nested in dicts, lists and tuples.

    Each leaf draws its own dtype, so a tree may mix float32 with bfloat16, float16 and
    complex64. ``None`` (an empty subtree, which transformations must pass through) may appear
    in place of a leaf, though not as the whole tree: ``update(g, state, None)`` means "no
    parameters".

    Args:
      dtypes: the leaves' dtypes to draw from.
      shapes: the leaves' shapes to draw from.
      max_leaves: the most leaves (and ``None``\\ s) a tree has.

    Returns:
      A strategy of spec pytrees, for :func:`values`.

    Examples:
      >>> import jax
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=5, deadline=None)
      ... @given(specs(max_leaves=3))
      ... def test(spec):
      ...     assert len(jax.tree.leaves(spec)) <= 3
      >>> test()
    """
    base = st.one_of(leaves(dtypes, shapes), st.none())
    tree = st.recursive(
        base,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
        ),
        max_leaves=max_leaves,
    )
    return tree.filter(lambda spec: spec is not None)


# Fixed structures for jitted tests, between them every kind of leaf and container: one in
# float32, one mixing bfloat16, float16, complex64 and float32 leaves.
TEMPLATES = (
    {
        "conv": {"kernel": Leaf((2, 2, 1, 3), FLOAT32), "bias": Leaf((3,), FLOAT32)},
        "dense": [Leaf((2, 3), FLOAT32), Leaf((), FLOAT32)],
        "empty": (Leaf((0,), FLOAT32), None),
    },
    [
        Leaf((3,), FLOAT32),
        (Leaf((2, 3), BFLOAT16), Leaf((2, 0), FLOAT32)),
        {"w": Leaf((2, 2, 1, 3), FLOAT16), "b": Leaf((), BFLOAT16), "z": Leaf((2, 3), COMPLEX64)},
    ],
)


def _normal(array: np.ndarray) -> np.ndarray:
    """The array with its subnormal numbers (parts, for complex) replaced by zeros."""
    if np.iscomplexobj(array):
        normal = np.empty_like(array)
        normal.real, normal.imag = _normal(array.real), _normal(array.imag)
        return normal
    tiny = jnp.finfo(array.dtype).tiny
    return np.where(np.abs(array) < tiny, np.zeros_like(array), array)


def _array(leaf: Leaf, batch: int | None, limit: float) -> st.SearchStrategy[np.ndarray]:
    """Values for one leaf, drawn in float32 (float64 for float64) and rounded to its dtype."""
    shape = leaf.shape if batch is None else (batch, *leaf.shape)
    if np.issubdtype(leaf.dtype, np.complexfloating):
        wide = leaf.dtype
        elements = st.complex_numbers(
            max_magnitude=limit, allow_subnormal=False, allow_nan=False, allow_infinity=False,
            width=cast(Literal[32, 64, 128], 8 * leaf.dtype.itemsize),  # complex64 or 128
        )
    else:
        wide = FLOAT64 if leaf.dtype == FLOAT64 else FLOAT32
        width = cast(Literal[32, 64], np.finfo(wide).bits)  # float32 or float64
        elements = st.floats(-limit, limit, width=width, allow_subnormal=False)
    return hnp.arrays(wide, shape, elements=elements).map(
        lambda a: _normal(a.astype(leaf.dtype))
    )


def values(
    spec: Any, *, batch: int | None = None, limit: float = LIMIT
) -> st.SearchStrategy[Any]:
    """A NumPy pytree for ``spec``: an array of each :class:`Leaf`'s shape and dtype.

    Args:
      spec: a pytree of :class:`Leaf` records (from :func:`specs`, or written by hand).
      batch: prepends an axis of this size to every leaf (a batch of independent trees).
      limit: the largest magnitude of a value; values are finite and never subnormal.

    Returns:
      A strategy of pytrees of NumPy arrays.

    Examples:
      >>> from hypothesis import given, settings
      >>> spec = {"w": Leaf((2, 3), BFLOAT16), "z": Leaf((), COMPLEX64), "none": None}
      >>> @settings(max_examples=5, deadline=None)
      ... @given(values(spec, batch=4))
      ... def test(tree):
      ...     assert tree["w"].shape == (4, 2, 3) and tree["w"].dtype == BFLOAT16
      ...     assert tree["z"].dtype == COMPLEX64 and tree["none"] is None
      >>> test()
    """
    flat, treedef = jax.tree.flatten(spec)
    return st.tuples(*(_array(leaf, batch, limit) for leaf in flat)).map(
        lambda arrays: jax.tree.unflatten(treedef, arrays)
    )


def pytrees(
    dtypes: Sequence[Any] = DTYPES,
    *,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
    max_leaves: int = 5,
    limit: float = LIMIT,
) -> st.SearchStrategy[Any]:
    """A random pytree of NumPy arrays: :func:`values` of a spec drawn by :func:`specs`.

    Args:
      dtypes: the leaves' dtypes to draw from.
      shapes: the leaves' shapes to draw from.
      max_leaves: the most leaves (and ``None``\\ s) a tree has.
      limit: the largest magnitude of a value.

    Returns:
      A strategy of pytrees of NumPy arrays.

    Examples:
      >>> import jax
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=5, deadline=None)
      ... @given(pytrees())
      ... def test(tree):
      ...     assert all(np.all(np.abs(x) <= LIMIT) for x in jax.tree.leaves(tree))
      >>> test()
    """
    return specs(dtypes, shapes=shapes, max_leaves=max_leaves).flatmap(
        lambda spec: values(spec, limit=limit)
    )


@dataclasses.dataclass(frozen=True)
class Problem:
    """Parameters and one gradient per step, all with the same structure (NumPy arrays)."""

    params: Any
    grads: tuple[Any, ...]


@st.composite
def problems(
    draw: st.DrawFn,
    spec_strategy: st.SearchStrategy[Any] | None = None,
    *,
    steps: int = 3,
    batch: int | None = None,
) -> Problem:
    """A :class:`Problem`: parameters and ``steps`` gradients on one drawn tree structure.

    Args:
      spec_strategy: a strategy of specs; ``None`` for :func:`specs` (every dtype of
        :data:`DTYPES`); ``st.sampled_from(TEMPLATES)`` for a jitted test.
      steps: the number of gradients.
      batch: prepends an axis of this size to every leaf (independent problems, for ``vmap``).

    Returns:
      A strategy of :class:`Problem` records, whose ``params`` and ``grads`` go to
      :func:`~jaxtricks.testing.check_transform` as they are.

    Examples:
      >>> import jaxtricks as jt
      >>> from hypothesis import given, settings
      >>> from jaxtricks.testing import check_transform
      >>> sgd = jt.sgd(0.1)
      >>> @settings(max_examples=3, deadline=None)
      ... @given(problems())
      ... def test_sgd(problem):
      ...     check_transform(sgd, problem.params, problem.grads, checks=["dtypes", "finite"])
      >>> test_sgd()
    """
    spec = draw(specs() if spec_strategy is None else spec_strategy)
    trees = values(spec, batch=batch)
    return Problem(params=draw(trees), grads=tuple(draw(trees) for _ in range(steps)))


def _float32_bounds(low: float, high: float) -> tuple[float, float]:
    """The float32 numbers nearest to ``[low, high]`` inside it (Hypothesis' width-32 bounds)."""
    # Compared as Python floats: NumPy 2 compares a float32 with a Python float in float32,
    # where float32(0.1) equals 0.1.
    low32, high32 = np.float32(low), np.float32(high)
    if float(low32) < low:
        low32 = np.nextafter(low32, np.float32(np.inf))
    if float(high32) > high:
        high32 = np.nextafter(high32, np.float32(-np.inf))
    return float(low32), float(high32)


def learning_rates(
    min_value: float = 1e-4, max_value: float = 1.0, *, scheduled: bool = False
) -> st.SearchStrategy[Any]:
    """A learning rate: a float32-representable number, or also a schedule.

    Args:
      min_value: the smallest number drawn (≥ 0).
      max_value: the largest number drawn, and the bound of a schedule's values.
      scheduled: also draw schedules (from :func:`schedules`, whose values lie in
        ``[0, max_value]``; ``min_value`` does not bound them).

    Returns:
      A strategy of floats, or of floats and schedules ``count -> value``.

    Examples:
      >>> import jaxtricks as jt
      >>> from hypothesis import given, settings
      >>> @settings(max_examples=5, deadline=None)
      ... @given(learning_rates(scheduled=True))
      ... def test(learning_rate):
      ...     tx = jt.sgd(learning_rate)
      ...     assert tx.init(np.zeros(2, np.float32)) is not None
      >>> test()
    """
    if not 0 <= min_value <= max_value:
        raise ValueError(
            f"min_value, max_value: expected 0 <= min_value <= max_value, got {min_value} and "
            f"{max_value}"
        )
    numbers = st.floats(*_float32_bounds(min_value, max_value), width=32, allow_subnormal=False)
    if not scheduled:
        return numbers
    return st.one_of(numbers, schedules(max_value=max_value).map(lambda case: case.schedule))


@dataclasses.dataclass(frozen=True)
class ScheduleCase:
    """A drawn schedule, non-decreasing on counts ``[0, peak]`` and non-increasing after.

    ``top`` is the value the schedule's docstring promises at ``peak``, where it promises one.
    ``call`` shows how it was built, for Hypothesis' report of a failing example.
    """

    schedule: Callable[[Any], jax.Array]
    peak: int
    top: float | None
    call: str = dataclasses.field(compare=False)

    def __repr__(self) -> str:
        return f"ScheduleCase({self.call}, peak={self.peak}, top={self.top})"


def _case(factory, *args, peak=0, top=None, **kwargs) -> ScheduleCase:
    arguments = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    call = f"{factory.__name__}({', '.join(arguments)})"
    return ScheduleCase(factory(*args, **kwargs), peak, top, call)


def _schedule_strategies(max_value: float, horizon: int) -> dict[str, st.SearchStrategy]:
    """A strategy per schedule name; step lengths are below ``horizon / 2``."""
    # Schedules compute in float32. No hyperparameter is subnormal there: XLA on CPU flushes
    # such numbers to zero in some programs and not in others.
    values_ = st.floats(*_float32_bounds(0.0, max_value), width=32, allow_subnormal=False)
    fractions = st.floats(0.0, 1.0, width=32, allow_subnormal=False)
    lengths = st.integers(1, horizon // 2)

    @st.composite
    def exponential_decays(draw):
        begin = draw(st.integers(0, horizon // 2))
        staircase = draw(st.booleans())
        if draw(st.booleans()):
            return _case(
                factories.exponential_decay, draw(values_), draw(lengths),
                draw(st.floats(0.01, 1.0)), transition_begin=begin, staircase=staircase,
                end_value=draw(st.one_of(st.none(), values_)),
            )
        # A growth overflows float32 unless bounded: its end_value is not optional here.
        return _case(
            factories.exponential_decay, draw(st.floats(min(0.01, max_value), max_value)),
            draw(lengths), draw(st.floats(1.0, 2.0)), transition_begin=begin,
            staircase=staircase, end_value=draw(values_), peak=horizon,
        )

    @st.composite
    def warmup_cosines(draw):
        peak_value = draw(values_)
        below_peak = st.floats(0.0, peak_value, width=32, allow_subnormal=False)
        warmup = draw(st.integers(1, horizon // 2 - 1))
        return _case(
            factories.warmup_cosine, draw(below_peak), peak_value, warmup,
            draw(st.integers(warmup + 1, horizon // 2)), draw(below_peak),
            peak=warmup, top=peak_value,
        )

    @st.composite
    def one_cycles(draw):
        steps = draw(st.integers(2, horizon // 2))
        rise = draw(st.integers(1, steps - 1))
        peak_value = draw(values_)
        return _case(
            factories.one_cycle, steps, peak_value,
            (rise + 0.5) / steps,  # pct_start: the rise is ⌊pct_start · steps⌋ steps long
            draw(st.floats(1.0, 100.0)), draw(st.floats(1.0, 1e4)),
            peak=rise, top=peak_value,
        )

    return {
        "constant": st.builds(lambda v: _case(factories.constant, jnp.float32(v)), values_),
        "exponential_decay": exponential_decays(),
        "per_epoch_decay": st.builds(
            lambda v, n, f: _case(factories.per_epoch_decay, v, n, f),
            values_, lengths, st.floats(0.01, 1.0),
        ),
        "step_decay": st.builds(
            lambda v, n, g: _case(factories.step_decay, v, n, g),
            values_, lengths, st.floats(0.01, 1.0),
        ),
        "cosine_decay": st.builds(
            lambda v, n, a, p: _case(factories.cosine_decay, v, n, a, p),
            values_, lengths, fractions, st.floats(0.1, 4.0),
        ),
        "warmup_cosine": warmup_cosines(),
        "piecewise_constant": st.builds(
            lambda v, pieces: _case(factories.piecewise_constant, v, pieces),
            values_, st.dictionaries(st.integers(0, horizon), fractions, max_size=4),
        ),
        "one_cycle": one_cycles(),
    }


SCHEDULE_NAMES = tuple(sorted(_schedule_strategies(LIMIT, 128)))


def schedules(
    names: Sequence[str] = SCHEDULE_NAMES, *, max_value: float = LIMIT, horizon: int = 128
) -> st.SearchStrategy[ScheduleCase]:
    """A jaxtricks schedule with random hyperparameters, and the shape its docstring promises.

    Every schedule of :data:`SCHEDULE_NAMES` (``jaxtricks.tricks.schedules``): constant, the
    decays (exponential, the lesson's per-epoch ×0.98, step, cosine), warm-up cosine,
    piecewise constant and one-cycle; exponential growth bounded by its ``end_value`` too.

    Args:
      names: the schedules to draw from.
      max_value: every value of a drawn schedule lies in ``[0, max_value]``.
      horizon: step lengths are drawn below ``horizon / 2``, so that counts ``[0, horizon)``
        show a curve's end as well as its start.

    Returns:
      A strategy of :class:`ScheduleCase` records.

    Examples:
      >>> from hypothesis import given, settings
      >>> from jaxtricks.testing import check_schedule
      >>> @settings(max_examples=3, deadline=None)
      ... @given(schedules(["warmup_cosine"], max_value=0.1))
      ... def test(case):
      ...     check_schedule(case.schedule, [0, case.peak, 127], checks=["finite"])
      ...     assert float(case.schedule(case.peak)) <= 0.1
      >>> test()
    """
    strategies = _schedule_strategies(max_value, horizon)
    unknown = sorted(set(names) - set(strategies))
    if unknown or not names:
        raise ValueError(f"names: expected some of {list(SCHEDULE_NAMES)}, got {list(names)}")
    return st.one_of(*(strategies[name] for name in names))
