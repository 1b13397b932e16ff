"""jaxtricks: the tricks that make deep networks train, as small pure composable JAX.

``import jaxtricks as jt`` gives every pure-JAX trick by name (initializers, gradient
transformations, optimizers, schedules, input scaling) and the other layers as subpackages,
imported when first used: ``jt.models`` (Flax models with batch norm and dropout), ``jt.data``
(MNIST and Fashion-MNIST), ``jt.training`` (the training steps, hooks and ``fit``),
``jt.backend`` (per-backend speed paths and process settings) and ``jt.testing`` (checks and
Hypothesis strategies for property tests of your own transforms).
"""

import importlib
from typing import Any

from jaxtricks import tricks
from jaxtricks.tricks import *  # noqa: F403 - tricks.__all__ lists every name explicitly

__version__ = "0.1.0"

_SUBPACKAGES = ("backend", "data", "files", "models", "testing", "training")

__all__ = [*tricks.__all__, *_SUBPACKAGES, "tricks"]


def __getattr__(name: str) -> Any:
    # The heavier layers (Flax, Orbax on demand) load on first use, so `import jaxtricks` costs
    # what the tricks need.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"jaxtricks.{name}")
    raise AttributeError(f"module 'jaxtricks' has no attribute {name!r}")
