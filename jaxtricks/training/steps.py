"""One training step and one evaluation step, each a pure ``jit``-compiled function.

For a batch (x, y) of B examples, a loss function giving one loss per example and metric
functions giving one value per example,

    L(θ) = (1/B) Σ_i loss_fn(f_θ(x)_i, y_i),

training step t, with dropout key k_t = fold_in(r, t), computes

    (L, g) = (L(θ_t), ∇_θ L(θ_t)),   (u, o') = optimizer.update(g, o_t, θ_t),   θ' = θ_t + u,

and the model's new state m' (batch statistics move to their new running averages). With
``skip_nonfinite`` a step whose loss L, gradients g or new model state m' hold a NaN or ±Inf
keeps θ_t, o_t and m_t bit for bit and counts as skipped, so one bad batch (a NaN pixel, or an
extreme but finite one that overflows in the forward or backward pass) cannot poison the run;
t advances either way. It tests L, the global norm ‖g‖ (which the step reports anyway; a norm
beyond float32's range counts as non-finite too) and m' against m_t (an infinity a leaf held
already is allowed). These are what the update reads, so the verdict is known before the
update runs and the choice between new and old fuses into the update's own pass: the guard
adds no pass over the state. It relies on the float32 norm: a finite ‖g‖ keeps every g² within
float32's range, so what one step writes into float32 parameters and optimizer state from
finite gradients (a step θ + u, averages of g and g² such as momentum and Adam's moments)
cannot overflow. A sum over steps can: Adagrad's accumulator of g² overflows float32 after a
few steps of gradients near 1e19; use ``"strict"`` for it. Held in a dtype whose largest value
is below float32's (float16, ``param_dtype=float16``; bfloat16, whose largest value is just
below it; the 8-bit floats), even one step's values can overflow: for such a state the default
guard also tests what the update writes, as ``"strict"`` does, at the strict test's cost,
decided from the state's dtypes when the step is traced (a state in float32 or wider compiles
without that test).

``skip_nonfinite="strict"`` also tests what the update writes, θ' and o' against θ_t and o_t:
it catches an optimizer whose arithmetic makes a NaN or ±Inf from finite gradients (an infinite
learning rate, an overflowing accumulator). The updates need no pass of their own: θ' = θ_t + u
is non-finite wherever u is, but where θ_t held that same infinity already (an infinity held on
purpose is allowed: a plateau's best metric starts at +inf). That verdict depends on the new
state, so the test reads it once more and the choice is a pass of its own, on every step
(docs/benchmarks.md measures what that costs).

A batch transform (e.g. :func:`~jaxtricks.tricks.soft_targets.mixup`) replaces the batch by
``batch_transform(b_t, (x, y))`` first, with b_t = fold_in(k_t, 1): its randomness is a stream
of its own, and the dropout keys are those of a run without it. A precision policy
(:mod:`~jaxtricks.training.precision`) runs f on the parameters and inputs cast to its compute
dtype and casts the outputs to its output dtype before the loss; θ and o stay in its param
dtype. With its dynamic loss scale s (float16), the gradient is (1/s) ∇_θ (s L); a step whose
loss is finite but whose gradient is not is an **overflow**: it keeps θ_t, o_t and m_t, halves
s and is counted as ``overflow``, not as ``skipped`` (which stays the count of steps the guard
skipped: a non-finite loss, gradient norm or model state, and with ``"strict"``, or the default
guard on a state narrower than float32, parameters or optimizer state).

The default loss is the softmax cross-entropy of the outputs (logits) against integer labels or
soft targets (a distribution over the classes per example), with the accuracy
``[argmax_c f(x)_c = y]`` (y the argmax of soft targets) as its metric. Evaluation sums over a
batch with a 0/1 mask m (padding rows get m_i = 0):

    Σ_i m_i loss_i,   Σ_i m_i metric_i,   Σ_i m_i,

so batches padded to one shape add up to exact means over a split of any size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtricks.backend import SpeedPaths, speed_paths, use_speed_paths
from jaxtricks.training.caching import jit_with, shared
from jaxtricks.training.model import FunctionalModel, functional_model
from jaxtricks.training.precision import LossScaleState, Precision, as_precision
from jaxtricks.training.sharding import (
    batch_sharding,
    check_divisible,
    check_mesh,
    place_sharded,
    train_state_sharding,
)
from jaxtricks.training.state import TrainState, as_optimizer
from jaxtricks.tricks.tree import accumulation_dtype, global_norm

__all__ = [
    "RESERVED_METRICS",
    "Objective",
    "accuracy",
    "check_labels",
    "evaluate",
    "make_eval_step",
    "make_objective",
    "make_train_step",
    "softmax_cross_entropy",
]

Batch = tuple[Any, Any]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Any], jax.Array]
BatchTransform = Callable[[jax.Array, Batch], Batch]

# Names a step reports besides the user's metrics, which therefore cannot be metric names.
RESERVED_METRICS = ("loss", "grad_norm", "skipped", "overflow", "loss_scale", "steps", "count")


def _soft(outputs: jax.Array, labels: jax.Array) -> bool:
    """Whether ``labels`` are soft targets (one distribution per example, the outputs' shape)
    rather than integer labels (one index per example)."""
    return jnp.ndim(labels) == jnp.ndim(outputs)


def softmax_cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy of logits ``(B, C)`` against integer labels ``(B,)``
    or soft targets ``(B, C)``.

    Math: ``ℓ_i = −log softmax(z_i)[y_i]`` for a label, ``ℓ_i = −Σ_c p_ic log softmax(z_i)_c``
    for soft targets p (``optax.losses.softmax_cross_entropy``, as mixup or label smoothing
    make them), computed in float32 so that a model computing in bfloat16 or float16 still gets
    an accurate log-softmax.

    Examples:
        >>> import jax.numpy as jnp
        >>> softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1])).round(4)
        Array([0.6931], dtype=float32)
        >>> softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([[0.5, 0.5]])).round(4)
        Array([0.6931], dtype=float32)
    """
    logits = outputs.astype(jnp.float32)
    if _soft(outputs, labels):
        return optax.losses.softmax_cross_entropy(logits, labels.astype(jnp.float32))
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example 0/1 accuracy ``[argmax_c z_c = y]`` as float32, for logits and integer labels
    ``(B,)`` or soft targets ``(B, C)`` (y their argmax).

    Examples:
        >>> import jax.numpy as jnp
        >>> accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1]))
        Array([1., 0.], dtype=float32)
        >>> accuracy(jnp.array([[0.1, 0.9]]), jnp.array([[0.3, 0.7]]))
        Array([1.], dtype=float32)
    """
    if _soft(outputs, labels):
        labels = jnp.argmax(labels, axis=-1)
    return (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)


class Objective(NamedTuple):
    """A loss function and named metric functions, each ``fn(outputs, y) -> (B,) values``."""

    loss_fn: LossFn
    metrics: tuple[tuple[str, LossFn], ...]  # (name, fn) pairs, in the order given
    integer_labels: bool  # the default classification loss: labels must index the outputs


def make_objective(loss_fn: LossFn | None = None, metrics: Mapping[str, LossFn] | None = None
                   ) -> Objective:
    """Checks and completes ``loss_fn`` and ``metrics`` as ``fit`` and the steps take them.

    ``loss_fn=None`` is :func:`softmax_cross_entropy`, and then ``metrics=None`` is
    ``{"accuracy": accuracy}``; with a loss of one's own, ``metrics=None`` is no metric.

    Args:
        loss_fn: ``loss_fn(outputs, y) -> losses``, one float per example.
        metrics: ``{name: fn}`` with ``fn(outputs, y) -> values``, one per example; a name
            must not be one of :data:`RESERVED_METRICS` nor start with ``val_`` or ``test_``.

    Returns:
        An :class:`Objective` (hashable when the functions are).

    Examples:
        >>> make_objective().metrics[0][0]
        'accuracy'
        >>> make_objective(lambda outputs, y: (outputs - y) ** 2).metrics
        ()
    """
    default = loss_fn is None
    if default:
        loss_fn = softmax_cross_entropy
        metrics = {"accuracy": accuracy} if metrics is None else metrics
    elif not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (outputs, y) -> losses, got {loss_fn!r}")
    metrics = {} if metrics is None else metrics
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping from names to functions, got {metrics!r}")
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"metrics: names must be identifiers, got {name!r}")
        if name in RESERVED_METRICS or name.startswith(("val_", "test_")):
            raise ValueError(
                f"metrics: {name!r} is reserved (the step reports {', '.join(RESERVED_METRICS)}; "
                "val_ and test_ prefix the evaluations)"
            )
        if not callable(fn):
            raise ValueError(f"metrics[{name!r}] must be a function (outputs, y) -> values")
    return Objective(loss_fn, tuple(metrics.items()), default)


def check_labels(labels: Any, num_classes: int, name: str = "y") -> None:
    """Raises ``ValueError`` unless ``labels`` are integers in ``[0, num_classes)``.

    The default loss indexes the outputs with the labels; an out-of-range label would give a
    silently wrong loss, so :func:`~jaxtricks.training.fit.fit` and :func:`evaluate` check
    every split with the default loss before using it.

    Examples:
        >>> import numpy as np
        >>> check_labels(np.array([0, 9]), 10)
        >>> check_labels(np.array([0, 10]), 10, "test labels")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: test labels must hold integer labels in [0, 9] ..., got values in [0, 10]
    """
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer labels for the default loss (softmax cross-entropy), got "
            f"dtype {dtype}; pass loss_fn for other targets"
        )
    low, high = (int(v) for v in jax.device_get((jnp.min(labels), jnp.max(labels))))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} must hold integer labels in [0, {num_classes - 1}] for outputs of "
            f"{num_classes} classes, got values in [{low}, {high}]"
        )


def _per_example(name: str, values: Any, batch_size: int) -> jax.Array:
    shape = np.shape(values)
    if shape != (batch_size,):
        raise ValueError(
            f"{name} must return one value per example, shape ({batch_size},), got shape {shape}"
        )
    return values


def _batch_size(x: Any) -> int:
    return jax.tree.leaves(x)[0].shape[0]


def _inexact_finite(tree: Any, before: Any = None) -> jax.Array:
    """True when no floating or complex leaf of ``tree`` holds a NaN or an infinity, other than
    one the same place of ``before`` (a tree of the same structure) held already: a state may
    keep an infinity on purpose, as a plateau's best metric is +inf before any is observed."""
    leaves = jax.tree.leaves(tree)
    olds = [None] * len(leaves) if before is None else jax.tree.leaves(before)
    flags = [
        jnp.all(jnp.isfinite(leaf) if old is None else jnp.isfinite(leaf) | (leaf == old))
        for leaf, old in zip(leaves, olds, strict=True)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.stack(flags).all() if flags else jnp.asarray(True)


# Leaves at least this large, with a last axis at least this long, are tested through row sums.
_ROW_SUM_MIN_SIZE = 4096
_ROW_SUM_MIN_ROW = 16


def _finite_by_row_sums(tree: Any) -> jax.Array:
    """True only if every floating or complex leaf of ``tree`` is finite: a quick test whose
    False :func:`_inexact_finite` must confirm.

    A large real leaf is tested through its sums along the last axis, a matrix-vector product
    with a ones vector accumulated in at least float32: a NaN or an infinity makes its row's
    sum NaN or infinite, so finite sums mean finite values. XLA:CPU reads a leaf that way about
    three times faster than through the reduction ``all(isfinite(x))``. The converse does not
    hold (finite values whose sum leaves the dtype's range give False too), hence the exact
    test behind it. Other leaves are tested element by element.
    """
    flags = []
    for leaf in jax.tree.leaves(tree):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        if (jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size >= _ROW_SUM_MIN_SIZE
                and leaf.shape[-1] >= _ROW_SUM_MIN_ROW):
            rows = leaf.reshape(-1, leaf.shape[-1])
            sums = jnp.dot(rows, jnp.ones(leaf.shape[-1], leaf.dtype),
                           preferred_element_type=accumulation_dtype(leaf.dtype))
            flags.append(jnp.all(jnp.isfinite(sums)))
        else:
            flags.append(jnp.all(jnp.isfinite(leaf)))
    return jnp.stack(flags).all() if flags else jnp.asarray(True)


def _narrower_than_float32(tree: Any) -> bool:
    """Whether a floating or complex leaf of ``tree`` has a largest value below float32's
    (float16, bfloat16, the 8-bit floats): finite float32 gradients can overflow such a leaf.
    Read from the leaves' dtypes, so under ``jit`` it is known when tracing.

    Examples:
        >>> import jax.numpy as jnp
        >>> _narrower_than_float32({"w": jnp.ones(2, jnp.float32), "n": jnp.ones(2, jnp.int8)})
        False
        >>> _narrower_than_float32({"mu": jnp.ones(2, jnp.bfloat16)})
        True
    """
    widest = float(jnp.finfo(jnp.float32).max)
    return any(
        float(jnp.finfo(leaf.dtype).max) < widest
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    )


def _state_finite(new: Any, old: Any, by_sums: bool) -> jax.Array:
    """:func:`_inexact_finite` of ``new`` against ``old``; with ``by_sums``, computed only when
    the quick :func:`_finite_by_row_sums` fails (one ``lax.cond``), with the same verdict."""
    if not by_sums:
        return _inexact_finite(new, old)
    return jax.lax.cond(
        _finite_by_row_sums(new), lambda: jnp.asarray(True), lambda: _inexact_finite(new, old)
    )


def _select(condition: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``new`` where ``condition`` holds, else ``old``; PRNG keys (NNX's RNG state) included."""
    if jnp.issubdtype(new.dtype, jax.dtypes.prng_key):
        data = jnp.where(condition, jax.random.key_data(new), jax.random.key_data(old))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(new))
    return jnp.where(condition, new, old)


def _constrain(tree: Any, mesh: Mesh | None) -> Any:
    """Inside ``jit``: every array split along its leading axis over the mesh (if any)."""
    if mesh is None:
        return tree
    for leaf in jax.tree.leaves(tree):
        check_divisible("the batch size", leaf.shape[0], mesh)
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def make_train_step(
        model: Any,
        optimizer: Any,
        *,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
        skip_nonfinite: bool | Literal["strict"] = True,
        mesh: Mesh | None = None,
        shard_optimizer_state: bool = False,
        donate: bool | None = None,
        precision: Precision | str | None = None,
        batch_transform: BatchTransform | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the compiled training step ``train_step(state, (x, y)) -> (state, metrics)``.

    Args:
        model: a Flax Linen or NNX module (see
            :func:`~jaxtricks.training.model.functional_model`), returning outputs that
            ``loss_fn`` takes.
        optimizer: an Optax transformation, or an object making one such as
            ``optax.MultiSteps`` (see :func:`~jaxtricks.training.state.as_optimizer`).
        loss_fn: ``loss_fn(outputs, y) -> (B,) losses``; None: :func:`softmax_cross_entropy`.
        metrics: ``{name: fn(outputs, y) -> (B,) values}``, reported as batch means; None:
            ``{"accuracy": accuracy}`` with the default loss, none otherwise.
        skip_nonfinite: if True, a step whose loss, gradients or new model state hold a NaN
            or Inf leaves the state unchanged (but for ``step``, which advances) and reports
            ``skipped = 1``. The gradients count as non-finite when their global norm is (also
            when finite gradients have a norm beyond float32's range, above about 1.8e19).
            ``"strict"``: also when the new parameters or optimizer state would hold a new NaN
            or Inf (an optimizer's arithmetic overflowing from finite gradients), at the cost
            of one more pass over the state per step; True takes that test too, and its cost,
            where a parameter or optimizer-state leaf's largest value is below float32's
            (float16, bfloat16, the 8-bit floats), which finite gradients can overflow. False:
            no test. See the module's docstring.
        mesh: a 1-D mesh (:func:`~jaxtricks.training.sharding.make_mesh`) to train on in data
            parallel: the batch is split along its leading axis (its size must divide by the
            number of devices) and the state is kept as
            :func:`~jaxtricks.training.sharding.train_state_sharding` says. Pass a state placed
            by :func:`~jaxtricks.training.sharding.shard_train_state`. None: no sharding.
        shard_optimizer_state: with a mesh, split the optimizer state across the devices
            (ZeRO-1) instead of replicating it.
        donate: whether the step donates ``state`` (its buffers are reused for the result and
            must not be read again); None takes the backend's choice
            (:func:`jaxtricks.backend.speed_paths`).
        precision: a mixed-precision policy (:mod:`~jaxtricks.training.precision`): a
            ``Precision`` or one of ``"fp32"``, ``"bf16"``, ``"fp16"``. The model runs on the
            parameters and floating inputs cast to its compute dtype (a jaxtricks model, whose
            ``dtype`` is None, computes in it; batch norm stays float32), the outputs are cast
            to its output dtype, and the parameters and optimizer state stay in its param
            dtype. With a loss scale, ``state`` must come from ``create_train_state`` with the
            same policy. None: nothing is cast.
        batch_transform: ``batch_transform(key, (x, y)) -> (x, y)`` applied to every training
            batch before the model, e.g. :func:`~jaxtricks.tricks.soft_targets.mixup`; its key
            at step t is ``fold_in(fold_in(r, t), 1)``, apart from the dropout key
            ``fold_in(r, t)``. None: the batch as it is.

    Returns:
        A ``jax.jit``-compiled pure function of ``state`` and ``batch = (x, y)`` (pytrees of
        arrays with a leading batch axis). ``metrics`` holds device scalars: ``loss`` (the
        batch mean), each metric's batch mean, ``grad_norm`` (global L2 norm of the
        gradients) and ``skipped`` (int32, 0 or 1); with a loss scale also ``overflow``
        (int32, 0 or 1: the scaled gradients overflowed, the step was not applied and the
        scale halved; such a step has ``skipped = 0``) and ``loss_scale`` (the scale the step
        used). Equal arguments give the same function, so its compilations are reused.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> model, tx = nn.Dense(2), optax.sgd(0.5)
        >>> x, y = jnp.array([[1.0, 1.0], [-1.0, -1.0]]), jnp.array([0, 1])
        >>> state = create_train_state(model, tx, jax.random.key(0), x)
        >>> train_step = make_train_step(model, tx)
        >>> state, first = train_step(state, (x, y))
        >>> for _ in range(10):
        ...     state, metrics = train_step(state, (x, y))
        >>> int(state.step), bool(metrics["loss"] < first["loss"]), float(metrics["accuracy"])
        (11, True, 1.0)
    """
    fm = functional_model(model)
    optimizer = as_optimizer(optimizer)
    objective = make_objective(loss_fn, metrics)
    check_skip_nonfinite(skip_nonfinite)
    check_sharding_arguments(mesh, shard_optimizer_state)
    if donate is None:
        donate = speed_paths().donate_state
    elif not isinstance(donate, bool):
        raise ValueError(f"donate must be a bool or None, got {donate!r}")
    precision = as_precision(precision)
    check_batch_transform(batch_transform)
    return shared(
        _build_train_step, fm, optimizer, objective, skip_nonfinite, mesh,
        shard_optimizer_state, donate, speed_paths(), precision, batch_transform,
    )


def check_skip_nonfinite(skip_nonfinite: Any) -> None:
    """Raises ``ValueError`` unless ``skip_nonfinite`` is True, False or ``"strict"``."""
    if not (isinstance(skip_nonfinite, bool)
            or (isinstance(skip_nonfinite, str) and skip_nonfinite == "strict")):
        raise ValueError(
            f"skip_nonfinite must be True, False or 'strict', got {skip_nonfinite!r}"
        )


def check_batch_transform(batch_transform: Any) -> None:
    """Raises ``ValueError`` unless ``batch_transform`` is None or a function."""
    if batch_transform is not None and not callable(batch_transform):
        raise ValueError(
            f"batch_transform must be a function (key, (x, y)) -> (x, y) or None, got "
            f"{batch_transform!r}"
        )


def check_sharding_arguments(mesh: Any, shard_optimizer_state: Any) -> None:
    """Raises ``ValueError`` unless ``mesh`` is None or a 1-D mesh and ``shard_optimizer_state``
    a bool that is True only with a mesh."""
    if mesh is not None:
        check_mesh(mesh)
    if not isinstance(shard_optimizer_state, bool):
        raise ValueError(f"shard_optimizer_state must be a bool, got {shard_optimizer_state!r}")
    if shard_optimizer_state and mesh is None:
        raise ValueError("shard_optimizer_state=True needs a mesh to shard over, got mesh=None")


def _identity(tree: Any) -> Any:
    return tree


def _casts(precision: Precision | None) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The casts to the compute dtype and to the output dtype (identities without a policy)."""
    if precision is None:
        return _identity, _identity
    return precision.cast_to_compute, precision.cast_to_output


def _traced_under(paths: SpeedPaths, step: Callable[..., Any]) -> Callable[..., Any]:
    """``step``, traced inside ``use_speed_paths(paths)``: the models read the batch-norm and
    convolution paths when they are traced, and a step keeps the paths it was built with
    wherever it is first called."""

    @functools.wraps(step)
    def traced(*args: Any) -> Any:
        with use_speed_paths(paths):
            return step(*args)

    return traced


def _build_train_step(fm: FunctionalModel, optimizer, objective, skip_nonfinite, mesh,
                      shard_optimizer_state, donate, paths, precision, batch_transform):
    to_compute, to_output = _casts(precision)
    scaled = precision is not None and precision.loss_scale is not None

    def constrain_state(state: TrainState) -> TrainState:
        # On both ends of the step: the output then keeps the input's layout (so donation reuses
        # its buffers), and a loop carrying the state has one layout for the partitioner to keep.
        if mesh is None:
            return state
        return jax.lax.with_sharding_constraint(
            state, train_state_sharding(state, mesh, shard_optimizer_state=shard_optimizer_state)
        )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        state = constrain_state(state)
        x, y = _constrain(batch, mesh)
        size = _batch_size(x)
        key = jax.random.fold_in(state.rng, state.step)
        if batch_transform is not None:
            x, y = batch_transform(jax.random.fold_in(key, 1), (x, y))
        x = to_compute(x)
        opt_state = state.opt_state
        if scaled:
            if not isinstance(opt_state, LossScaleState):
                raise ValueError(
                    f"state: precision {precision} scales the loss, so its opt_state must be a "
                    "LossScaleState; create the state with create_train_state(..., "
                    "precision=...) and the same policy"
                )
            loss_scale, opt_state = opt_state

        def objective_of(params):
            outputs, model_state = fm.apply(to_compute(params), state.model_state, x,
                                            train=True, key=key)
            outputs = to_output(outputs)
            losses = _per_example("loss_fn", objective.loss_fn(outputs, y), size)
            return jnp.mean(losses), (outputs, model_state)

        if scaled:
            new_scale, grads_finite, (loss, (outputs, model_state)), grads = (
                loss_scale.value_and_grad(objective_of, has_aux=True)(state.params)
            )
            # Loss finite, gradient not: the scaled float16 backward pass overflowed.
            overflow = jnp.isfinite(loss) & jnp.logical_not(grads_finite)
        else:
            (loss, (outputs, model_state)), grads = jax.value_and_grad(
                objective_of, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if scaled:
            opt_state = LossScaleState(new_scale, opt_state)
        new = TrainState(optax.safe_increment(state.step), params, model_state, opt_state,
                         state.rng)
        grad_norm = global_norm(grads, at_least_float32=True)
        if skip_nonfinite or scaled:
            if skip_nonfinite:
                # What the update reads: known before it runs, so the select below fuses into
                # the update. The gradients through their norm, computed for the metrics anyway.
                applied = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                           & _inexact_finite(model_state, state.model_state))
                if skip_nonfinite == "strict" or _narrower_than_float32(
                        (state.params, state.opt_state)):
                    # What the update writes, the updates through θ' = θ + u (see the module's
                    # docstring): one more pass over the new state, and the select is one more.
                    applied = applied & _state_finite(
                        (new.params, new.opt_state), (state.params, state.opt_state),
                        paths.finite_check_by_sums)
            else:
                applied = jnp.logical_not(overflow)
            # A select, not lax.cond: XLA's GPU backend may run a conditional by copying its
            # predicate to the host, a sync per step; the select fuses into the update instead
            # (when ``applied`` is known before the update).
            kept = jax.tree.map(
                functools.partial(_select, applied),
                (new.params, new.model_state, new.opt_state),
                (state.params, state.model_state, state.opt_state),
            )
            new = new._replace(params=kept[0], model_state=kept[1], opt_state=kept[2])
            skipped = jnp.logical_not(applied)
            if scaled:
                # An overflow is skipped too, but keeps its lowered scale: that is how loss
                # scaling finds a scale that fits. It is counted apart from poisoned steps.
                new = new._replace(opt_state=new.opt_state._replace(loss_scale=jax.tree.map(
                    functools.partial(_select, overflow), new_scale, new.opt_state.loss_scale)))
                skipped = skipped & jnp.logical_not(overflow)
            skipped = skipped.astype(jnp.int32)
        else:
            skipped = jnp.zeros((), jnp.int32)
        values = {"loss": loss.astype(jnp.float32)}
        for name, fn in objective.metrics:
            values[name] = jnp.mean(_per_example(f"metrics[{name!r}]", fn(outputs, y), size))
            values[name] = values[name].astype(jnp.float32)
        values["grad_norm"] = grad_norm.astype(jnp.float32)
        values["skipped"] = skipped
        if scaled:
            values["overflow"] = overflow.astype(jnp.int32)
            # Flax types DynamicScale.scale as a float; in the state it is an array.
            values["loss_scale"] = cast(jax.Array, loss_scale.scale).astype(jnp.float32)
        return constrain_state(new), values

    return jax.jit(_traced_under(paths, train_step), donate_argnums=0 if donate else ())


def make_eval_step(
        model: Any,
        *,
        loss_fn: LossFn | None = None,
        metrics: Mapping[str, LossFn] | None = None,
        mesh: Mesh | None = None,
        precision: Precision | str | None = None,
) -> Callable[[TrainState, Batch, jax.Array], Metrics]:
    """Builds the compiled evaluation step ``eval_step(state, (x, y), mask) -> sums``.

    The model runs in evaluation mode (no dropout, running batch statistics); the state is
    neither changed nor donated.

    Args:
        model: a Flax Linen or NNX module, as for :func:`make_train_step`.
        loss_fn: as for :func:`make_train_step`.
        metrics: as for :func:`make_train_step`.
        mesh: a 1-D mesh to split each batch over (its size must divide by the number of
            devices); None: no sharding.
        precision: as for :func:`make_train_step`: the model computes in the policy's compute
            dtype, the loss and metrics see outputs in its output dtype.

    Returns:
        A ``jax.jit``-compiled function of ``state``, ``batch = (x, y)`` and a boolean
        ``mask`` of shape ``(B,)`` marking the rows to count. It returns float32 sums
        ``loss`` and one per metric over the masked rows, and ``count`` (int32), device scalars
        that add up across batches; with the default loss also ``out_of_range``, the labels
        outside ``[0, classes)``, and ``classes``. Equal arguments give the same function.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> x, y = jnp.ones((4, 3)), jnp.zeros((4,), jnp.int32)
        >>> state = create_train_state(nn.Dense(2), optax.sgd(0.1), jax.random.key(0), x)
        >>> mask = jnp.array([True, True, True, False])
        >>> sums = make_eval_step(nn.Dense(2))(state, (x, y), mask)
        >>> int(sums["count"]), float(sums["accuracy"]) in (0.0, 3.0)
        (3, True)
    """
    fm = functional_model(model)
    objective = make_objective(loss_fn, metrics)
    if mesh is not None:
        check_mesh(mesh)
    return shared(_build_eval_step, fm, objective, mesh, speed_paths(), as_precision(precision))


def _build_eval_step(fm: FunctionalModel, objective, mesh, paths, precision):
    to_compute, to_output = _casts(precision)

    def eval_step(state: TrainState, batch: Batch, mask: jax.Array) -> Metrics:
        (x, y), mask = _constrain((batch, mask), mesh)
        size = _batch_size(x)
        outputs, _ = fm.apply(to_compute(state.params), state.model_state, to_compute(x),
                              train=False, key=None)
        outputs = to_output(outputs)

        def masked_sum(name, values):
            values = _per_example(name, values, size).astype(jnp.float32)
            return jnp.sum(jnp.where(mask, values, 0.0))

        sums = {"loss": masked_sum("loss_fn", objective.loss_fn(outputs, y))}
        for name, fn in objective.metrics:
            sums[name] = masked_sum(f"metrics[{name!r}]", fn(outputs, y))
        sums["count"] = jnp.sum(mask, dtype=jnp.int32)
        if objective.integer_labels and not _soft(outputs, y):
            # A label the outputs cannot index has no loss: counted, so evaluate can say so.
            outside = (y < 0) | (y >= outputs.shape[-1])
            sums["out_of_range"] = jnp.sum(outside & mask, dtype=jnp.int32)
            sums["classes"] = jnp.asarray(outputs.shape[-1], jnp.int32)
        return sums

    return jax.jit(_traced_under(paths, eval_step))


def _eval_batch(step_and_size, state, data, start, totals):
    """Adds the sums of examples [start, start + batch_size) to ``totals``; rows past the end
    repeat the last example and are masked out, so every batch has one shape. Jitted per
    ``(eval_step, batch_size)`` through :func:`~jaxtricks.training.caching.jit_with`."""
    eval_step, batch_size = step_and_size
    num_examples = _batch_size(data[0])
    index = start + jnp.arange(batch_size, dtype=jnp.int32)
    mask = index < num_examples
    index = jnp.minimum(index, num_examples - 1)
    batch = jax.tree.map(lambda leaf: jnp.take(leaf, index, axis=0), data)
    sums = eval_step(state, batch, mask)
    # Every entry is a sum over batches but the number of classes, the same in each.
    return {name: (jnp.maximum if name == "classes" else jnp.add)(totals[name], sums[name])
            for name in totals}


def evaluate(
        eval_step: Callable[[TrainState, Batch, jax.Array], Metrics],
        state: TrainState,
        x: Any,
        y: Any,
        *,
        batch_size: int,
) -> dict[str, float]:
    """Mean loss and metrics over a whole split, every example counted exactly once.

    ``loss = (Σ_i ℓ_i) / N`` and likewise each metric over all N examples; the last batch is
    padded to ``batch_size`` and its padding masked out. Arrays already on the device are not
    copied; host arrays are copied once, replicated over the state's mesh when it has one (in a
    job of several processes each process copies its own, so all must pass the same). The
    totals are read back once, at the end.

    Args:
        eval_step: a function from :func:`make_eval_step`.
        state: the training state to evaluate; it is not donated.
        x: the inputs, a pytree of arrays with a leading axis of N >= 1 examples.
        y: the targets, likewise.
        batch_size: examples per compiled batch; any positive size works for any N.

    Returns:
        ``{"loss": float, <metric>: float, ...}`` (a list of floats for a sum of several
        values, e.g. per ensemble member).

    Raises:
        ValueError: with the default loss, some label is outside ``[0, classes)`` (found on
            the device while evaluating; such a label would give a wrong loss).

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> x, y = jnp.ones((5, 3)), jnp.zeros((5,), jnp.int32)
        >>> state = create_train_state(nn.Dense(2), optax.sgd(0.1), jax.random.key(0), x)
        >>> result = evaluate(make_eval_step(nn.Dense(2)), state, x, y, batch_size=2)
        >>> sorted(result), result["accuracy"] in (0.0, 1.0)
        (['accuracy', 'loss'], True)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    num_examples = check_examples(("x", x), ("y", y))
    data = _placed_like(state, (x, y))
    # Shaped as the batches evaluated: a step for a mesh refuses a batch it cannot split.
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype),
                         data)
    sums = jax.eval_shape(eval_step, state, batch, jax.ShapeDtypeStruct((batch_size,), jnp.bool_))
    totals = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums)
    # Across processes one batch at a time: with dozens in flight, two processes on XLA:CPU
    # with gloo collectives hung (evaluating 10,000 MNIST images, jaxlib 0.10.2).
    one_at_a_time = jax.process_count() > 1
    eval_batch = jit_with(_eval_batch, (eval_step, batch_size))
    for start in range(0, num_examples, batch_size):
        totals = eval_batch(state, data, start, totals)
        if one_at_a_time:
            jax.block_until_ready(totals)
    totals = jax.device_get(totals)
    count = int(totals.pop("count"))
    outside = int(np.sum(totals.pop("out_of_range", 0)))
    classes = int(np.max(totals.pop("classes", 0)))
    if outside:
        raise ValueError(
            f"y must hold integer labels in [0, {classes - 1}] for outputs of {classes} classes; "
            f"{outside} of the {count} labels are outside"
        )
    # The loss first, then the metrics by name (device_get returns a dict's keys sorted).
    return {
        name: (np.asarray(totals[name], np.float64) / count).tolist()
        for name in sorted(totals, key=lambda name: name != "loss")
    }


def _placed_like(state: Any, data: Any) -> Any:
    """``data`` on the state's devices: replicated over its mesh when it has one, where each
    batch gathers its rows locally (an array the step had to move would be moved per batch)."""
    meshes = [leaf.sharding.mesh for leaf in jax.tree.leaves(state)
              if isinstance(getattr(leaf, "sharding", None), NamedSharding)]
    if not meshes:
        return jax.tree.map(jnp.asarray, data)
    replicated = NamedSharding(meshes[0], PartitionSpec())
    return place_sharded(data, jax.tree.map(lambda _: replicated, data))


def check_examples(*named: tuple[str, Any]) -> int:
    """The number of examples N shared by the leading axes of every array in the named pytrees.

    Raises ``ValueError`` naming the pytree when one is empty, holds a non-array leaf or a
    scalar, has no example, or disagrees with the first on N.

    Examples:
        >>> import numpy as np
        >>> check_examples(("x", {"a": np.zeros((4, 2)), "b": np.zeros(4)}), ("y", np.zeros(4)))
        4
    """
    first: tuple[str, int] | None = None
    for name, tree in named:
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        if not leaves:
            raise ValueError(f"{name} must hold at least one array, got {tree!r}")
        for path, leaf in leaves:
            where = f"{name}{jax.tree_util.keystr(path)}"
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise ValueError(f"{where} must be an array, got {type(leaf).__name__}")
            if len(leaf.shape) == 0 or leaf.shape[0] == 0:
                raise ValueError(
                    f"{where} must have a leading axis of N >= 1 examples, got shape {leaf.shape}"
                )
            if first is None:
                first = (where, leaf.shape[0])
            elif leaf.shape[0] != first[1]:
                raise ValueError(
                    f"{where} has {leaf.shape[0]} examples but {first[0]} has {first[1]}: every "
                    "array of x and y needs the same leading axis"
                )
    assert first is not None
    return first[1]
