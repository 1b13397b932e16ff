"""Reading, and perturbing, what each weight layer of a Linen model computes in a forward pass.

``flax.linen.intercept_methods`` wraps every module method call; the interceptor here watches the
``__call__`` of the weight layers (Dense, DenseGeneral, Conv, ConvTranspose by default) and
records each call's input ``x_l`` and output ``z_l = W_l x_l + b_l`` in call order, which in a
feed-forward model is an order in which every layer comes after the layers it depends on. It
can add a tensor ``p_l`` to each output, ``z_l ↦ z_l + p_l``: with ``p_l = 0`` the model is
unchanged and ``∂L/∂p_l = ∂L/∂z_l``, the gradient with respect to the layer's output. Batch norm
after a weight layer is not part of ``z_l``: the recorded output is the pre-normalization one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_TYPES = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose)


class LayerCall(NamedTuple):
    """One call of a weight layer during a forward pass."""

    path: tuple[str, ...]  # the module's path, e.g. ("ResidualBlock_0", "Conv_1")
    inputs: jax.Array  # x_l, what the layer was given
    outputs: jax.Array  # z_l (+ p_l when perturbed), what it returned


def check_layer_types(layer_types: Any) -> tuple[type, ...]:
    """Raises ``ValueError`` unless ``layer_types`` is a non-empty tuple of Linen module classes."""
    if (
        not isinstance(layer_types, tuple)
        or not layer_types
        or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types)
    ):
        raise ValueError(
            f"layer_types must be a non-empty tuple of flax.linen.Module classes, "
            f"got {layer_types!r}"
        )
    return layer_types


def check_apply_options(train: Any, rngs: Any) -> None:
    """Raises ``ValueError`` unless ``train`` is a bool and ``rngs`` None or a dict of keys."""
    if not isinstance(train, bool):
        raise ValueError(f"train must be a bool, got {train!r}")
    if rngs is not None and not isinstance(rngs, dict):
        raise ValueError(f"rngs must be None or a dict of PRNG keys, got {type(rngs).__name__}")


def run_layers(
        model: nn.Module,
        variables: Any,
        x: jax.Array,
        *,
        train: bool,
        rngs: dict[str, jax.Array] | None,
        layer_types: tuple[type, ...],
        perturbations: Sequence[jax.Array] | None = None,
) -> tuple[jax.Array, list[LayerCall]]:
    """Applies ``model`` and returns ``(logits, calls)``, one :class:`LayerCall` per layer call.

    ``model.apply(variables, x, train=train, rngs=rngs)``, with ``mutable=["batch_stats"]`` in
    training so that batch norm uses the batch statistics (their new running averages are
    discarded). ``perturbations[l]`` is added to the ``l``-th call's output.
    """
    calls: list[LayerCall] = []

    def interceptor(next_fun, args, kwargs, context):
        outputs = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not isinstance(context.module, layer_types):
            return outputs
        if perturbations is not None:
            outputs = outputs + perturbations[len(calls)]
        inputs = args[0] if args else kwargs["inputs"]
        calls.append(LayerCall(tuple(context.module.path), inputs, outputs))
        return outputs

    options: dict[str, Any] = {} if rngs is None else {"rngs": rngs}
    with nn.intercept_methods(interceptor):
        if train:
            logits, _ = model.apply(
                variables, x, train=True, mutable=["batch_stats"], **options
            )
        else:
            logits = model.apply(variables, x, train=False, **options)
    return logits, calls


def layer_paths_and_shapes(
        model: nn.Module,
        variables: Any,
        x: jax.Array,
        *,
        train: bool,
        rngs: dict[str, jax.Array] | None,
        layer_types: tuple[type, ...],
) -> tuple[list[tuple[str, ...]], list[jax.ShapeDtypeStruct]]:
    """The path and output shape of every layer call, in call order, without computing them."""
    paths: list[tuple[str, ...]] = []

    def outputs(variables, x, rngs):
        _, calls = run_layers(
            model, variables, x, train=train, rngs=rngs, layer_types=layer_types
        )
        paths.extend(call.path for call in calls)
        return [call.outputs for call in calls]

    shapes = jax.eval_shape(outputs, variables, x, rngs)
    if not paths:
        names = ", ".join(t.__name__ for t in layer_types)
        raise ValueError(f"model: {type(model).__name__} calls no layer of the types {names}")
    return paths, shapes


def mean_and_std(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mean and (biased) standard deviation of all entries, in float32."""
    wide = x.astype(jnp.float32)
    return jnp.mean(wide), jnp.std(wide)
