"""Fresh batch-norm statistics for averaged weights, for Linen and NNX models.

Batch norm's running statistics belong to the weights that produced them: after averaging the
weights (:mod:`jaxtricks.tricks.averaging`) the stored means and variances describe none of
the networks that were averaged, and evaluating with them can be far off. The fix (Izmailov et
al., 2018) is one forward pass over data in training mode to measure them again.

Here each batch-norm layer gets the exact statistics of its inputs over all the data passed,
whatever its momentum. For every batch-norm call on a batch X_b (n_b values per feature after
reducing every axis but the feature axis) the batch's count, mean and sum of squared
deviations

    n_b,   μ_b = (1/n_b) Σ x,   M_b = Σ (x − μ_b)²

are recorded and merged across batches with Chan et al.'s pairwise update,

    n = n_a + n_b,   δ = μ_b − μ_a,   μ = μ_a + δ n_b / n,   M = M_a + M_b + δ² n_a n_b / n,

so that mean = μ and var = M / n (the biased variance, as batch norm uses) equal the two-pass
statistics of the whole data set, without the cancellation of E[x²] − E[x]².

A layer's inputs depend on the layers before it, which normalize each batch by that batch's
own statistics (training mode). So the first batch-norm layer gets the data set's exact
statistics for any ``batch_size``, and every layer does when one batch holds all the data;
with smaller batches the later layers see the inputs training would show them. Dropout is
turned off during the pass: evaluation has no dropout, and statistics measured with it would
carry its variance shift into evaluation (Li et al., 2019).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from jaxtricks.training.caching import jit_with
from jaxtricks.training.model import FunctionalModel, functional_model

__all__ = ["recompute_batch_stats", "recompute_model_state"]

# The collection the recorded moments are sown into; private to this module.
_MOMENTS = "recomputed_batch_moments"


def _feature_axes(ndim: int, axis: Any) -> tuple[int, ...]:
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def _moments(x: jax.Array, axis: Any, mask: jax.Array | None) -> tuple[jax.Array, ...]:
    """(n, μ, M) of ``x`` per feature, in at least float32, reducing every non-feature axis."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    features = _feature_axes(x.ndim, axis)
    reduced = tuple(i for i in range(x.ndim) if i not in features)
    if mask is None:
        count = jnp.full(
            [x.shape[i] for i in features], np.prod([x.shape[i] for i in reduced]), x.dtype
        )
        mask = jnp.ones(x.shape, jnp.bool_)
    else:
        mask = jnp.broadcast_to(jnp.asarray(mask, jnp.bool_), x.shape)
        count = jnp.sum(mask, axis=reduced).astype(x.dtype)
    # A feature that a mask hides in the whole batch has n = 0 and merges as nothing.
    mean = jnp.sum(jnp.where(mask, x, 0), axis=reduced) / jnp.maximum(count, 1)
    centered = x - jnp.expand_dims(mean, reduced)
    sum_squares = jnp.sum(jnp.where(mask, jnp.square(centered), 0), axis=reduced)
    return count, mean, sum_squares


def _record_batch_moments(next_fun, args, kwargs, context):
    """A Linen interceptor: records each batch-norm call's moments and turns dropout off."""
    module = context.module
    if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    if isinstance(module, nn.Dropout):
        return args[0]  # what inverted dropout computes in evaluation
    if isinstance(module, nn.BatchNorm):
        passed = args[1] if len(args) > 1 else kwargs.get("use_running_average")
        if not nn.merge_param("use_running_average", module.use_running_average, passed):
            module.sow(_MOMENTS, "moments", _moments(args[0], module.axis, kwargs.get("mask")))
    return next_fun(*args, **kwargs)


def _merge(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Chan et al.'s merge of two (n, μ, M) summaries; an empty one (n = 0) is neutral."""
    n_a, mean_a, m_a = a
    n_b, mean_b, m_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    share = jnp.where(n > 0, n_b / jnp.maximum(n, 1), 0)
    return n, mean_a + delta * share, m_a + m_b + jnp.square(delta) * n_a * share


def _batch_moments(fm, variables, images):
    """(n, μ, M) of one batch for every batch-norm layer, as a flat dict by layer path."""
    with nn.intercept_methods(_record_batch_moments):
        _, collections = fm.module.apply(
            variables, images, **fm.flags(True), mutable=["batch_stats", _MOMENTS]
        )
    moments = {}
    # A layer called more than once per forward pass records one summary per call.
    for path, calls in traverse_util.flatten_dict(collections.get(_MOMENTS, {})).items():
        moments[path[:-1]] = functools.reduce(_merge, calls)
    return moments


def _accumulate(fm, variables, images, totals):
    """``totals`` merged with the moments of the batch ``images``."""
    batch = _batch_moments(fm, variables, images)
    return {layer: _merge(totals[layer], batch[layer]) for layer in totals}


def recompute_batch_stats(
        model: nn.Module,
        params: Any,
        images: Any,
        *,
        batch_size: int = 256,
        batch_stats_template: Any,
) -> Any:
    """The batch-norm statistics of ``params`` measured again over all of ``images``.

    Math: for every batch-norm layer, ``mean = (1/n) Σ x`` and ``var = (1/n) Σ (x − mean)²``
    over all n values of its input (every axis but the feature axis, every batch), merged
    across batches with Chan et al.'s update (see the module docstring).

    Args:
        model: a Flax Linen module, called in training mode as
            :func:`~jaxtricks.training.model.functional_model` says (with
            ``mutable=["batch_stats"]``); its ``nn.BatchNorm`` layers are measured, its
            ``nn.Dropout`` layers are turned off. Cross-device ``axis_name`` reductions are
            not applied: call it under ``jit``, not inside ``pmap`` or ``shard_map``.
        params: the parameters to measure (typically averaged ones).
        images: float array ``(N, ...)``, typically the training images.
        batch_size: examples per forward pass; ``N`` or more makes every layer exact.
        batch_stats_template: the model's ``batch_stats`` collection (e.g. the stale one):
            its structure and dtypes are kept, and layers that never normalize by batch
            statistics keep its values. ``{}`` (a model without batch norm) is returned as is.

    Returns:
        A ``batch_stats`` pytree like ``batch_stats_template`` with every measured layer's
        ``mean`` and ``var`` replaced.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.BatchNorm(use_running_average=not train)(nn.Dense(2)(x))
        >>> x = jnp.arange(12.0).reshape(6, 2)
        >>> variables = Net().init(jax.random.key(0), x, train=False)
        >>> stats = recompute_batch_stats(Net(), variables["params"], x, batch_size=4,
        ...                               batch_stats_template=variables["batch_stats"])
        >>> z = nn.Dense(2).apply({"params": variables["params"]["Dense_0"]}, x)
        >>> bool(jnp.allclose(stats["BatchNorm_0"]["mean"], z.mean(0), rtol=1e-5))
        True
        >>> bool(jnp.allclose(stats["BatchNorm_0"]["var"], z.var(0), rtol=1e-4))
        True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    fm = functional_model(model)
    batch_size = _check_batch_size(batch_size)
    if not batch_stats_template:
        return batch_stats_template
    images = jnp.asarray(images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, ...) with N >= 1, got {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point, got dtype {images.dtype}")
    variables = {"params": params, "batch_stats": batch_stats_template}
    shapes = jax.eval_shape(functools.partial(_batch_moments, fm), variables, images[:batch_size])
    totals = jax.tree.map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
    accumulate = jit_with(_accumulate, fm)
    for start in range(0, images.shape[0], batch_size):
        totals = accumulate(variables, images[start : start + batch_size], totals)
    stats = traverse_util.flatten_dict(batch_stats_template)
    for layer, (count, mean, sum_squares) in totals.items():
        for name, value in (("mean", mean), ("var", sum_squares / count)):
            if (*layer, name) not in stats:
                raise ValueError(
                    f"batch_stats_template has no {'/'.join((*layer, name))} for the model's "
                    "batch-norm layer"
                )
            stats[(*layer, name)] = value.astype(stats[(*layer, name)].dtype)
    return traverse_util.unflatten_dict(stats)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


def _nnx_batch_stats(graphdef, params, model_state, images):
    """An NNX module's batch-norm statistics of one batch: with momentum 0 the running
    averages become the batch's own mean and (biased) variance."""
    module = nnx.merge(graphdef, params, model_state, copy=True)
    module(images)
    return nnx.state(module, nnx.BatchStat)


def _recompute_nnx(fm: FunctionalModel, params, model_state, images, batch_size):
    module = nnx.merge(fm.graphdef(True), params, model_state, copy=True)
    for _, submodule in nnx.iter_modules(module):
        if isinstance(submodule, nnx.BatchNorm):
            submodule.momentum = 0.0
        elif isinstance(submodule, nnx.Dropout):
            submodule.deterministic = True
    # Flax types the states after the first two filters' as variadic; "..." makes three.
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]
    totals: dict[tuple[Any, ...], tuple[jax.Array, ...]] | None = None
    batch_stats = jit_with(_nnx_batch_stats, graphdef)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        stats = nnx.to_flat_state(batch_stats(params, rest, batch))
        rows = jnp.asarray(batch.shape[0], jnp.float32)
        moments: dict[tuple[Any, ...], dict[Any, jax.Array]] = {}
        for path, variable in stats:
            layer, name = path[:-1], path[-1]
            moments.setdefault(layer, {})[name] = variable[...]
        summary: dict[tuple[Any, ...], tuple[jax.Array, ...]] = {
            layer: (rows, m["mean"], m["var"] * rows) for layer, m in moments.items()
        }
        totals = summary if totals is None else {
            layer: _merge(totals[layer], summary[layer]) for layer in totals
        }
    updates = []
    for layer, (count, mean, sum_squares) in (totals or {}).items():
        updates += [((*layer, "mean"), mean), ((*layer, "var"), sum_squares / count)]
    flat = dict(nnx.to_flat_state(model_state))
    for path, value in updates:
        flat[path] = flat[path].replace(value.astype(flat[path][...].dtype))
    return nnx.from_flat_state(flat)


def recompute_model_state(
        model: Any, params: Any, model_state: Any, images: Any, *, batch_size: int = 256
) -> Any:
    """The model state of ``params`` with its batch-norm statistics measured again.

    A Linen model's ``batch_stats`` collection is recomputed by :func:`recompute_batch_stats`;
    an NNX model's ``nnx.BatchStat`` variables likewise, each layer's statistics of every
    batch merged by Chan et al.'s update (exact for the first layer; later layers see the
    inputs training would show them). Dropout is off during the pass. A model without batch
    statistics gets ``model_state`` back as it is.

    Args:
        model: a Flax Linen or NNX module (or its
            :class:`~jaxtricks.training.model.FunctionalModel`).
        params: the parameters to measure (typically averaged ones).
        model_state: the model's state, e.g. the training state's (its other parts are kept).
        images: the inputs to measure on, an array ``(N, ...)``, typically the training ones.
        batch_size: examples per forward pass, >= 1.

    Returns:
        ``model_state`` with every batch-norm layer's statistics replaced.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> rngs = nnx.Rngs(0)
        >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=rngs), nnx.BatchNorm(2, rngs=rngs))
        >>> _, params, state = nnx.split(model, nnx.Param, ...)
        >>> x = jnp.arange(12.0).reshape(6, 2)
        >>> fresh = recompute_model_state(model, params, state, x, batch_size=6)
        >>> z = model.layers[0](x)
        >>> bool(jnp.allclose(fresh["layers"][1]["mean"][...], z.mean(0), atol=1e-5))
        True
    """
    fm = functional_model(model)
    batch_size = _check_batch_size(batch_size)
    images = jnp.asarray(images)
    if fm.kind == "nnx":
        if not nnx.to_flat_state(nnx.filter_state(model_state, nnx.BatchStat)):
            return model_state
        return _recompute_nnx(fm, params, model_state, images, batch_size)
    stats = model_state.get("batch_stats") if isinstance(model_state, dict) else None
    if not stats:
        return model_state
    fresh = recompute_batch_stats(
        fm.module, params, images, batch_size=batch_size, batch_stats_template=stats
    )
    return {**model_state, "batch_stats": fresh}
