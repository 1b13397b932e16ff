"""One built object per set of equal arguments, so compiled functions are reused.

Repeated fits of one model and optimizer (another seed, a resumed run, an experiment's next
condition) then reuse one ``jit`` function and its compiled executables instead of compiling
again. Linen modules compare by their fields, Optax transformations by their functions, NNX
modules (through :class:`~jaxtricks.training.model.FunctionalModel`) by their graph
definitions.

A function compiled for one train or eval step (an epoch runner, a batch of evaluation, the
learning-rate sweep) takes that step as a closed-over constant (:func:`jit_with`), not as a
static argument of a module-level ``jit``: JAX keeps each static argument of such a function,
and every executable compiled for it, for the life of the process (up to thousands of entries),
so a sweep of fits in one process would grow by the size of each fit's executables. Built
through :func:`shared`, they are freed once the 64 most recent builds no longer include them.
Averaging and ensembles bind their model the same way. (Two module-level jits still take a
model as a static argument, in LSUV and signal propagation, below this layer: equal models
share their entries, so only a sweep over many different models grows them.) An argument that
cannot be hashed is built afresh on every call, so its function compiles on every call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["jit_with", "shared"]


def shared(build: Callable[..., Any], *args: Any) -> Any:
    """``build(*args)``, one object for equal hashable arguments (the 64 most recent).

    Unhashable arguments get a fresh build.

    Examples:
        >>> make = lambda n: object()
        >>> shared(make, 3) is shared(make, 3), shared(make, 3) is shared(make, 4)
        (True, False)
    """
    try:
        hash(args)
    except TypeError:
        return build(*args)
    return _cached(build, *args)


@functools.lru_cache(maxsize=64)
def _cached(build: Callable[..., Any], *args: Any) -> Any:
    return build(*args)


def jit_with(fn: Callable[..., Any], first: Any, *, donate_argnums: tuple[int, ...] = ()) -> Any:
    """``jax.jit(functools.partial(fn, first), donate_argnums=...)``, one per equal arguments.

    ``first`` (a step function, say) is bound into the jitted function instead of passed as a
    static argument, so the compiled executables live as long as this jitted function does (in
    the cache of :func:`shared`), not as long as the process.

    Examples:
        >>> import jax.numpy as jnp
        >>> def scale(factor, x): return factor * x
        >>> f = jit_with(scale, 3.0)
        >>> float(f(jnp.ones(()))), f is jit_with(scale, 3.0)
        (3.0, True)
    """
    if not callable(fn):
        raise ValueError(f"fn must be a function, got {fn!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
               for i in donate_argnums):
        raise ValueError(f"donate_argnums must hold ints >= 0, got {donate_argnums!r}")
    return shared(_jit_partial, fn, first, tuple(donate_argnums))


def _jit_partial(fn: Callable[..., Any], first: Any, donate_argnums: tuple[int, ...]) -> Any:
    return jax.jit(functools.partial(fn, first), donate_argnums=donate_argnums)
