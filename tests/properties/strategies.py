"""Hypothesis strategies for the property tests: random pytrees of small, finite float arrays.

A pytree is drawn in two stages. First its *spec*: a nesting of dicts, lists and tuples
(with the odd ``None`` and empty container) whose leaves are :class:`Leaf` records, a shape
from :data:`SHAPES` (scalar, vector, matrix, 4-D conv kernel, zero-size) and a dtype. Then
values for that spec, as NumPy arrays: float64 leaves must be built before the test enters
``jax.enable_x64``, so the tests turn the NumPy trees into JAX arrays themselves with
:func:`to_jax`. Values lie in ``[-LIMIT, LIMIT]``, so squares and sums of squares stay far from
float16's largest value (65504), and none is subnormal in its dtype.

Shapes come from a small fixed menu because compilation is the suite's main cost: eager JAX
compiles each primitive once per shape and dtype, so after the first examples every op hits
the cache. Tests that ``jit`` a whole update draw their structure from :data:`TEMPLATES`
instead, so that a transform compiles twice whatever the number of examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

LIMIT = 10.0
SHAPES = ((), (3,), (2, 3), (2, 2, 1, 3), (0,))
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
BFLOAT16 = np.dtype(jnp.bfloat16)
FLOAT16 = np.dtype(np.float16)
DTYPES = (FLOAT32, BFLOAT16, FLOAT16)
KEYS = ("w", "b", "kernel", "bias", "scale", "layer")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """The shape and dtype of one array of a drawn pytree (a pytree leaf, not a node)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def leaves(dtypes: tuple[np.dtype, ...] = DTYPES) -> st.SearchStrategy[Leaf]:
    """A :class:`Leaf` with a shape from :data:`SHAPES` and one of ``dtypes``."""
    return st.builds(Leaf, st.sampled_from(SHAPES), st.sampled_from(dtypes))


def specs(dtypes: tuple[np.dtype, ...] = DTYPES) -> st.SearchStrategy[Any]:
    """A pytree of :class:`Leaf` records nested in dicts, lists and tuples.

    Each leaf draws its own dtype, so a tree may mix float32 with bfloat16 and float16.
    ``None`` (an empty subtree, which transforms must pass through) may appear in place of a
    leaf, though not as the whole tree: ``update(g, state, None)`` means "no parameters".
    """
    base = st.one_of(leaves(dtypes), st.none())
    tree = st.recursive(
        base,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
        ),
        max_leaves=5,
    )
    return tree.filter(lambda spec: spec is not None)


# Fixed structures for the jit tests, between them every kind of leaf and container: one in
# float32, one mixing bfloat16, float16 and float32 leaves.
TEMPLATES = (
    {
        "conv": {"kernel": Leaf((2, 2, 1, 3), FLOAT32), "bias": Leaf((3,), FLOAT32)},
        "dense": [Leaf((2, 3), FLOAT32), Leaf((), FLOAT32)],
        "empty": (Leaf((0,), FLOAT32), None),
    },
    [
        Leaf((3,), FLOAT32),
        (Leaf((2, 3), BFLOAT16), Leaf((2, 0), FLOAT32)),
        {"w": Leaf((2, 2, 1, 3), FLOAT16), "b": Leaf((), BFLOAT16)},
    ],
)


def _normal(array: np.ndarray) -> np.ndarray:
    """The array with its subnormal numbers replaced by zeros.

    XLA on CPU flushes subnormals to zero, so one would change under any arithmetic, even
    ``p + 0``; such values are not moderate ones, and leaving them in would test XLA instead.
    """
    tiny = jnp.finfo(array.dtype).tiny
    return np.where(np.abs(array) < tiny, np.zeros_like(array), array)


def _array(leaf: Leaf, batch: int | None) -> st.SearchStrategy[np.ndarray]:
    """Values for one leaf, drawn in float32 (float64 for float64) and rounded to its dtype."""
    wide = FLOAT64 if leaf.dtype == FLOAT64 else FLOAT32
    shape = leaf.shape if batch is None else (batch, *leaf.shape)
    elements = st.floats(-LIMIT, LIMIT, width=np.finfo(wide).bits, allow_subnormal=False)
    return hnp.arrays(wide, shape, elements=elements).map(
        lambda a: _normal(a.astype(leaf.dtype))
    )


def values(spec: Any, *, batch: int | None = None) -> st.SearchStrategy[Any]:
    """A NumPy pytree for ``spec``; ``batch`` prepends an axis of that size to every leaf."""
    flat, treedef = jax.tree.flatten(spec)
    return st.tuples(*(_array(leaf, batch) for leaf in flat)).map(
        lambda arrays: jax.tree.unflatten(treedef, arrays)
    )


@dataclasses.dataclass(frozen=True)
class Problem:
    """Parameters and one gradient per step, all with the same spec (NumPy arrays)."""

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
    """A :class:`Problem` of ``steps`` gradients on a tree drawn from ``spec_strategy``."""
    spec = draw(specs() if spec_strategy is None else spec_strategy)
    trees = values(spec, batch=batch)
    return Problem(params=draw(trees), grads=tuple(draw(trees) for _ in range(steps)))


def to_jax(tree: Any) -> Any:
    """The NumPy pytree as JAX arrays of the same dtypes (call inside ``enable_x64`` for f64)."""
    return jax.device_put(tree)


def precision(tree: Any) -> float:
    """The largest machine epsilon among the tree's leaf dtypes (float32's for an empty tree)."""
    return max(
        (float(jnp.finfo(leaf.dtype).eps) for leaf in jax.tree.leaves(tree)),
        default=float(jnp.finfo(jnp.float32).eps),
    )
