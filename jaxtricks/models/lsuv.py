"""Layer-sequential unit-variance (LSUV) initialization (Mishkin & Matas, 2016).

A data-driven initialization for Linen models, in two stages:

1. every weight layer's kernel (Dense and Conv by default) is replaced by a random orthogonal
   one, ``WᵀW = I`` for the kernel seen as a ``(fan_in, out)`` matrix (see
   :func:`jaxtricks.tricks.initializers.orthogonal`);
2. then, layer by layer in the order of the forward pass, the layer's output ``z_l = W_l x_l + b_l``
   is computed on a batch and its kernel is rescaled,

       W_l ← W_l / sqrt(Var(z_l)),

   until ``|Var(z_l) - 1| < tolerance`` or ``max_iterations`` rescalings were made. ``Var`` is
   taken over all entries of ``z_l`` (batch, spatial and feature axes together).

Without a bias the first rescaling gives ``Var(z_l) = 1`` exactly; a bias, or layers whose input
depends on the kernel being rescaled, make it an iteration. The layers earlier in the forward
pass are already done, so each layer sees the inputs it will see at the start of training. With
batch norm the variance measured is that of the weight layer's own output, before the
normalization. Biases and every other variable (batch norm's scale, shift and statistics) are
left as they were.
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtricks.models.probe import (
    LAYER_TYPES,
    check_apply_options,
    check_layer_types,
    layer_paths_and_shapes,
    run_layers,
)
from jaxtricks.tricks.checks import check_range
from jaxtricks.tricks.initializers import orthogonal

__all__ = ["lsuv"]


@functools.partial(jax.jit, static_argnames=("model", "train", "layer_types"))
def _output_variances(variables, x, rngs, *, model, train, layer_types):
    _, calls = run_layers(model, variables, x, train=train, rngs=rngs, layer_types=layer_types)
    return jnp.stack([jnp.var(call.outputs.astype(jnp.float32)) for call in calls])


def _check_key(key: Any) -> jax.Array:
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed and key.shape == ()) and not raw:
        raise ValueError(f"key must be a single PRNG key, e.g. jax.random.key(0), got {key!r}")
    return key


def _check_max_iterations(value: Any) -> int:
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"max_iterations must be an int >= 1, got {value!r}")
    return number


def _kernel(params: Mapping, path: tuple[str, ...]) -> jax.Array:
    node = params
    try:
        for name in path:
            node = node[name]
        return node["kernel"]
    except (KeyError, TypeError):
        raise ValueError(
            f"variables: no params[{']['.join(map(repr, path))}]['kernel'] for the layer "
            f"{'/'.join(path)}; LSUV rescales the kernel of each layer at its module path"
        ) from None


def _with_kernel(params: Mapping, path: tuple[str, ...], kernel: jax.Array) -> dict:
    """A copy of ``params`` with the kernel at ``path`` replaced; the rest is shared."""
    if not path:
        return {**params, "kernel": kernel}
    return {**params, path[0]: _with_kernel(params[path[0]], path[1:], kernel)}


def lsuv(
        model: nn.Module,
        variables: Any,
        x: jax.Array,
        *,
        key: jax.Array,
        tolerance: float = 0.1,
        max_iterations: int = 10,
        train: bool = False,
        rngs: dict[str, jax.Array] | None = None,
        layer_types: tuple[type, ...] = LAYER_TYPES,
) -> Any:
    """LSUV-initializes the kernels of ``model``'s weight layers from a data batch ``x``.

    Math: ``W_l ← Q_l`` (random orthogonal), then for each layer in forward order
    ``W_l ← W_l / sqrt(Var(z_l))`` until ``|Var(z_l) - 1| < tolerance``; see the module
    docstring. A module called more than once is rescaled for its first call. A layer still
    outside the tolerance after ``max_iterations`` rescalings is left so, with a warning.

    Args:
      model: a Flax Linen module applied as ``model.apply(variables, x, train=train)``, e.g.
        :class:`~jaxtricks.models.MLP` or :class:`~jaxtricks.models.CNN`.
      variables: its variables, e.g. from ``model.init``; a kernel lives at
        ``variables["params"][*module_path]["kernel"]``.
      x: a floating batch with a leading batch axis, e.g. a few hundred training images.
      key: a PRNG key for the orthogonal kernels.
      tolerance: the accepted ``|Var(z_l) - 1|``, in (0, 1).
      max_iterations: the most rescalings of one layer, >= 1.
      train: apply in training mode: batch norm uses the batch's statistics and dropout is on
        (pass ``rngs``). Evaluation mode, the default, uses batch norm's running averages.
      rngs: PRNG keys for the model's random layers in training mode, e.g.
        ``{"dropout": key}``.
      layer_types: the module classes whose kernels are initialized.

    Returns:
      New variables of the same structure (a ``dict``, or a ``FrozenDict`` when given one): the
      layers' kernels replaced, all else unchanged.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxtricks.models import MLP
      >>> x = jax.random.uniform(jax.random.key(0), (256, 28, 28, 1))
      >>> model = MLP(features=(64, 32))
      >>> variables = lsuv(model, model.init(jax.random.key(1), x, train=False), x,
      ...                  key=jax.random.key(2))
      >>> z = x.reshape(256, -1) @ variables["params"]["Dense_0"]["kernel"]
      >>> bool(abs(z.var() - 1) < 0.1)
      True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    if not isinstance(variables, Mapping) or not isinstance(variables.get("params"), Mapping):
        raise ValueError(
            "variables must be a mapping with a 'params' collection, e.g. from model.init, "
            f"got {type(variables).__name__}"
        )
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be a floating batch of shape (N, ...), got shape {x.shape} and dtype "
            f"{x.dtype}"
        )
    key = _check_key(key)
    tolerance = float(check_range("tolerance", tolerance, 0.0, 1.0, low_open=True, high_open=True))
    max_iterations = _check_max_iterations(max_iterations)
    check_apply_options(train, rngs)
    layer_types = check_layer_types(layer_types)

    paths, _ = layer_paths_and_shapes(
        model, variables, x, train=train, rngs=rngs, layer_types=layer_types
    )
    # Each module's first call, as its index among all calls; in call order.
    first_calls: dict[tuple[str, ...], int] = {}
    for index, path in enumerate(paths):
        first_calls.setdefault(path, index)
    params = variables["params"]
    for number, path in enumerate(first_calls):
        kernel = _kernel(params, path)
        start = orthogonal()(jax.random.fold_in(key, number), kernel.shape, kernel.dtype)
        params = _with_kernel(params, path, start)

    def measure(params, index):
        new = {**variables, "params": params}
        variances = _output_variances(
            new, x, rngs, model=model, train=train, layer_types=layer_types
        )
        return float(variances[index])

    for path, index in first_calls.items():
        name = "/".join(path)
        for rescalings in range(max_iterations + 1):
            variance = measure(params, index)
            if abs(variance - 1.0) < tolerance:
                break
            if rescalings == max_iterations:
                warnings.warn(
                    f"LSUV: the output variance of layer {name} is {variance:.4g} after "
                    f"{max_iterations} rescalings, outside 1 ± {tolerance}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            if not (math.isfinite(variance) and variance > 0.0):
                raise ValueError(
                    f"x: the output of layer {name} has variance {variance} on this batch, so "
                    "its kernel cannot be rescaled to unit variance; use a batch whose inputs "
                    "vary"
                )
            kernel = _kernel(params, path)
            scale = jnp.asarray(1.0 / math.sqrt(variance), kernel.dtype)
            params = _with_kernel(params, path, kernel * scale)

    result = {**variables, "params": params}
    if isinstance(variables, flax.core.FrozenDict):
        return flax.core.freeze(result)
    return result
