"""The training state: everything a step reads and writes, as one checkpointable pytree.

Training is the recursion s_{t+1} = step(s_t, batch_t). The state s_t holds the step count t,
the model's parameters θ_t, the rest of the model's state (batch-norm statistics, NNX's RNG
counters), the optimizer's state and a base PRNG key r. Step t draws a Linen model's dropout
masks from the key

    k_t = fold_in(r, t),

a function of the state alone, so a run resumed from a saved state draws the same masks as a
run that never stopped (an NNX model's RNG counters are in the state for the same reason). A
batch transform (mixup) draws from b_t = fold_in(k_t, 1), a stream apart from the dropout
masks. The state holds arrays only (no functions), so it can be saved, restored, donated to
``jit`` and sharded like any other pytree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks.training.caching import shared
from jaxtricks.training.model import functional_model
from jaxtricks.training.precision import Precision, as_precision

__all__ = ["TrainState", "as_optimizer", "create_train_state"]


class TrainState(NamedTuple):
    """The state of a training run; a pytree of arrays."""

    step: jax.Array  # shape=(), int32: steps taken, skipped non-finite steps included
    params: Any  # pytree of arrays: what the optimizer trains
    model_state: Any  # pytree of arrays: the model's other state ({} when it has none)
    opt_state: Any  # pytree of arrays: the optimizer's state (in a LossScaleState under fp16)
    rng: jax.Array  # PRNG key: the base key r; step t's dropout key is fold_in(r, t)


def as_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """``optimizer`` as an ``optax.GradientTransformation``; ``ValueError`` otherwise.

    Accepts a transformation (``optax.GradientTransformationExtraArgs`` included) and objects
    that make one, such as ``optax.MultiSteps`` (its ``gradient_transformation()``).

    Examples:
        >>> import optax
        >>> tx = as_optimizer(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
        >>> isinstance(tx, optax.GradientTransformation)
        True
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    make = getattr(optimizer, "gradient_transformation", None)
    if callable(make):
        made = make()
        if isinstance(made, optax.GradientTransformation):
            return made
    raise ValueError(
        "optimizer must be an optax.GradientTransformation (or an object with a "
        f"gradient_transformation() method, like optax.MultiSteps), got {type(optimizer).__name__}"
    )


def create_train_state(model: Any, optimizer: Any, key: jax.Array, sample_input: Any, *,
                       precision: Precision | str | None = None) -> TrainState:
    """Initializes a training state at step 0.

    With (k_θ, r) = split(key): (θ_0, m_0) = init(k_θ, sample_input) (a Linen model's
    ``init`` in evaluation mode; an NNX model's own state), o_0 = optimizer.init(θ_0), and r is
    kept as the base dropout key. Under a precision policy θ_0 is cast to its param dtype, and
    with loss scaling o_0 is a :class:`~jaxtricks.training.precision.LossScaleState` holding
    the initial scale and the optimizer's state.

    Args:
        model: a Flax Linen or NNX module, or a
            :class:`~jaxtricks.training.model.FunctionalModel`.
        optimizer: the Optax transformation that will train it (see :func:`as_optimizer`).
        key: a PRNG key; a Linen model's parameters and all dropout keys derive from it.
        sample_input: a batch of inputs (leading batch axis; a pytree for a model of several
            inputs) fixing the parameter shapes.
        precision: the policy the state will be trained under
            (:mod:`~jaxtricks.training.precision`), as for
            :func:`~jaxtricks.training.steps.make_train_step`; None: none.

    Returns:
        A :class:`TrainState` with ``step`` 0.

    Examples:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return nn.Dense(3)(x.reshape((x.shape[0], -1)))
        >>> state = create_train_state(
        ...     Net(), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
        >>> int(state.step), state.params["Dense_0"]["kernel"].shape, state.model_state
        (0, (16, 3), {})
    """
    fm = functional_model(model)
    optimizer = as_optimizer(optimizer)
    precision = as_precision(precision)
    params_key, rng = jax.random.split(key)
    if fm.kind == "nnx":
        # Copies: the state will be donated, and the module's own arrays must outlive that.
        params, model_state = jax.tree.map(jnp.copy, fm.init(params_key, sample_input))
    else:
        # Compiled: running a deep model's initializers op by op is slower than compiling them.
        params, model_state = shared(jax.jit, fm.init)(params_key, sample_input)
    if precision is not None:
        params = precision.cast_to_param(params)
    # Compiled so that every leaf gets a buffer of its own: an optimizer state that kept a
    # reference to the parameters would make donating the state donate one buffer twice.
    opt_state = jax.jit(optimizer.init)(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state if precision is None else precision.wrap_opt_state(opt_state),
        rng=rng,
    )
