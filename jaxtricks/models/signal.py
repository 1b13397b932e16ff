"""Signal propagation: how the forward activations and the backward gradients scale, layer by layer.

The lesson's picture (L2): each layer multiplies the signal by ``W_l``, so depending on the
initialization the activations and the gradients shrink or grow geometrically with depth. For
every weight layer ``l`` (Dense or Conv, in call order) with input ``x_l`` and output
``z_l = W_l x_l + b_l`` (before any batch norm), :func:`signal_propagation` measures on one batch

    mean(x_l), std(x_l), mean(z_l), std(z_l)            (forward)
    std(∂L/∂z_l)                                        (backward)

over all entries (batch, spatial and feature axes together), where ``L`` is the batch's mean
loss. ``x_{l+1}`` is the activation of layer ``l``, so the input statistics are the activation
statistics of the layer before. With ``Var(W) = 1`` (``N(0, 1)``) and ``n`` inputs per unit,
``std(z_l)`` grows like ``sqrt(n / 2)^l`` through ReLUs; with He's ``Var(W) = 2 / n`` it stays
constant. The gradients with respect to the outputs are read by adding a zero tensor ``p_l`` to
each output, ``∂L/∂p_l = ∂L/∂z_l``, so one backward pass gives them all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtricks.models.probe import (
    LAYER_TYPES,
    check_apply_options,
    check_layer_types,
    layer_paths_and_shapes,
    mean_and_std,
    run_layers,
)

__all__ = ["LAYER_TYPES", "LayerSignal", "signal_propagation"]


class LayerSignal(NamedTuple):
    """What one weight layer saw and produced on a batch; every field shape=(), float32."""

    input_mean: jax.Array  # mean(x_l)
    input_std: jax.Array  # std(x_l)
    output_mean: jax.Array  # mean(z_l), before batch norm
    output_std: jax.Array  # std(z_l), before batch norm
    grad_std: jax.Array  # std(∂L/∂z_l) for the batch's mean loss L


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-(1/B) Σ_i log softmax(z_i)[y_i]``, the training loss of :mod:`jaxtricks.training`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.mean(losses)


def _names(paths: list[tuple[str, ...]]) -> list[str]:
    """``"/".join(path)``, with ``#k`` on the k-th repeated call of a shared module."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        name = "/".join(path)
        count = seen.get(name, 0)
        seen[name] = count + 1
        names.append(name if count == 0 else f"{name}#{count}")
    return names


@functools.partial(jax.jit, static_argnames=("model", "loss_fn", "train", "layer_types"))
def _signals(variables, images, labels, rngs, perturbations, *, model, loss_fn, train, layer_types):
    def loss(perturbations):
        logits, calls = run_layers(
            model,
            variables,
            images,
            train=train,
            rngs=rngs,
            layer_types=layer_types,
            perturbations=perturbations,
        )
        return loss_fn(logits, labels), [(call.inputs, call.outputs) for call in calls]

    grads, calls = jax.grad(loss, has_aux=True)(perturbations)
    return [
        LayerSignal(*mean_and_std(inputs), *mean_and_std(outputs), mean_and_std(grad)[1])
        for (inputs, outputs), grad in zip(calls, grads, strict=True)
    ]


def signal_propagation(
        model: nn.Module,
        variables: Any,
        batch: tuple[jax.Array, jax.Array],
        *,
        train: bool = False,
        rngs: dict[str, jax.Array] | None = None,
        loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        layer_types: tuple[type, ...] = LAYER_TYPES,
) -> dict[str, LayerSignal]:
    """Per-layer forward statistics and backward gradient spread of ``model`` on one batch.

    Math: for each weight layer ``l``, ``mean``/``std`` of its input ``x_l`` and its output
    ``z_l`` (before batch norm), and ``std(∂L/∂z_l)`` for the mean loss ``L`` of the batch; see
    the module docstring. One compiled forward and backward pass, cached per model.

    Args:
      model: a Flax Linen module applied as ``model.apply(variables, x, train=train)``, e.g.
        :class:`~jaxtricks.models.MLP`, :class:`~jaxtricks.models.CNN` or
        :class:`~jaxtricks.models.ResNet`.
      variables: its variables, e.g. from ``model.init``.
      batch: ``(images, labels)``: a floating batch with a leading batch axis and its labels.
      train: apply in training mode: batch norm normalizes with the batch's statistics (as a
        training step does), and dropout is on (pass ``rngs={"dropout": key}``). In evaluation
        mode, the default, batch norm uses its running averages.
      rngs: PRNG keys for the model's random layers, e.g. ``{"dropout": key}``.
      loss_fn: ``loss_fn(logits, labels) -> scalar``; the mean softmax cross-entropy with
        integer labels by default. A hashable function: it is a static argument of ``jit``.
      layer_types: the module classes whose calls are layers.

    Returns:
      A dict from layer name (the module path joined by ``/``, e.g. ``"ResidualBlock_0/Conv_1"``;
      ``#k`` marks the k-th repeated call of one module) to :class:`LayerSignal`, in call
      order.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxtricks.models import MLP
      >>> from jaxtricks.tricks.initializers import normal
      >>> x = jax.random.normal(jax.random.key(0), (256, 100))
      >>> labels = jnp.zeros(256, jnp.int32)
      >>> model = MLP(features=(100, 100, 100), kernel_init=normal(1.0))
      >>> variables = model.init(jax.random.key(1), x, train=False)
      >>> signals = signal_propagation(model, variables, (x, labels))
      >>> list(signals)
      ['Dense_0', 'Dense_1', 'Dense_2', 'head']
      >>> [round(float(s.output_std)) for s in signals.values()]  # about 10 · sqrt(100 / 2)^l
      [10, 68, 449, 2851]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(f"batch must be a pair (images, labels), got {type(batch).__name__}")
    images, labels = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    if images.ndim < 2 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            "batch: images must be a floating array of shape (N, ...), got shape "
            f"{images.shape} and dtype {images.dtype}"
        )
    if labels.shape[:1] != images.shape[:1]:
        raise ValueError(
            f"batch: labels must have {images.shape[0]} entries, one per image, got shape "
            f"{labels.shape}"
        )
    check_apply_options(train, rngs)
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be None or callable, got {loss_fn!r}")
    layer_types = check_layer_types(layer_types)
    paths, shapes = layer_paths_and_shapes(
        model, variables, images, train=train, rngs=rngs, layer_types=layer_types
    )
    signals = _signals(
        variables,
        images,
        labels,
        rngs,
        [jnp.zeros(shape.shape, shape.dtype) for shape in shapes],
        model=model,
        loss_fn=mean_cross_entropy if loss_fn is None else loss_fn,
        train=train,
        layer_types=layer_types,
    )
    return dict(zip(_names(paths), signals, strict=True))
