"""Hyperparameters injected into an optimizer's state, set from outside the optimizer.

``optax.inject_hyperparams(make)(learning_rate=η, ...)`` keeps each numeric hyperparameter as an
array in the optimizer state, ``opt_state.hyperparams["learning_rate"]``, and rebuilds the
inner transformation from those arrays at every update. Writing a new value there changes what
the next update uses without building, or compiling, anything again: an ensemble sweeps K
values at once this way, and a learning-rate range test changes η at every step.

A hyperparameter given as a schedule is recomputed from its schedule at every update, which
would overwrite any value written; :func:`set_hyperparams` refuses those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["INJECTED_STATES", "set_hyperparams"]

# The optimizer-state nodes of optax.inject_hyperparams and optax.inject_stateful_hyperparams.
INJECTED_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def set_hyperparams(opt_state: Any, values: Mapping[str, Any], *, argument: str = "values") -> Any:
    """``opt_state`` with each injected hyperparameter ``name`` set to ``values[name]``.

    Every ``optax.inject_hyperparams`` state in ``opt_state`` (nested in ``optax.chain``,
    ``optax.MultiSteps``, a stacked ensemble, ...) that holds ``name`` gets the new value, cast
    to the dtype it held. Works on arrays and on tracers, so it can run inside ``jit``.

    Args:
        opt_state: an optimizer state.
        values: ``{name: value}``; a value has the shape the state holds (a scalar, or K values
            for K stacked states).
        argument: what the error messages call ``values``.

    Returns:
        The new optimizer state; ``opt_state`` itself is not changed.

    Raises:
        ValueError: a name no injected state holds, or one computed from a schedule.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        >>> state = set_hyperparams(tx.init({"w": jnp.zeros(2)}), {"learning_rate": 0.5})
        >>> float(state.hyperparams["learning_rate"])
        0.5
    """
    found: set[str] = set()
    available: set[str] = set()
    scheduled: set[str] = set()

    def replace(node):
        if not isinstance(node, INJECTED_STATES):
            return node
        hyperparams = dict(node.hyperparams)
        available.update(hyperparams)
        scheduled.update(getattr(node, "hyperparams_states", {}))
        for name, value in values.items():
            if name in hyperparams:
                hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
                found.add(name)
        return node._replace(hyperparams=hyperparams)

    new_state = jax.tree.map(replace, opt_state,
                             is_leaf=lambda node: isinstance(node, INJECTED_STATES))
    for name in values:
        if name in scheduled:
            raise ValueError(
                f"{argument}[{name!r}]: the optimizer computes it from a schedule every step, "
                "which would overwrite the values; inject it as a number to set it"
            )
        if name not in found:
            raise ValueError(
                f"{argument}[{name!r}]: the optimizer has no injected hyperparameter of that "
                f"name (wrap it with optax.inject_hyperparams); it has {sorted(available)}"
            )
    return new_state
