"""Gradient-health diagnostics: norms of gradients, parameters and updates, recorded per layer.

The lesson's reason why deep networks are hard to train is that gradients **vanish** or
**explode** as they pass through the layers. These transforms make that visible during training.
For each leaf ``i`` of the gradient ``g``, of the parameters ``θ`` and of the final update ``u``
they record the Euclidean norms ``‖g_i‖``, ``‖θ_i‖`` and ``‖u_i‖``, and for each module ``m`` (a
group of leaves, e.g. a Flax layer's ``kernel`` and ``bias``)

    ‖g_m‖ = sqrt(Σ_{i ∈ m} ‖g_i‖²),    r_m = ‖g_m‖ / ‖θ_m‖,    ρ_m = ‖u_m‖ / ‖θ_m‖,

where ``r_m`` says how large the gradient is next to the weights it moves and ``ρ_m`` how far a
step moves them, relative to their size: the effective learning rate of the layer. A module
is flagged **vanishing** when ``‖g_m‖ < vanish_threshold`` and **exploding** when
``‖g_m‖ > explode_threshold`` or ``‖g_m‖`` is not finite. A ratio whose ``‖θ_m‖`` is 0 is ``+inf``
(or 0 when the numerator is 0 too), never NaN.

A leaf's module is the path to it minus its last key, e.g. ``Dense_0`` for
``params["Dense_0"]["kernel"]`` and ``ResidualBlock_0/Conv_1`` in a ResNet; ``depth=k`` keeps
only the first ``k`` keys of that, e.g. ``ResidualBlock_0`` for the whole block. A leaf
directly at the top of the tree is its own module, and a lone array is the module ``""``.

:func:`gradient_health` goes first in an ``optax.chain`` (it sees the raw gradient),
:func:`update_health` last (it sees the update that is applied); both pass their input through
unchanged and only record, so adding them does not change training. They cost one reduction
per leaf, under ``jit``. :func:`get_health` reads a recorded field out of any optimizer state.
Norms are summed in at least float32 and stored as float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.tricks.checks import check_positive
from jaxtricks.tricks.tree import accumulation_dtype, check_same_structure, squared_norm

__all__ = [
    "HEALTH_FIELDS",
    "GradientHealthState",
    "UpdateHealthState",
    "get_health",
    "gradient_health",
    "update_health",
]


class GradientHealthState(NamedTuple):
    """State of :func:`gradient_health`: what the last gradient looked like."""

    grad_norm: jax.Array  # shape=(), float32, ‖g‖ over all leaves
    grad_norms: Any  # pytree like params, shape=() float32 leaves: ‖g_i‖
    param_norms: Any  # pytree like params, shape=() float32 leaves: ‖θ_i‖
    module_grad_norms: dict[str, jax.Array]  # module -> shape=(), float32: ‖g_m‖
    module_param_norms: dict[str, jax.Array]  # module -> shape=(), float32: ‖θ_m‖
    module_grad_ratios: dict[str, jax.Array]  # module -> shape=(), float32: ‖g_m‖ / ‖θ_m‖
    vanishing: dict[str, jax.Array]  # module -> shape=(), bool: ‖g_m‖ < vanish_threshold
    exploding: dict[str, jax.Array]  # module -> shape=(), bool: ‖g_m‖ > explode_threshold


class UpdateHealthState(NamedTuple):
    """State of :func:`update_health`: what the last update looked like."""

    update_norm: jax.Array  # shape=(), float32, ‖u‖ over all leaves
    update_norms: Any  # pytree like params, shape=() float32 leaves: ‖u_i‖
    module_update_norms: dict[str, jax.Array]  # module -> shape=(), float32: ‖u_m‖
    module_update_ratios: dict[str, jax.Array]  # module -> shape=(), float32: ‖u_m‖ / ‖θ_m‖


_STATES = (GradientHealthState, UpdateHealthState)
HEALTH_FIELDS = tuple(sorted({field for state in _STATES for field in state._fields}))


def _check_threshold(name: str, value: Any) -> float:
    """A positive number as a Python float, so comparing it with a float32 norm keeps float32."""
    if callable(value):
        raise ValueError(f"{name} must be a number, not a schedule, got {value!r}")
    return float(check_positive(name, value))


def _check_depth(depth: Any) -> int | None:
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be None or an int >= 1, got {depth!r}")
    return depth


def _key_name(key: Any) -> str:
    """One path entry as text: a dict key, an attribute name or a sequence index."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _module(path: tuple, depth: int | None) -> str:
    """The module a leaf belongs to: its path minus the last key, cut to ``depth`` keys."""
    names = [_key_name(key) for key in path]
    owner = names[:-1] if len(names) > 1 else names
    return "/".join(owner if depth is None else owner[:depth])


def _squared_norms(tree: Any) -> list[jax.Array]:
    """``‖x_i‖²`` of every leaf, summed in float32 (float64 for float64 leaves)."""
    squares = []
    for leaf in jax.tree.leaves(tree):
        wide = accumulation_dtype(leaf.dtype)
        squares.append(squared_norm(leaf, wide).astype(jnp.float32))
    return squares


def _modules(tree: Any, depth: int | None) -> list[str]:
    return [_module(path, depth) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _by_module(names: list[str], squares: list[jax.Array]) -> dict[str, jax.Array]:
    """``sqrt(Σ ‖x_i‖²)`` over the leaves of each module."""
    totals: dict[str, jax.Array] = {}
    for name, square in zip(names, squares, strict=True):
        totals[name] = totals[name] + square if name in totals else square
    return {name: jnp.sqrt(total) for name, total in totals.items()}


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` with 0 / 0 = 0, so a zero bias gives no NaN."""
    return jnp.where(numerator == 0, jnp.zeros_like(numerator), numerator / denominator)


def _leaf_norms(tree: Any, squares: list[jax.Array]) -> Any:
    return jax.tree.unflatten(jax.tree.structure(tree), [jnp.sqrt(s) for s in squares])


def _scalar_zeros(tree: Any) -> Any:
    return jax.tree.map(lambda _: jnp.zeros((), jnp.float32), tree)


def _module_zeros(tree: Any, depth: int | None, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    return {name: jnp.zeros((), dtype) for name in _modules(tree, depth)}


def _require_params(transform: str, params: Any) -> None:
    if params is None:
        raise ValueError(
            f"{transform} needs params to compute parameter norms: call "
            "update(updates, state, params), as optax.chain does when given params"
        )


def gradient_health(
        *,
        vanish_threshold: float = 1e-7,
        explode_threshold: float = 1e3,
        depth: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Records per-leaf and per-module gradient and parameter norms; passes updates unchanged.

    Math: ``‖g_i‖``, ``‖θ_i‖`` per leaf; ``‖g_m‖ = sqrt(Σ_{i∈m} ‖g_i‖²)``, ``‖θ_m‖`` likewise and
    ``r_m = ‖g_m‖ / ‖θ_m‖`` per module; ``vanishing_m = ‖g_m‖ < vanish_threshold``,
    ``exploding_m = not ‖g_m‖ <= explode_threshold`` (so a NaN or Inf norm explodes). Put it
    first in a chain so that ``g`` is the raw gradient. ``update`` needs ``params``.

    Args:
      vanish_threshold: a module whose gradient norm is below this is flagged, > 0.
      explode_threshold: a module whose gradient norm is above this is flagged, >
        ``vanish_threshold``.
      depth: how many leading path keys name a module; None keeps the whole path but the last
        key (each Flax layer apart). See the module docstring.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`GradientHealthState` holding the values of the last ``update``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> tx = optax.chain(gradient_health(), optax.sgd(0.1))
      >>> grads = {"Dense_0": {"kernel": jnp.full((2, 2), 1.5), "bias": jnp.array([0.0, 4.0])}}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> float(get_health(state, "module_grad_norms")["Dense_0"])  # sqrt(4 · 1.5² + 4²)
      5.0
      >>> float(get_health(state, "module_grad_ratios")["Dense_0"])  # 5 / ‖ones((2, 2))‖
      2.5
    """
    vanish_threshold = _check_threshold("vanish_threshold", vanish_threshold)
    explode_threshold = _check_threshold("explode_threshold", explode_threshold)
    if not explode_threshold > vanish_threshold:
        raise ValueError(
            f"explode_threshold must be greater than vanish_threshold={vanish_threshold!r}, "
            f"got {explode_threshold!r}"
        )
    depth = _check_depth(depth)

    def init_fn(params):
        zeros = _module_zeros(params, depth)
        flags = _module_zeros(params, depth, jnp.bool_)
        return GradientHealthState(
            grad_norm=jnp.zeros((), jnp.float32),
            grad_norms=_scalar_zeros(params),
            param_norms=_scalar_zeros(params),
            module_grad_norms=zeros,
            module_param_norms=dict(zeros),
            module_grad_ratios=dict(zeros),
            vanishing=flags,
            exploding=dict(flags),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del state, extra_args
        _require_params("gradient_health", params)
        check_same_structure("updates", updates, "params", params)
        names = _modules(updates, depth)
        grad_squares = _squared_norms(updates)
        param_squares = _squared_norms(params)
        grad_modules = _by_module(names, grad_squares)
        param_modules = _by_module(names, param_squares)
        total = sum(grad_squares, jnp.zeros((), jnp.float32))
        new_state = GradientHealthState(
            grad_norm=jnp.sqrt(total),
            grad_norms=_leaf_norms(updates, grad_squares),
            param_norms=_leaf_norms(params, param_squares),
            module_grad_norms=grad_modules,
            module_param_norms=param_modules,
            module_grad_ratios={
                name: _ratio(norm, param_modules[name]) for name, norm in grad_modules.items()
            },
            vanishing={name: norm < vanish_threshold for name, norm in grad_modules.items()},
            exploding={
                name: jnp.logical_not(norm <= explode_threshold)
                for name, norm in grad_modules.items()
            },
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def update_health(*, depth: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Records per-leaf and per-module norms of the updates; passes them unchanged.

    Math: ``‖u_i‖`` per leaf, ``‖u_m‖ = sqrt(Σ_{i∈m} ‖u_i‖²)`` and ``ρ_m = ‖u_m‖ / ‖θ_m‖`` per
    module. Put it last in a chain, so that ``u`` is the step ``θ' - θ`` that is applied.
    ``update`` needs ``params``.

    Args:
      depth: how many leading path keys name a module; see :func:`gradient_health`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an
      :class:`UpdateHealthState` holding the values of the last ``update``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> tx = optax.chain(optax.sgd(0.1), update_health())
      >>> updates, state = tx.update({"w": jnp.array([0.0, 10.0])}, tx.init(params), params)
      >>> float(get_health(state, "update_norm"))  # ‖-0.1 · (0, 10)‖
      1.0
      >>> round(float(get_health(state, "module_update_ratios")["w"]), 6)  # 1 / ‖(3, 4)‖
      0.2
    """
    depth = _check_depth(depth)

    def init_fn(params):
        zeros = _module_zeros(params, depth)
        return UpdateHealthState(
            update_norm=jnp.zeros((), jnp.float32),
            update_norms=_scalar_zeros(params),
            module_update_norms=zeros,
            module_update_ratios=dict(zeros),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del state, extra_args
        _require_params("update_health", params)
        check_same_structure("updates", updates, "params", params)
        names = _modules(updates, depth)
        update_squares = _squared_norms(updates)
        update_modules = _by_module(names, update_squares)
        param_modules = _by_module(names, _squared_norms(params))
        new_state = UpdateHealthState(
            update_norm=jnp.sqrt(sum(update_squares, jnp.zeros((), jnp.float32))),
            update_norms=_leaf_norms(updates, update_squares),
            module_update_norms=update_modules,
            module_update_ratios={
                name: _ratio(norm, param_modules[name]) for name, norm in update_modules.items()
            },
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_health(opt_state: Any, field: str) -> Any:
    """The field ``field`` of the one health state inside an optimizer state.

    Searches ``opt_state`` (a chain's tuple, an ``inject_hyperparams`` or ``skip_nonfinite``
    wrapper, a training state: any pytree) for :class:`GradientHealthState` and
    :class:`UpdateHealthState` values and returns the field of the one that has it. A state
    vmapped over an ensemble gives values with the ensemble's leading axis.

    Args:
      opt_state: a pytree holding the state of :func:`gradient_health` and/or
        :func:`update_health`.
      field: one of ``HEALTH_FIELDS``, e.g. ``"module_grad_norms"`` or ``"module_update_ratios"``.

    Returns:
      The field's value: an array, a pytree like the parameters or a dict keyed by module.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(gradient_health(), optax.sgd(0.1))
      >>> state = tx.init({"w": jnp.ones(3)})
      >>> get_health(state, "module_grad_norms")
      {'w': Array(0., dtype=float32)}
    """
    if field not in HEALTH_FIELDS:
        raise ValueError(f"field must be one of {HEALTH_FIELDS}, got {field!r}")
    found = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, _STATES))
        if isinstance(node, _STATES) and field in node._fields
    ]
    if len(found) != 1:
        owner = next(state.__name__ for state in _STATES if field in state._fields)
        raise ValueError(
            f"opt_state must hold exactly one {owner} to read {field!r} from, found {len(found)}"
        )
    return getattr(found[0], field)
