"""One built object per set of equal arguments, so compiled functions are reused.

Repeated fits of one model and optimizer (another seed, a resumed run, an experiment's next
condition) then reuse one ``jit`` function and its compiled executables instead of compiling
again. Linen modules compare by their fields, Optax transformations by their functions, NNX
modules (through :class:`~jaxtricks.training.model.FunctionalModel`) by their graph
definitions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["shared"]


def shared(build: Callable[..., Any], *args: Any) -> Any:
    """``build(*args)``, one object for equal hashable arguments (the 32 most recent).

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


@functools.lru_cache(maxsize=32)
def _cached(build: Callable[..., Any], *args: Any) -> Any:
    return build(*args)
