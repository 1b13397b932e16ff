"""jaxtricks: the tricks that make deep networks train, as small pure composable JAX.

``import jaxtricks as jt`` gives every pure-JAX trick by name (initializers, gradient
transformations, optimizers, schedules, input scaling) and the higher layers as subpackages:
``jt.models`` (Flax models with batch norm and dropout), ``jt.data`` (MNIST and
Fashion-MNIST), ``jt.training`` (the jit-compiled training loop).
"""

from jaxtricks import data, models, training, tricks
from jaxtricks.tricks import *  # noqa: F403 - tricks.__all__ lists every name explicitly

__version__ = "0.1.0"

__all__ = [*tricks.__all__, "data", "models", "training", "tricks"]
