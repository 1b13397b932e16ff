"""The gradient-health record that :func:`~jaxtricks.training.fit.fit` logs after each epoch.

When the optimizer holds :func:`~jaxtricks.tricks.diagnostics.gradient_health` (first in its
chain) and/or :func:`~jaxtricks.tricks.diagnostics.update_health` (last), their states hold the
norms of the last step they saw: per module m, ‖g_m‖, r_m = ‖g_m‖ / ‖θ_m‖, the vanishing and
exploding flags, ‖u_m‖ and ρ_m = ‖u_m‖ / ‖θ_m‖. :func:`health_record` copies them to the host as
plain floats, lists and dicts, ready for JSON and for
:func:`~jaxtricks.cli.diagnostics_plot.plot_gradient_norms`. Read after an epoch, they describe
the epoch's last applied step (a skipped non-finite step leaves the optimizer state, and so
them, as the step before left them). Reading costs one transfer of a few floats per module.
"""

from typing import Any

import jax

from jaxtricks.tricks.diagnostics import GradientHealthState, UpdateHealthState

__all__ = ["health_record"]

_STATES = (GradientHealthState, UpdateHealthState)


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}


def health_record(opt_state: Any) -> dict[str, Any] | None:
    """The module-level health values in ``opt_state`` as Python values, or None without any.

    Args:
      opt_state: an optimizer state (any pytree) holding at most one
        :class:`~jaxtricks.tricks.diagnostics.GradientHealthState` and at most one
        :class:`~jaxtricks.tricks.diagnostics.UpdateHealthState`, unbatched (not an
        ensemble's).

    Returns:
      None when it holds neither; else a dict with, from the gradient state, ``grad_norm``,
      ``module_grad_norms``, ``module_param_norms``, ``module_grad_ratios`` (``{module:
      float}``), ``vanishing`` and ``exploding`` (the flagged modules, sorted), and from the
      update state ``update_norm``, ``module_update_norms`` and ``module_update_ratios``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxtricks.tricks.diagnostics import gradient_health
      >>> tx = optax.chain(gradient_health(vanish_threshold=1.0), optax.sgd(0.1))
      >>> params = {"a": {"w": jnp.ones(4)}, "b": {"w": jnp.ones(4)}}
      >>> grads = {"a": {"w": jnp.full(4, 0.25)}, "b": {"w": jnp.full(4, 2.0)}}
      >>> _, state = tx.update(grads, tx.init(params), params)
      >>> record = health_record(state)
      >>> record["module_grad_norms"], record["vanishing"]
      ({'a': 0.5, 'b': 4.0}, ['a'])
    """
    found = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, _STATES))
        if isinstance(node, _STATES)
    ]
    gradient = [node for node in found if isinstance(node, GradientHealthState)]
    update = [node for node in found if isinstance(node, UpdateHealthState)]
    if len(gradient) > 1 or len(update) > 1:
        raise ValueError(
            "opt_state must hold at most one gradient_health and one update_health state, found "
            f"{len(gradient)} and {len(update)}"
        )
    if not found:
        return None
    if any(jax.numpy.ndim(node[0]) for node in found):
        raise ValueError(
            "opt_state holds batched health states (an ensemble's?); read one member's with "
            "jaxtricks.training.ensemble.ensemble_member first"
        )
    record: dict[str, Any] = {}
    if gradient:
        state = jax.device_get(gradient[0])
        record["grad_norm"] = float(state.grad_norm)
        record["module_grad_norms"] = _floats(state.module_grad_norms)
        record["module_param_norms"] = _floats(state.module_param_norms)
        record["module_grad_ratios"] = _floats(state.module_grad_ratios)
        record["vanishing"] = sorted(name for name, flag in state.vanishing.items() if flag)
        record["exploding"] = sorted(name for name, flag in state.exploding.items() if flag)
    if update:
        state = jax.device_get(update[0])
        record["update_norm"] = float(state.update_norm)
        record["module_update_norms"] = _floats(state.module_update_norms)
        record["module_update_ratios"] = _floats(state.module_update_ratios)
    return record
