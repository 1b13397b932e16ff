"""The training state: everything a step reads and writes, as one checkpointable pytree.

Training is the recursion s_{t+1} = step(s_t, batch_t). The state s_t holds the step count t, the
model's parameters θ_t, its batch-norm running statistics, the optimizer's state and a base PRNG
key r. Step t draws its dropout masks from the key

    k_t = fold_in(r, t),

a function of the state alone, so a run resumed from a saved state draws the same masks as a run
that never stopped. The state holds arrays only (no functions), so it can be saved, restored,
donated to ``jit`` and sharded like any other pytree.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# The collections a TrainState can hold; a model writing any other one cannot be trained here.
_COLLECTIONS = frozenset({"params", "batch_stats"})


class TrainState(NamedTuple):
    """The state of a training run; a pytree of arrays."""

    step: jax.Array  # shape=(), int32: steps taken, skipped non-finite steps included
    params: Any  # pytree of arrays: the model's "params" collection
    batch_stats: Any  # pytree of arrays: the "batch_stats" collection; {} without batch norm
    opt_state: Any  # pytree of arrays: the optimizer's state
    rng: jax.Array  # PRNG key: the base key r; step t's dropout key is fold_in(r, t)


def _check_model(model: Any) -> nn.Module:
    """Raises ``ValueError`` unless ``model`` is a Flax Linen module; returns it."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    return model


def _check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """Raises ``ValueError`` unless ``optimizer`` is an Optax gradient transformation."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    return optimizer


def _shared(build: Callable[..., Any], *args: Any) -> Any:
    """``build(*args)``, one object for equal hashable arguments.

    Repeated fits of one model and optimizer (another seed, a resumed run) then reuse one
    ``jit`` function and its compiled executables instead of compiling again. Linen modules
    compare by their fields, Optax transformations by their functions; unhashable arguments
    get a fresh build.
    """
    try:
        hash(args)
    except TypeError:
        return build(*args)
    return _cached_build(build, *args)


@functools.lru_cache(maxsize=16)
def _cached_build(build: Callable[..., Any], *args: Any) -> Any:
    return build(*args)


def _build_init(model: nn.Module) -> Callable[[jax.Array, jax.Array], dict[str, Any]]:
    # Compiled, because running a deep model's initializers op by op is slower than compiling.
    return jax.jit(lambda key, sample_input: model.init({"params": key}, sample_input, train=False))


def create_train_state(
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        key: jax.Array,
        sample_input: jax.Array,
) -> TrainState:
    """Initializes a training state at step 0.

    With (k_θ, r) = split(key): θ_0 = model.init(k_θ, sample_input), o_0 = optimizer.init(θ_0),
    and r is kept as the base dropout key.

    Args:
        model: a Flax Linen module called as ``model.apply(variables, x, train=bool, ...)``.
        optimizer: the Optax gradient transformation that will train it.
        key: a PRNG key; the parameters and all dropout keys derive from it.
        sample_input: a batch of inputs (leading batch axis) fixing the parameter shapes.

    Returns:
        A :class:`TrainState` with ``step`` 0; ``batch_stats`` is ``{}`` when the model has none.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, train):
        ...         return nn.Dense(3)(x.reshape((x.shape[0], -1)))
        >>> state = create_train_state(
        ...     Net(), optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
        >>> int(state.step), state.params["Dense_0"]["kernel"].shape, state.batch_stats
        (0, (16, 3), {})
    """
    _check_model(model)
    _check_optimizer(optimizer)
    params_key, rng = jax.random.split(key)
    variables = _shared(_build_init, model)(params_key, sample_input)
    extra = set(variables) - _COLLECTIONS
    if extra:
        raise ValueError(
            f"model: TrainState holds only the collections {sorted(_COLLECTIONS)}, "
            f"but {type(model).__name__} also creates {sorted(extra)}"
        )
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        # Compiled so that every leaf gets a buffer of its own: an optimizer state that kept a
        # reference to the parameters would make donating the state donate one buffer twice.
        opt_state=jax.jit(optimizer.init)(params),
        rng=rng,
    )
