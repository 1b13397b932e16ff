"""Data-parallel training on a mesh of devices, partitioned by JAX's own compiler (GSPMD).

Data parallelism over D devices is a choice of shardings for the one training program, which
stays as it is; the SPMD partitioner splits it. On a 1-D mesh with axis ``"data"``:

- a batch of B examples is split along its leading axis, device d holding rows
  [d·B/D, (d+1)·B/D), so B must divide by D;
- the training set is split the same way (padded to a multiple of D rows that are never drawn),
  so each device holds N/D examples; a step's gather of its random rows becomes a local gather
  and one all-reduce of the batch, not a copy of the whole set;
- parameters, the model's state (batch statistics), the step count and the key are replicated;
- each optimizer-state leaf is sharded like the parameter it belongs to (replicated, since the
  parameters are), or, with ZeRO-1 (Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054),
  split along dimension j* = argmax {n_j : n_j mod D = 0, n_j ≥ D} of its shape (n_1, ..., n_k)
  and replicated when no dimension qualifies. Per device that holds

      Σ_{split leaves} size/D + Σ_{other leaves} size

  instead of Σ size: about 1/D when the large leaves split.

Because partitioning keeps the program's meaning, every reduction over the batch is the global
one: the mean loss (1/B) Σ_i ℓ_i and its gradient, batch norm's mean and variance over all B
examples, and the global norm ‖g‖ = sqrt(Σ g²) each become per-device partial sums joined by an
all-reduce. Results equal one device's up to the order in which float32 sums are added. Dropout
masks are the same on any number of devices: ``jax.random`` values are a function of the key and
the shape only. ``jax_threefry_partitionable`` (on by default; the tests check both settings)
changes which bits a key gives, not that they are independent of the sharding; it lets each
device generate just its own rows instead of all of them, so it is left as it is.

Across processes (after ``jax.distributed.initialize()``, see docs/multi_device.md) the mesh
spans every process's devices and nothing above changes; only placing host data does.
``jax.device_put`` cannot place an array of one process on devices of others, so
:func:`place_sharded` and :func:`shard_dataset` (and the functions built on them) have each
process build the shards of its own devices from its copy of the array
(``jax.make_array_from_callback``): every process must hold the same values, and each keeps
only the rows of its own devices.
"""

from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxtricks.training.state import TrainState


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices, for data parallelism.

    The mesh's axis is ``Auto`` (GSPMD): shardings are hints the compiler propagates through an
    unchanged program, so code written for one device runs on the mesh as it is.

    Args:
        num_devices: how many of ``jax.devices()`` to use, in [1, ``jax.device_count()``];
            ``None`` for all of them (after ``jax.distributed.initialize()``, every host's).
        axis: the name of the mesh axis the batch is split along.

    Returns:
        A :class:`jax.sharding.Mesh` of shape ``{axis: num_devices}``.

    Examples:
        >>> mesh = make_mesh(1)
        >>> dict(mesh.shape)
        {'data': 1}
    """
    available = jax.device_count()
    if num_devices is None:
        num_devices = available
    if isinstance(num_devices, bool) or not isinstance(num_devices, int | np.integer):
        raise ValueError(f"num_devices must be an int or None, got {num_devices!r}")
    if not 1 <= num_devices <= available:
        raise ValueError(
            f"num_devices must be in [1, {available}] (the devices JAX sees), got {num_devices}"
        )
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"axis must be a non-empty str, got {axis!r}")
    return jax.make_mesh(
        (int(num_devices),),
        (axis,),
        axis_types=(AxisType.Auto,),
        devices=jax.devices()[:num_devices],
    )


def _data_axis(mesh: Any) -> tuple[str, int]:
    """The name and size of a 1-D mesh's axis; ``ValueError`` for anything else."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must have one axis (the data axis), got {dict(mesh.shape)}")
    (axis,) = mesh.axis_names
    return axis, mesh.shape[axis]


def check_mesh(mesh: Any) -> Mesh:
    """Raises ``ValueError`` unless ``mesh`` is a 1-D :class:`jax.sharding.Mesh`; returns it."""
    _data_axis(mesh)
    return mesh


def check_divisible(name: str, size: int, mesh: Mesh) -> None:
    """Raises ``ValueError`` unless ``size`` examples split evenly over the mesh's devices."""
    axis, devices = _data_axis(mesh)
    if size % devices:
        raise ValueError(
            f"{name} must be divisible by the {devices} devices of the mesh axis {axis!r} "
            f"(each holds {name} / {devices} examples), got {size}"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: its leading axis split over the mesh axis, the rest whole.

    Examples:
        >>> batch_sharding(make_mesh(1)).spec
        P('data',)
    """
    axis, _ = _data_axis(mesh)
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of an array every device holds whole.

    Examples:
        >>> replicated_sharding(make_mesh(1)).spec
        P()
    """
    _data_axis(mesh)
    return NamedSharding(mesh, PartitionSpec())


def zero1_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """The ZeRO-1 sharding of an optimizer-state leaf of ``shape`` over the D mesh devices.

    Split along j* = argmax {n_j : n_j mod D = 0, n_j >= D} (the first such on ties), so each
    device holds 1/D of the leaf; replicated when no dimension qualifies (scalars, odd sizes).

    Args:
        shape: the leaf's shape.
        mesh: a 1-D mesh.

    Returns:
        A :class:`jax.sharding.NamedSharding`.

    Examples:
        >>> mesh = make_mesh(1)
        >>> zero1_sharding((3, 64, 16), mesh).spec, zero1_sharding((), mesh).spec
        (P(None, 'data'), P())
    """
    axis, devices = _data_axis(mesh)
    candidates = [j for j, n in enumerate(shape) if n >= devices and n % devices == 0]
    if not candidates:
        return NamedSharding(mesh, PartitionSpec())
    split = max(candidates, key=lambda j: (shape[j], -j))
    return NamedSharding(mesh, PartitionSpec(*[None] * split, axis))


def opt_state_sharding(
        optimizer: optax.GradientTransformation,
        opt_state: Any,
        params_sharding: Any,
        mesh: Mesh,
) -> Any:
    """The shardings of an optimizer state that follow its parameters' shardings.

    Every subtree of ``opt_state`` that mirrors the parameters (Adam's μ and ν, momentum's
    velocity, ...) gets ``params_sharding`` leaf for leaf, found as
    :func:`optax.tree_utils.tree_map_params` finds them; every other leaf (step counters,
    scalars) is replicated. Use it when the parameters themselves are sharded; with replicated
    parameters it replicates everything, as :func:`train_state_sharding` does.

    Args:
        optimizer: the transformation that made ``opt_state``.
        opt_state: its state (only its structure and shapes are read).
        params_sharding: one sharding per parameter leaf, in the parameters' pytree structure.
        mesh: the mesh of the replicated leaves.

    Returns:
        A pytree of shardings with ``opt_state``'s structure.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> mesh = make_mesh(1)
        >>> params = {"w": jnp.ones((4, 2))}
        >>> optimizer = optax.adam(1e-3)
        >>> split = {"w": NamedSharding(mesh, PartitionSpec(None, "data"))}
        >>> shardings = opt_state_sharding(optimizer, optimizer.init(params), split, mesh)
        >>> shardings[0].mu["w"].spec, shardings[0].count.spec
        (P(None, 'data'), P())
    """
    replicated = replicated_sharding(mesh)
    return optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        opt_state,
        params_sharding,
        transform_non_params=lambda _: replicated,
    )


def train_state_sharding(
        state: TrainState, mesh: Mesh, *, shard_optimizer_state: bool = False
) -> TrainState:
    """The shardings of a data-parallel training state, one per leaf.

    ``step``, ``params``, ``model_state`` and ``rng`` are replicated. Each ``opt_state`` leaf is
    replicated like the parameters it belongs to, or with ``shard_optimizer_state`` split as
    :func:`zero1_sharding` says (counters and other small leaves stay replicated).

    Args:
        state: a :class:`~jaxtricks.training.state.TrainState` (only its shapes are read, so
            traced or abstract values work too).
        mesh: a 1-D mesh.
        shard_optimizer_state: ZeRO-1: split the optimizer state across the devices.

    Returns:
        A ``TrainState`` whose leaves are :class:`jax.sharding.NamedSharding` objects.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"kernel": jnp.ones((4, 8))}
        >>> state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
        ...                    opt_state=optax.adam(1e-3).init(params), rng=jax.random.key(0))
        >>> shardings = train_state_sharding(state, make_mesh(1), shard_optimizer_state=True)
        >>> shardings.params["kernel"].spec, shardings.opt_state[0].mu["kernel"].spec
        (P(), P(None, 'data'))
    """
    if not isinstance(shard_optimizer_state, bool):
        raise ValueError(
            f"shard_optimizer_state must be a bool, got {shard_optimizer_state!r}"
        )
    replicated = replicated_sharding(mesh)
    if shard_optimizer_state:
        opt_state = jax.tree.map(lambda leaf: zero1_sharding(jnp.shape(leaf), mesh),
                                 state.opt_state)
    else:
        opt_state = jax.tree.map(lambda _: replicated, state.opt_state)
    # A TrainState of shardings (its fields are typed as arrays, so built by tree.map).
    return jax.tree.map(lambda _: replicated, state)._replace(opt_state=opt_state)


def shard_train_state(
        state: TrainState, mesh: Mesh, *, shard_optimizer_state: bool = False
) -> TrainState:
    """Places a training state on the mesh as :func:`train_state_sharding` says.

    Args:
        state: a :class:`~jaxtricks.training.state.TrainState` of concrete arrays.
        mesh: a 1-D mesh.
        shard_optimizer_state: ZeRO-1: split the optimizer state across the devices.

    Returns:
        The state, its arrays placed on the mesh's devices.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> params = {"kernel": jnp.ones((4, 8))}
        >>> state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
        ...                    opt_state=optax.adam(1e-3).init(params), rng=jax.random.key(0))
        >>> shard_train_state(state, make_mesh(1)).params["kernel"].sharding.spec
        P()
    """
    shardings = train_state_sharding(state, mesh, shard_optimizer_state=shard_optimizer_state)
    return place_sharded(state, shardings)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every array of ``batch`` on the mesh, split along its leading axis.

    Args:
        batch: a pytree of arrays sharing a leading batch axis of size B, B divisible by the
            number of devices D (``ValueError`` otherwise).
        mesh: a 1-D mesh.

    Returns:
        The batch, each device holding B/D rows of every array.

    Examples:
        >>> import jax.numpy as jnp
        >>> images, labels = shard_batch((jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)), make_mesh(1))
        >>> images.sharding.spec
        P('data',)
    """
    for leaf in jax.tree.leaves(batch):
        check_divisible("the batch size", jnp.shape(leaf)[0], mesh)
    sharding = batch_sharding(mesh)
    return place_sharded(batch, jax.tree.map(lambda _: sharding, batch))


def shard_dataset(arrays: Any, mesh: Mesh) -> Any:
    """Places a dataset on the mesh, split along its example axis, without dividing N.

    Each array of N >= 1 rows is padded to N' = D·⌈N / D⌉ rows by repeating its last row, and
    device d holds rows [d·N'/D, (d+1)·N'/D). The padding is never read by training, whose
    indices come from a permutation of the N real examples; the repeated last row keeps the
    arrays' value ranges (e.g. of the labels) unchanged.

    A host (NumPy) array is copied shard by shard, each process copying only the rows of its own
    devices (across processes every process must pass the same array); a ``jax.Array`` is padded
    on its devices and resharded.

    Args:
        arrays: a pytree of arrays sharing a leading axis of N >= 1 examples.
        mesh: a 1-D mesh.

    Returns:
        The padded arrays, each device holding N'/D rows.

    Examples:
        >>> import numpy as np
        >>> images = shard_dataset(np.arange(5.0, dtype=np.float32)[:, None], make_mesh(1))
        >>> images.shape, images.sharding.spec
        ((5, 1), P('data',))
    """
    _, devices = _data_axis(mesh)
    sharding = batch_sharding(mesh)

    def place_leaf(leaf):
        if not isinstance(leaf, np.ndarray | jax.Array):
            leaf = np.asarray(leaf)
        rows = leaf.shape[0] if leaf.ndim else 0
        if rows == 0:
            raise ValueError(f"arrays must have a leading axis of N >= 1 rows, got {leaf.shape}")
        padded = rows + -rows % devices
        if isinstance(leaf, jax.Array) and (sharding.is_fully_addressable
                                            or not leaf.is_fully_addressable):
            if padded > rows:
                leaf = jnp.pad(leaf, [(0, padded - rows)] + [(0, 0)] * (leaf.ndim - 1),
                               mode="edge")
            return jax.device_put(leaf, sharding)
        host = np.asarray(leaf)

        def shard(index):
            # Row r of the padded array is row min(r, N - 1); indexing with an array copies
            # exactly this device's rows, never the whole array.
            first, stop, _ = index[0].indices(padded)
            return host[np.minimum(np.arange(first, stop), rows - 1)][(slice(None), *index[1:])]

        return jax.make_array_from_callback((padded, *host.shape[1:]), sharding, shard)

    return jax.tree.map(place_leaf, arrays)


def place_sharded(tree: Any, shardings: Any) -> Any:
    """Places every array of ``tree`` as ``shardings`` says, on other processes' devices too.

    Where a sharding's devices all belong to this process, or the array is already spread over
    the processes, it is ``jax.device_put``. Where a sharding spans other processes' devices
    (after ``jax.distributed.initialize()``) and the array is this process's own (a NumPy array,
    or a ``jax.Array`` on this process's devices), each process copies the shards of its own
    devices from its array, so every process must pass the same values (the same data, the same
    seed). Typed PRNG keys are placed as their key data.

    Args:
        tree: a pytree of arrays.
        shardings: one :class:`jax.sharding.Sharding` per leaf, in ``tree``'s structure.

    Returns:
        The placed arrays.

    Examples:
        >>> import jax.numpy as jnp
        >>> placed = place_sharded({"w": jnp.ones(2)}, {"w": replicated_sharding(make_mesh(1))})
        >>> placed["w"].sharding.spec
        P()
    """

    def place_leaf(leaf, sharding):
        if sharding.is_fully_addressable or (isinstance(leaf, jax.Array)
                                             and not leaf.is_fully_addressable):
            return jax.device_put(leaf, sharding)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = place_leaf(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding,
                                            lambda index: np.array(host[index]))

    return jax.tree.map(place_leaf, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array of ``tree`` whole on every device of the mesh.

    Examples:
        >>> import jax.numpy as jnp
        >>> replicate({"w": jnp.ones(3)}, make_mesh(1))["w"].sharding.spec
        P()
    """
    sharding = replicated_sharding(mesh)
    return place_sharded(tree, jax.tree.map(lambda _: sharding, tree))


def per_device_bytes(tree: Any) -> int:
    """The most bytes of ``tree``'s arrays that any one local device holds.

    Math: max_d Σ_{leaves} Σ_{shards s of the leaf on device d} bytes(s), read from the
    arrays' actual shards, so replicated leaves count whole and split leaves count 1/D.

    Args:
        tree: a pytree of ``jax.Array``.

    Returns:
        An int, 0 for an empty tree.

    Examples:
        >>> import jax.numpy as jnp
        >>> per_device_bytes({"w": jnp.ones((4, 2), jnp.float32), "n": jnp.zeros((), jnp.int32)})
        36
    """
    held: Counter = Counter()
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return max(held.values(), default=0)
