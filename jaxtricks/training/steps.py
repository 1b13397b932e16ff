"""One training step and one evaluation step, each a pure ``jit``-compiled function.

The loss is the mean softmax cross-entropy of the logits z_i = f_θ(x_i) against integer labels,

    L(θ) = -(1/B) Σ_i log softmax(z_i)[y_i].

Training step t, with dropout key k_t = fold_in(r, t):

    (L, g) = (L(θ_t), ∇_θ L(θ_t)),   (u, o') = optimizer.update(g, o_t, θ_t),   θ' = θ_t + u,

and the batch statistics move to their new running averages. With ``skip_nonfinite`` a step whose
loss, gradient or new batch statistics hold a NaN or ±Inf keeps θ_t, o_t and the statistics, so one
bad batch cannot poison the run; t advances either way.

Evaluation sums over a batch with a 0/1 mask m (padding rows get m_i = 0):

    Σ_i m_i ℓ_i,   Σ_i m_i [argmax z_i = y_i],   Σ_i m_i,

so batches padded to one shape add up to exact totals over a split of any size.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtricks.training.sharding import (
    _check_divisible,
    _check_mesh,
    batch_sharding,
    train_state_sharding,
)
from jaxtricks.training.state import TrainState, _check_model, _check_optimizer, _shared
from jaxtricks.tricks._checks import check_int
from jaxtricks.tricks.tree import all_finite, global_norm

Batch = tuple[jax.Array, ...]
Metrics = dict[str, jax.Array]


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The ``variables`` dict for ``model.apply``; models without batch norm get no stats."""
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def _per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    # float32 so that a model computing in bfloat16 still gets an accurate log-softmax.
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _check_split(
        images_name: str, images: Any, labels_name: str, labels: Any
) -> tuple[Any, Any]:
    """Checks a split of float images ``(N, ...)`` and integer labels ``(N,)``, N >= 1.

    Returns the two as arrays (NumPy or JAX, never copied); errors name the argument.
    """
    images = images if isinstance(images, np.ndarray | jax.Array) else np.asarray(images)
    labels = labels if isinstance(labels, np.ndarray | jax.Array) else np.asarray(labels)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(
            f"{images_name} must have shape (N, ...) with N >= 1 examples, got {images.shape}"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{images_name} must be floating point (scale raw pixels first), got {images.dtype}"
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"{labels_name} must have shape ({images.shape[0]},) to match {images_name}, "
            f"got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{labels_name} must be integers, got dtype {labels.dtype}")
    return images, labels


def _check_train_test(
        train_images: Any, train_labels: Any, test_images: Any, test_labels: Any
) -> tuple[Any, Any, Any, Any]:
    """Checks the training and test splits (see :func:`_check_split`) and that their images
    share a feature shape; returns the four as arrays. Errors name the argument."""
    train_images, train_labels = _check_split(
        "train_images", train_images, "train_labels", train_labels
    )
    test_images, test_labels = _check_split("test_images", test_images, "test_labels", test_labels)
    if test_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(
            f"test_images must have the training images' feature shape {train_images.shape[1:]}, "
            f"got {test_images.shape[1:]}"
        )
    return train_images, train_labels, test_images, test_labels


def make_train_step(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        *,
        skip_nonfinite: bool = True,
        mesh: Mesh | None = None,
        shard_optimizer_state: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the compiled training step ``train_step(state, batch) -> (state, metrics)``.

    Dropout at step t uses fold_in(state.rng, t); the update is θ' = θ + u with
    (u, o') = optimizer.update(∇L, o, θ) for the mean cross-entropy L of the batch.

    Args:
        model: a Flax Linen module called as ``model.apply(variables, x, train=True,
            rngs={"dropout": key}, mutable=["batch_stats"])``, returning logits.
        optimizer: an Optax gradient transformation (it carries its own schedule).
        skip_nonfinite: if True, a step whose loss, gradients or new batch statistics hold a
            NaN or Inf leaves params, opt_state and batch_stats unchanged and reports
            ``skipped = 1``; ``step`` still advances.
        mesh: a 1-D mesh (:func:`~jaxtricks.training.sharding.make_mesh`) to train on in data
            parallel: the batch is split along its leading axis (its size must divide by the
            number of devices) and the state is kept as
            :func:`~jaxtricks.training.sharding.train_state_sharding` says. The program is the
            same, partitioned by the compiler, so the result equals one device's up to float32
            summation order. Pass a state placed by
            :func:`~jaxtricks.training.sharding.shard_train_state`. None: no sharding.
        shard_optimizer_state: with a mesh, split the optimizer state across the devices
            (ZeRO-1) instead of replicating it.

    Returns:
        A ``jax.jit``-compiled pure function of ``state`` and ``batch = (images, labels)``
        (float images with a leading batch axis, int32 labels) that donates ``state``: the
        buffers of the state passed in are reused for the result and must not be read again.
        ``metrics`` holds device scalars: ``loss`` (float32 batch mean), ``accuracy`` (float32),
        ``grad_norm`` (float32 global L2 norm of the gradients) and ``skipped`` (int32, 0 or 1).
        Equal (hashable) arguments give the same function, so its compilations are reused.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.Dense(2)(x.reshape((x.shape[0], -1)))
        >>> images = jnp.stack([jnp.ones((2, 2)), -jnp.ones((2, 2))])
        >>> labels = jnp.array([0, 1], dtype=jnp.int32)
        >>> state = create_train_state(Net(), optax.sgd(0.5), jax.random.key(0), images)
        >>> train_step = make_train_step(Net(), optax.sgd(0.5))
        >>> state, first = train_step(state, (images, labels))
        >>> for _ in range(10):
        ...     state, metrics = train_step(state, (images, labels))
        >>> int(state.step), bool(metrics["loss"] < first["loss"]), int(metrics["skipped"])
        (11, True, 0)
    """
    _check_model(model)
    _check_optimizer(optimizer)
    if not isinstance(skip_nonfinite, bool):
        raise ValueError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
    _check_sharding_arguments(mesh, shard_optimizer_state)
    return _shared(
        _build_train_step, model, optimizer, skip_nonfinite, mesh, shard_optimizer_state
    )


def _check_sharding_arguments(mesh: Any, shard_optimizer_state: Any) -> None:
    """Raises ``ValueError`` unless ``mesh`` is None or a 1-D mesh and ``shard_optimizer_state``
    a bool that is True only with a mesh."""
    if mesh is not None:
        _check_mesh(mesh)
    if not isinstance(shard_optimizer_state, bool):
        raise ValueError(f"shard_optimizer_state must be a bool, got {shard_optimizer_state!r}")
    if shard_optimizer_state and mesh is None:
        raise ValueError("shard_optimizer_state=True needs a mesh to shard over, got mesh=None")


def _constrain_batch(batch: Batch, mesh: Mesh | None) -> Batch:
    """Inside ``jit``: the batch split along its leading axis over the mesh (if any)."""
    if mesh is None:
        return batch
    _check_divisible("the batch size", batch[0].shape[0], mesh)
    return jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))


def _build_train_step(model, optimizer, skip_nonfinite, mesh, shard_optimizer_state):
    def loss_fn(params, batch_stats, images, labels, key):
        logits, updates = model.apply(
            _variables(params, batch_stats),
            images,
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        loss = jnp.mean(_per_example_loss(logits, labels))
        return loss, (logits, updates.get("batch_stats", batch_stats))

    def constrain_state(state: TrainState) -> TrainState:
        # On both ends of the step: the output then keeps the input's layout (so donation reuses
        # its buffers), and a loop carrying the state (the "scan" runner) has one layout for
        # the partitioner to keep, instead of one it picks from what the body touches.
        if mesh is None:
            return state
        return jax.lax.with_sharding_constraint(
            state, train_state_sharding(state, mesh, shard_optimizer_state=shard_optimizer_state)
        )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        state = constrain_state(state)
        images, labels = _constrain_batch(batch, mesh)
        key = jax.random.fold_in(state.rng, state.step)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, labels, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(batch_stats)

            # A select, not lax.cond: XLA's GPU backend may run a conditional by copying its
            # predicate to the host, a sync per step; the select fuses into the update instead.
            def keep_if_finite(new, old):
                return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

            params = keep_if_finite(params, state.params)
            opt_state = keep_if_finite(opt_state, state.opt_state)
            batch_stats = keep_if_finite(batch_stats, state.batch_stats)
            skipped = jnp.logical_not(finite).astype(jnp.int32)
        else:
            skipped = jnp.zeros((), jnp.int32)
        correct = jnp.argmax(logits, axis=-1) == labels
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(correct.astype(jnp.float32)),
            "grad_norm": global_norm(grads, at_least_float32=True).astype(jnp.float32),
            "skipped": skipped,
        }
        new_state = TrainState(
            step=optax.safe_increment(state.step),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            rng=state.rng,
        )
        return constrain_state(new_state), metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(
        model: nn.Module, *, mesh: Mesh | None = None
) -> Callable[[TrainState, Batch], Metrics]:
    """Builds the compiled evaluation step ``eval_step(state, batch) -> sums``.

    With per-example losses ℓ_i and mask m: loss_sum = Σ m_i ℓ_i,
    correct = Σ m_i [argmax z_i = y_i], count = Σ m_i, and with C logits per example
    out_of_range = Σ m_i [y_i ∉ {0, ..., C − 1}] (such labels have no loss: see
    :func:`evaluate`). The model runs with ``train=False`` (no dropout, running batch
    statistics) and the state is neither changed nor donated.

    Args:
        model: a Flax Linen module called as ``model.apply(variables, x, train=False)``.
        mesh: a 1-D mesh to split each batch over (its size must divide by the number of
            devices), as in :func:`make_train_step`; None: no sharding.

    Returns:
        A ``jax.jit``-compiled function of ``state`` and ``batch``, where ``batch`` is
        ``(images, labels)`` or ``(images, labels, mask)`` with a boolean ``mask`` of shape
        ``(B,)`` marking the rows to count. It returns ``loss_sum`` (float32), ``correct``,
        ``count`` and ``out_of_range`` (int32), device scalars that add up across batches, and
        ``classes`` (int32, C). Equal (hashable) models give the same function, so its
        compilations are reused.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.Dense(2)(x.reshape((x.shape[0], -1)))
        >>> images, labels = jnp.ones((4, 3)), jnp.zeros((4,), jnp.int32)
        >>> state = create_train_state(Net(), optax.sgd(0.1), jax.random.key(0), images)
        >>> mask = jnp.array([True, True, True, False])
        >>> sums = make_eval_step(Net())(state, (images, labels, mask))
        >>> int(sums["count"]), int(sums["correct"]) in (0, 3)
        (3, True)
    """
    _check_model(model)
    if mesh is not None:
        _check_mesh(mesh)
    return _shared(_build_eval_step, model, mesh)


def _build_eval_step(model, mesh):
    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        if len(batch) not in (2, 3):
            raise ValueError(
                f"batch must be (images, labels) or (images, labels, mask), got {len(batch)} items"
            )
        images, labels = batch[0], batch[1]
        mask = batch[2] if len(batch) == 3 else jnp.ones(labels.shape, jnp.bool_)
        images, labels, mask = _constrain_batch((images, labels, mask), mesh)
        logits = model.apply(_variables(state.params, state.batch_stats), images, train=False)
        losses = _per_example_loss(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels) & mask
        classes = logits.shape[-1]
        outside = ((labels < 0) | (labels >= classes)) & mask
        return {
            "loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(correct, dtype=jnp.int32),
            "count": jnp.sum(mask, dtype=jnp.int32),
            "out_of_range": jnp.sum(outside, dtype=jnp.int32),
            "classes": jnp.asarray(classes, jnp.int32),
        }

    return jax.jit(eval_step)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _eval_batch(eval_step, state, images, labels, start, batch_size, totals):
    """Adds the sums of examples [start, start + batch_size) to ``totals``; rows past the end
    repeat the last example and are masked out, so every batch has one shape."""
    num_examples = images.shape[0]
    index = start + jnp.arange(batch_size, dtype=jnp.int32)
    mask = index < num_examples
    index = jnp.minimum(index, num_examples - 1)
    sums = eval_step(state, (images[index], labels[index], mask))
    return {name: total + sums[name] for name, total in totals.items()}, sums["classes"]


def evaluate(
        eval_step: Callable[[TrainState, Batch], Metrics],
        state: TrainState,
        images: Any,
        labels: Any,
        batch_size: int,
) -> dict[str, float]:
    """Mean loss and accuracy over a whole split, every example counted exactly once.

    loss = (Σ_i ℓ_i) / N and accuracy = (Σ_i [argmax z_i = y_i]) / N over all N examples; the
    last batch is padded to ``batch_size`` and its padding masked out. The arrays go to the
    device once (arrays already there are not copied); batches are gathered on the device and
    the totals are read back once, at the end.

    Args:
        eval_step: a function from :func:`make_eval_step`.
        state: the training state to evaluate; it is not donated.
        images: float array of shape ``(N, ...)``.
        labels: integer array of shape ``(N,)``.
        batch_size: examples per compiled batch; any positive size works for any N.

    Returns:
        ``{"loss": float, "accuracy": float}``.

    Raises:
        ValueError: some label is not in [0, C − 1] for the model's C logits (found on the
            device while evaluating; such a label would make the loss NaN or wrong).

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from jaxtricks.training.state import create_train_state
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.Dense(2)(x)
        >>> images, labels = jnp.ones((5, 3)), jnp.zeros((5,), jnp.int32)
        >>> state = create_train_state(Net(), optax.sgd(0.1), jax.random.key(0), images)
        >>> result = evaluate(make_eval_step(Net()), state, images, labels, batch_size=2)
        >>> sorted(result), result["accuracy"] in (0.0, 1.0)
        (['accuracy', 'loss'], True)
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    images, labels = _check_split("images", images, "labels", labels)
    images = jnp.asarray(images)
    labels = jnp.asarray(labels, dtype=jnp.int32)
    totals = {
        "loss_sum": jnp.zeros((), jnp.float32),
        "correct": jnp.zeros((), jnp.int32),
        "count": jnp.zeros((), jnp.int32),
        "out_of_range": jnp.zeros((), jnp.int32),
    }
    for start in range(0, images.shape[0], batch_size):
        totals, classes = _eval_batch(eval_step, state, images, labels, start, batch_size, totals)
    totals, classes = jax.device_get((totals, classes))
    count = int(totals["count"])
    if totals["out_of_range"]:
        raise ValueError(
            f"labels must lie in [0, {classes - 1}] for a model with {classes} logits; "
            f"{int(totals['out_of_range'])} of the {count} labels do not"
        )
    return {
        "loss": float(totals["loss_sum"]) / count,
        "accuracy": int(totals["correct"]) / count,
    }
