"""One functional view of a Flax model, Linen or NNX, for training and evaluation.

Every piece of the training layer calls a model through two pure functions,

    init(key, x)                                   -> (params, model_state)
    apply(params, model_state, x, train, key)      -> (outputs, model_state')

where ``params`` are what the optimizer trains and ``model_state`` everything else the model
keeps (batch-norm statistics, NNX's RNG counters). :func:`functional_model` builds them:

- a ``flax.linen.Module``: ``params = variables["params"]`` and ``model_state`` the other
  collections; ``apply`` is ``module.apply(variables, x, <flag>, rngs={"dropout": key},
  mutable=<those collections>)`` in training and ``module.apply(variables, x, <flag>)`` in
  evaluation;
- a ``flax.nnx.Module``: ``params`` its ``nnx.Param`` state and ``model_state`` the rest;
  ``apply`` merges them into the module in ``train()`` or ``eval()`` mode, calls it and splits
  the state again. Its randomness comes from its own ``nnx.Rngs``, kept in ``model_state``, so
  ``key`` is not used and the initial parameters are the module's own.

The flag ``<flag>`` is the one ``__call__`` takes: ``train=train``, ``training=train`` or
``deterministic=not train``; a ``__call__`` with none of them is called without one.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

__all__ = ["TRAIN_FLAGS", "FunctionalModel", "functional_model"]

# The keyword a __call__ may take to switch training on, and the value it gets in training.
TRAIN_FLAGS = {"train": True, "training": True, "deterministic": False}


def _train_flag(call: Callable[..., Any]) -> str | None:
    try:
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return None
    for name in TRAIN_FLAGS:
        if name in parameters:
            return name
    return None


def _flag_kwargs(flag: str | None, train: bool) -> dict[str, bool]:
    if flag is None:
        return {}
    return {flag: train if TRAIN_FLAGS[flag] else not train}


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionalModel:
    """A model's ``init`` and ``apply`` as pure functions; see the module docstring.

    Equal models (equal Linen modules, or NNX modules with equal graph definitions) give equal
    ``FunctionalModel`` objects, so compiled steps built for one are reused for the other.
    """

    kind: str  # "linen" or "nnx"
    train_flag: str | None  # the keyword passed to __call__, or None
    module: Any  # the Linen module, or the NNX module given (left in eval() mode)
    key: Any  # what equality and hashing compare
    _graphdefs: Any = None  # NNX: (train graphdef, eval graphdef)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionalModel) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def flags(self, train: bool) -> dict[str, bool]:
        """The keyword arguments that switch ``__call__`` to training or evaluation."""
        return _flag_kwargs(self.train_flag, train)

    def graphdef(self, train: bool) -> Any:
        """NNX only: the graph definition of the module in ``train()`` or ``eval()`` mode."""
        if self.kind != "nnx":
            raise ValueError("graphdef: only an NNX model has one")
        return self._graphdefs[0 if train else 1]

    def call_description(self, train: bool) -> str:
        """How ``apply`` calls the model, for error messages."""
        flag = "".join(f", {k}={v}" for k, v in _flag_kwargs(self.train_flag, train).items())
        if self.kind == "linen":
            extra = ', rngs={"dropout": key}, mutable=[its non-param collections]' if train else ""
            return f"model.apply(variables, x{flag}{extra})"
        mode = "train()" if train else "eval()"
        return f"model(x{flag}) on the module in {mode} mode"

    def init(self, key: jax.Array, x: Any) -> tuple[Any, Any]:
        """``(params, model_state)``: Linen's ``init`` in evaluation mode, NNX's own state."""
        if self.kind == "nnx":
            del key, x
            # Flax types the states after the first two filters' as variadic; "..." makes three.
            _, params, model_state = nnx.split(self.module, nnx.Param, ...)  # type: ignore[misc]
            return params, model_state
        # The key itself for the parameters, as Flax's own ``model.init(key, x)`` does.
        variables = self.module.init(
            {"params": key, "dropout": jax.random.fold_in(key, 1)},
            x,
            **_flag_kwargs(self.train_flag, False),
        )
        variables = dict(variables)
        params = variables.pop("params", {})
        return params, variables

    def apply(
            self, params: Any, model_state: Any, x: Any, *, train: bool, key: jax.Array | None
    ) -> tuple[Any, Any]:
        """``(outputs, model_state')``; in evaluation ``model_state`` comes back unchanged."""
        flags = _flag_kwargs(self.train_flag, train)
        if self.kind == "nnx":
            graphdef = self._graphdefs[0 if train else 1]
            module = nnx.merge(graphdef, params, model_state, copy=True)
            outputs = module(x, **flags)
            if not train:
                return outputs, model_state
            # Flax types the states after the first two filters' as variadic; "..." makes three.
            _, _, new_state = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]
            return outputs, new_state
        variables = {"params": params, **model_state}
        if not train:
            return self.module.apply(variables, x, **flags), model_state
        outputs, updated = self.module.apply(
            variables, x, **flags, rngs={"dropout": key}, mutable=list(model_state)
        )
        return outputs, {**model_state, **updated}


def functional_model(model: Any) -> FunctionalModel:
    """The :class:`FunctionalModel` of a Flax Linen or NNX module (returned as is if it is one).

    An NNX module is split once, in ``train()`` and in ``eval()`` mode, and left in ``eval()``
    mode; its parameters are read when ``init`` is called.

    Args:
        model: a ``flax.linen.Module``, a ``flax.nnx.Module`` or a :class:`FunctionalModel`.

    Returns:
        A :class:`FunctionalModel`.

    Raises:
        ValueError: ``model`` is none of those.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, *, deterministic):
        ...         return nn.Dropout(0.5, deterministic=deterministic)(nn.Dense(2)(x))
        >>> fm = functional_model(Net())
        >>> fm.kind, fm.train_flag
        ('linen', 'deterministic')
        >>> params, model_state = fm.init(jax.random.key(0), jnp.ones((1, 3)))
        >>> outputs, _ = fm.apply(params, model_state, jnp.ones((4, 3)), train=False, key=None)
        >>> outputs.shape
        (4, 2)
    """
    if isinstance(model, FunctionalModel):
        return model
    if isinstance(model, nn.Module):
        flag = _train_flag(type(model).__call__)
        return FunctionalModel("linen", flag, model, ("linen", model, flag))
    if isinstance(model, nnx.Module):
        flag = _train_flag(type(model).__call__)
        model.train()
        train_graphdef = nnx.split(model, nnx.Param, ...)[0]
        model.eval()
        graphdefs = (train_graphdef, nnx.split(model, nnx.Param, ...)[0])
        return FunctionalModel("nnx", flag, model, ("nnx", graphdefs, flag), graphdefs)
    raise ValueError(
        "model must be a flax.linen.Module or a flax.nnx.Module, got "
        f"{type(model).__module__}.{type(model).__name__}"
    )
