"""Pytree helpers shared by the gradient transformations.

The global norm of a pytree of arrays ``g = (g_1, ..., g_k)`` is

    ‖g‖ = sqrt(Σ_i Σ_j |g_ij|²),

accumulated in float32 (or wider, if a leaf is wider) so that bfloat16 and float16 gradients
do not lose the sum to rounding; for a complex leaf ``|z|² = Re(z)² + Im(z)²``. ``None``
leaves are empty subtrees and contribute nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def accumulation_dtype(dtype: Any) -> Any:
    """The real dtype a sum of squares of ``dtype`` values is taken in.

    float32 for narrower floats, the dtype itself for wider ones; for complex dtypes, their
    real part's dtype (float32 for complex64, float64 for complex128).
    """
    real = jnp.finfo(dtype).dtype
    return real if jnp.finfo(real).bits >= 32 else jnp.dtype(jnp.float32)


def squared_norm(leaf: jax.Array, dtype: Any) -> jax.Array:
    """``Σ |x|²`` over one array, accumulated in the real dtype ``dtype``.

    A dot product, not ``sum(square(x))``: XLA:CPU fuses the square into the reduction as a slow
    loop that recomputes an index per element, and a dot product avoids it (see
    docs/benchmarks.md#after-modelsbatchnorm-the-cpu-loop-runner-keeps-its-state-dot-product-sums).
    """
    if jnp.iscomplexobj(leaf):
        return squared_norm(leaf.real, dtype) + squared_norm(leaf.imag, dtype)
    return jnp.vdot(leaf, leaf, preferred_element_type=dtype)


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` elementwise, in ``x``'s dtype: ``x²`` for real ``x``, ``x·conj(x)`` for complex.

    The complex result has a zero imaginary part; it stays complex so that a moment of
    ``|g|²`` has the parameters' dtype, as in Optax's state.

    Examples:
      >>> import jax.numpy as jnp
      >>> abs_sq(jnp.array([3 + 4j])).tolist()
      [(25+0j)]
    """
    if jnp.iscomplexobj(x):
        return (x.real * x.real + x.imag * x.imag).astype(x.dtype)
    return x * x


def global_norm(tree: Any, *, at_least_float32: bool = False) -> jax.Array:
    """The Euclidean norm of all leaves of ``tree`` taken together (Optax's ``global_norm``).

    Math: ``‖g‖ = sqrt(Σ_leaves Σ_elements |g|²)``, summed in at least float32 and rounded
    once to the dtype Optax's norm has: the leaves' real dtypes promoted together (bfloat16
    for bfloat16 leaves, float32 for complex64 ones).

    Args:
      tree: a pytree of real or complex arrays (``None`` leaves are skipped, zero-size leaves
        add 0).
      at_least_float32: an extra of ours: return the sum's own precision, float32 or wider,
        as clipping and normalizing need it.

    Returns:
      A real scalar array.

    Examples:
      >>> import jax.numpy as jnp
      >>> float(global_norm({"a": jnp.array([3.0]), "b": jnp.array([[4.0]])}))
      5.0
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = max((accumulation_dtype(leaf.dtype) for leaf in leaves), key=lambda d: d.itemsize)
    total = jnp.zeros((), dtype)
    for leaf in leaves:
        total = total + squared_norm(leaf, dtype)
    norm = jnp.sqrt(total)
    if at_least_float32:
        return norm
    return norm.astype(functools.reduce(wider_dtype, (jnp.finfo(x.dtype).dtype for x in leaves)))


def all_finite(tree: Any) -> jax.Array:
    """A boolean scalar: True when no leaf of ``tree`` holds a NaN or an infinity.

    Examples:
      >>> import jax.numpy as jnp
      >>> bool(all_finite([jnp.array([1.0, jnp.inf])]))
      False
    """
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    if not flags:
        return jnp.asarray(True)
    return jnp.stack(flags).all()


def _is_none(node: Any) -> bool:
    return node is None


def check_same_structure(
    name: str, tree: Any, reference_name: str, reference: Any, *, none_is_prefix: bool = False
) -> None:
    """Raises ``ValueError`` when two pytrees differ in structure or in leaf shapes.

    Transforms call this on ``updates`` against their state or ``params``, so a mismatched
    pytree fails with a message that says which trees differ instead of deep inside
    ``jax.tree.map``. With ``none_is_prefix`` a ``None`` in ``tree`` stands for the whole
    matching subtree of ``reference`` (Optax's ``add_decayed_weights`` passes such updates
    through untouched); otherwise ``None`` is an empty subtree, as for ``jax.tree.map``. It
    runs at trace time only; under ``jit`` it costs nothing per step.
    """
    is_leaf = _is_none if none_is_prefix else None
    structure = jax.tree.structure(tree, is_leaf=is_leaf)
    try:
        # jaxlib ships no type stub for PyTreeDef, so mypy sees an unknown type.
        references = structure.flatten_up_to(reference)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        references = None
    if references is None or (
        not none_is_prefix
        and structure != jax.tree.structure(reference)  # type: ignore[operator]  # as above
    ):
        raise ValueError(
            f"{name} and {reference_name} have different pytree structures: "
            f"{jax.tree.structure(tree)} vs {jax.tree.structure(reference)}"
        )
    paths_leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
    for (path, leaf), ref_leaf in zip(paths_leaves, references, strict=True):
        if leaf is not None and np.shape(leaf) != np.shape(ref_leaf):
            raise ValueError(
                f"{name} and {reference_name} differ in shape at "
                f"{jax.tree_util.keystr(path)}: {np.shape(leaf)} vs {np.shape(ref_leaf)}"
            )


def check_inexact_leaves(name: str, tree: Any) -> None:
    """Raises ``TypeError`` when a leaf of ``tree`` is not a real or complex floating array.

    Gradient arithmetic on integer parameters silently truncates; refuse it instead.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name} must hold floating-point (real or complex) arrays, got dtype {dtype} "
                f"at {jax.tree_util.keystr(path)}"
            )


def wider_dtype(dtype: Any, other: Any) -> Any:
    """The dtype both values promote to, whatever ``jax_numpy_dtype_promotion`` is set to.

    Widening bfloat16 to float32 (or float32 to complex64) is the intent where this is called,
    so strict promotion must not refuse it.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(dtype, other)


def like(value: Any, reference: jax.Array) -> Any:
    """A hyperparameter ready to combine with ``reference`` under strict dtype promotion.

    Python numbers stay weakly typed, so they take the array's dtype exactly as they would
    in plain arithmetic; arrays, NumPy scalars (``np.float64`` subclasses ``float`` but is
    strongly typed) and schedule outputs are cast to the array's dtype.
    """
    if isinstance(value, int | float) and not isinstance(value, np.generic):
        return value
    return jnp.asarray(value).astype(reference.dtype)
