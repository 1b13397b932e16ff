"""``jaxtricks experiment NAME``: one experiment per claim of the lesson, on real MNIST.

Each module holds one experiment (its full and quick configs, ``run`` and ``plot``);
:mod:`jaxtricks.cli.experiments.common` holds what they share. :data:`NAMES` lists them in the
order ``all`` runs them: the cheap MLP ones first, the CNN ones last.
"""

import importlib
from types import ModuleType

NAMES = (
    "scaling",
    "initialization",
    "batch_norm",
    "overfitting",
    "optimizers",
    "clipping",
    "lr_decay",
    "lr_find",
    "dropout",
    "precision",
)


def get(name: str) -> ModuleType:
    """The experiment module called ``name``, one of :data:`NAMES`."""
    if name not in NAMES:
        raise ValueError(f"experiment name must be one of {NAMES}, got {name!r}")
    return importlib.import_module(f"jaxtricks.cli.experiments.{name}")
