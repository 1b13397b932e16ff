"""Flat buffers: a pytree's small leaves as one contiguous 1-D buffer per dtype.

A model with many small parameter tensors makes every optimizer step pay per leaf: each leaf
is a separate argument of the jit-compiled step, a separate set of fused loops in the program
and a separate piece of optimizer state. Laid end to end, the leaves of one dtype form a
single vector, and an elementwise transform does the same arithmetic on that vector:

    leaves  x_1, …, x_k  (shapes s_i, dtype d_i)
    buffer  B_d = concat(ravel(x_i) for every small i with d_i = d)    one per dtype d
    view    x_i = reshape(B_{d_i}[o_i : o_i + |s_i|], s_i)             o_i the offset of x_i

A leaf larger than ``max_leaf_size`` elements (default 2¹⁶) is left whole as a buffer of its
own: its per-leaf overhead is small next to its memory traffic, and copying it into a
buffer every step would only add traffic (concatenating every leaf made a ResNet-50 Adam step
slower than Optax's; see docs/benchmarks.md#optimizer-step-against-optax).

Two ways to use it, neither of which changes the transform API:

* :func:`flatten_by_dtype` wraps any ``optax.GradientTransformation``: it concatenates the
  updates (and params) into the buffers, runs the inner transform on the dict of buffers, so
  its state holds one buffer per dtype, and splits the result back into the original tree.
  The parameters stay a tree; the step still concatenates and splits. On XLA:CPU each
  split-off leaf is a kernel of its own, compiled separately (kernels of equal shape are
  otherwise compiled once), so on thousands of small leaves this compiles *slower* than
  the plain transform while it steps faster.
* :func:`flat_params` turns the parameters themselves into buffers and returns the function
  that gives the model its views. Differentiating through the views yields flat gradients,
  so the step runs on a few big buffers and concatenates nothing.

Which transforms are exact under flattening. A transform is *flatten-safe* when it treats
every coordinate alike, or only uses sums over all leaves together:

* elementwise: ``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``,
  ``adamw`` without a mask, ``scale_by_learning_rate``, ``clip_by_value``,
  ``add_decayed_weights`` and ``add_l2_penalty`` without a mask: the same arithmetic for
  every coordinate (bit for bit in float64 in the tests; in float32 XLA:CPU has been seen to
  round a coordinate of a long buffer one ulp away from the same coordinate as a scalar
  leaf). The parameter averages (``ema_params``, ``polyak_params``, ``swa_params``) are
  elementwise too and run on :func:`flat_params` buffers as they are.
* global reductions: ``clip_by_global_norm``, ``normalize_by_global_norm``,
  ``normalized_sgd``, ``skip_nonfinite``, ``scale_by_plateau``: the global norm over the
  buffers is the global norm over the leaves, ``‖g‖² = Σ_d ‖B_d‖² = Σ_i ‖x_i‖²``; only the
  order of the float32 summation differs, so results agree to rounding, not bit for bit.
* NOT flatten-safe: anything that looks at single leaves or at the tree's paths:
  ``clip_by_norm`` (per-leaf norms become per-dtype norms), ``gradient_health`` and
  ``update_health`` (per-layer norms), masks given as trees or functions of the tree
  (``add_decayed_weights(mask=…)``, ``optax.masked``, ``optax.multi_transform``), and
  layer-wise trust ratios (LARS, LAMB). Put those outside the flattened part of the chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Buffers = dict[str, jax.Array]

# 2¹⁶ elements (256 KiB in float32). A judgement, not a tuned value: a leaf this large is
# bandwidth-bound, and concatenating it only adds copies (every leaf of ResNet-50
# concatenated made its Adam step 2.3x Optax's, 2-core CPU, `python -m
# benchmarks.optimizer_step --trees resnet50 --optimizers adam --implementations
# optax,jaxtricks_flat_all`).
DEFAULT_MAX_LEAF_SIZE = 2**16


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where each leaf of a pytree lives in the flat buffers.

    Leaves of at most ``max_leaf_size`` elements go into one 1-D buffer per dtype, named by
    the dtype (``"float32"``); a larger leaf is its own buffer, unchanged, named by its path
    (``"['fc']['kernel']"``). Built once from a template tree with :meth:`of`; it is static
    (hashable, no arrays), so it can sit in a jit-compiled function's closure or in a
    pytree's static metadata.

    Attributes:
      treedef: the template's pytree structure (``None`` leaves are part of it).
      shapes: each leaf's shape, in ``jax.tree.leaves`` order.
      dtypes: each leaf's dtype, in the same order.
      paths: each leaf's path (``jax.tree_util.keystr``), in the same order.
      max_leaf_size: the largest leaf that is concatenated; ``None`` concatenates all.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    paths: tuple[str, ...]
    max_leaf_size: int | None
    # Derived in __post_init__: dtype buffer -> ((leaf index, start, stop), ...); large-leaf
    # buffer -> leaf index; every buffer's shape.
    slots: dict[str, tuple[tuple[int, int, int], ...]] = dataclasses.field(
        init=False, compare=False, repr=False
    )
    whole: dict[str, int] = dataclasses.field(init=False, compare=False, repr=False)
    buffer_shapes: dict[str, tuple[int, ...]] = dataclasses.field(
        init=False, compare=False, repr=False
    )
    _hash: int = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        slots: dict[str, list[tuple[int, int, int]]] = {}
        whole: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for index, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes, strict=True)):
            size = _size(shape)
            if self.max_leaf_size is not None and size > self.max_leaf_size:
                whole[self.paths[index]] = index
                continue
            name = jnp.dtype(dtype).name
            start = sizes.get(name, 0)
            slots.setdefault(name, []).append((index, start, start + size))
            sizes[name] = start + size
        shapes: dict[str, tuple[int, ...]] = {name: (sizes[name],) for name in slots}
        shapes.update({name: self.shapes[i] for name, i in whole.items()})
        object.__setattr__(self, "slots", {name: tuple(slots[name]) for name in sorted(slots)})
        object.__setattr__(self, "whole", whole)
        object.__setattr__(self, "buffer_shapes", {name: shapes[name] for name in sorted(shapes)})
        # jit hashes static metadata on every call; a 2,000-leaf layout is hashed only once.
        object.__setattr__(
            self, "_hash", hash((self.treedef, self.shapes, self.dtypes, self.max_leaf_size))
        )

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, tree: Any, max_leaf_size: int | None = DEFAULT_MAX_LEAF_SIZE) -> FlatLayout:
        """The layout of ``tree``: its structure, leaf shapes and dtypes.

        Args:
          tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``); ``None`` leaves are kept
            as structure and take no space.
          max_leaf_size: leaves with more elements stay buffers of their own (concatenating
            them costs a copy and saves nothing); ``None`` concatenates every leaf.

        Returns:
          A :class:`FlatLayout`.

        Raises:
          ValueError: when ``max_leaf_size`` is negative.
        """
        if max_leaf_size is not None and (
            isinstance(max_leaf_size, bool) or not isinstance(max_leaf_size, int)
            or max_leaf_size < 0
        ):
            raise ValueError(
                f"max_leaf_size must be None or an int >= 0, got {max_leaf_size!r}"
            )
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        return cls(
            treedef=treedef,
            shapes=tuple(tuple(int(d) for d in np.shape(leaf)) for _, leaf in with_paths),
            dtypes=tuple(jnp.dtype(jnp.result_type(leaf)) for _, leaf in with_paths),
            paths=tuple(jax.tree_util.keystr(path) for path, _ in with_paths),
            max_leaf_size=max_leaf_size,
        )

    def check(self, name: str, tree: Any) -> list[Any]:
        """The leaves of ``tree``; raises ``ValueError`` unless it matches this layout."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"{name} does not have the pytree structure the flat layout was built from: "
                f"got {treedef}, expected {self.treedef}"
            )
        for i, leaf in enumerate(leaves):
            shape, dtype = tuple(np.shape(leaf)), jnp.dtype(jnp.result_type(leaf))
            if shape != self.shapes[i] or dtype != self.dtypes[i]:
                raise ValueError(
                    f"{name} differs from the flat layout at {self.paths[i]}: got shape "
                    f"{shape} dtype {dtype}, expected shape {self.shapes[i]} dtype "
                    f"{self.dtypes[i]}"
                )
        return leaves

    def flatten(self, tree: Any, name: str = "tree") -> Buffers:
        """Concatenates the small leaves of ``tree`` into one 1-D buffer per dtype.

        Args:
          tree: a pytree with this layout's structure, shapes and dtypes.
          name: what to call ``tree`` in an error message.

        Returns:
          A dict from buffer name to array: a dtype name (``"float32"``, ``"bfloat16"``, …)
          to the concatenated small leaves of that dtype, a large leaf's path to that leaf.

        Raises:
          ValueError: when ``tree`` does not match the layout.
        """
        leaves = self.check(name, tree)
        buffers = {}
        for key in self.buffer_shapes:
            if key in self.whole:
                buffers[key] = leaves[self.whole[key]]
                continue
            parts = [jnp.ravel(leaves[i]) for i, _, _ in self.slots[key]]
            buffers[key] = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        return buffers

    def unflatten(self, buffers: Buffers, name: str = "buffers") -> Any:
        """The tree whose leaves are views (slices, reshaped) of ``buffers``.

        A buffer may have another dtype than the layout's (e.g. a float32 moment of bfloat16
        parameters): the leaves keep the buffer's dtype.

        Args:
          buffers: a dict with this layout's buffer names and shapes.
          name: what to call ``buffers`` in an error message.

        Returns:
          A pytree with the layout's structure and shapes.

        Raises:
          ValueError: when the names or shapes differ from the layout's.
        """
        if not isinstance(buffers, dict) or sorted(buffers) != list(self.buffer_shapes):
            got = sorted(buffers) if isinstance(buffers, dict) else type(buffers).__name__
            raise ValueError(
                f"{name} must be a dict with the buffers {list(self.buffer_shapes)}, got {got}"
            )
        for key, shape in self.buffer_shapes.items():
            if np.shape(buffers[key]) != shape:
                raise ValueError(
                    f"{name}[{key!r}] must have shape {shape}, got {np.shape(buffers[key])}"
                )
        leaves: list[Any] = [None] * len(self.shapes)
        for key, i in self.whole.items():
            leaves[i] = buffers[key]
        for key, slots in self.slots.items():
            buffer = buffers[key]
            for i, start, stop in slots:
                piece = buffer if len(slots) == 1 else jax.lax.slice_in_dim(buffer, start, stop)
                leaves[i] = jnp.reshape(piece, self.shapes[i])
        return jax.tree.unflatten(self.treedef, leaves)


def _size(shape: tuple[int, ...]) -> int:
    """The number of elements of an array of ``shape`` (1 for a scalar)."""
    size = 1
    for d in shape:
        size *= d
    return size


@dataclasses.dataclass(frozen=True)
class FlatState:
    """State of :func:`flatten_by_dtype`.

    The layout is static pytree metadata, not a leaf: ``jit``, ``lax.cond`` and checkpointing
    see only the inner state's buffers.
    """

    inner_state: Any  # the inner transform's state over the dict of buffers (one per dtype)
    layout: FlatLayout  # static; the structure, shapes and dtypes of the params at init


jax.tree_util.register_dataclass(FlatState, data_fields=["inner_state"], meta_fields=["layout"])


def flatten_by_dtype(
    inner: optax.GradientTransformation, *, max_leaf_size: int | None = DEFAULT_MAX_LEAF_SIZE
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on one contiguous buffer per dtype instead of on every small leaf.

    Math: ``u = unflatten(inner(flatten(g), flatten(w)))`` where ``flatten`` concatenates the
    leaves of each dtype into one 1-D buffer and ``unflatten`` slices them back. Exact for
    elementwise transforms, equal up to summation order for global-norm ones; wrong for
    per-leaf ones (see the module docstring for the list).

    Args:
      inner: the transform to run on the buffers, e.g. ``adam(1e-3)`` or a chain.
      max_leaf_size: leaves with more elements are passed to ``inner`` as buffers of their
        own, unchanged; ``None`` concatenates every leaf.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`FlatState`;
      extra keyword arguments of ``update`` are passed to ``inner`` unchanged.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxtricks.tricks.optimizers import adam
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "h": jnp.ones(2, jnp.bfloat16)}
      >>> tx = flatten_by_dtype(adam(0.1))
      >>> state = tx.init(params)
      >>> {k: v.shape for k, v in state.inner_state[0].mu.items()}
      {'bfloat16': (2,), 'float32': (9,)}
      >>> updates, state = tx.update(params, state, params)
      >>> updates["w"].shape, updates["h"].dtype
      ((2, 3), dtype(bfloat16))
    """
    inner = optax.with_extra_args_support(inner)

    FlatLayout.of({}, max_leaf_size)  # validates max_leaf_size now, not at init

    def init_fn(params):
        layout = FlatLayout.of(params, max_leaf_size)
        return FlatState(inner_state=inner.init(layout.flatten(params, "params")), layout=layout)

    def update_fn(updates, state, params=None, **extra_args):
        layout = state.layout
        flat_updates = layout.flatten(updates, "updates")
        flat_params = None if params is None else layout.flatten(params, "params")
        flat_out, inner_state = inner.update(
            flat_updates, state.inner_state, flat_params, **extra_args
        )
        return (
            layout.unflatten(flat_out, "the inner transform's updates"),
            FlatState(inner_state=inner_state, layout=layout),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def flat_params(
    params: Any, *, max_leaf_size: int | None = DEFAULT_MAX_LEAF_SIZE
) -> tuple[Buffers, Callable[[Buffers], Any]]:
    """The parameters as one buffer per dtype, and the function that gives back the tree.

    Keep the buffers as the parameters: the model reads ``unflatten(buffers)`` (slices of the
    buffers), ``jax.grad`` through it returns gradients as buffers, and any flatten-safe
    transform updates the buffers without concatenating or splitting anything per step. The
    slicing moves into the model's program: as in :func:`flatten_by_dtype`, on XLA:CPU each
    small leaf's slice compiles as a kernel of its own.

    Args:
      params: a pytree of arrays.
      max_leaf_size: leaves with more elements stay buffers of their own, unchanged (the
        model then reads them directly, not through a slice); ``None`` concatenates all.

    Returns:
      ``(buffers, unflatten)``: a dict of buffers (see :meth:`FlatLayout.flatten`), and a
      function mapping any dict of buffers with the same names and shapes (parameters,
      gradients, moments) to a tree shaped like ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxtricks.tricks.optimizers import sgd
      >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
      >>> buffers, unflatten = flat_params(params)
      >>> loss = lambda b: jnp.sum(unflatten(b)["w"] ** 2) + jnp.sum(unflatten(b)["b"])
      >>> tx = sgd(0.5)
      >>> updates, _ = tx.update(jax.grad(loss)(buffers), tx.init(buffers))
      >>> unflatten(optax.apply_updates(buffers, updates))["w"].tolist()
      [[0.0, 0.0], [0.0, 0.0]]
    """
    layout = FlatLayout.of(params, max_leaf_size)
    buffers = layout.flatten(params, "params")
    # A whole leaf (or a dtype's only leaf) would be the caller's own array: copied, so that
    # donating the buffers to a jit-compiled step cannot delete the arrays in ``params``.
    originals = {id(leaf) for leaf in jax.tree.leaves(params)}
    buffers = {k: jnp.array(v, copy=True) if id(v) in originals else v for k, v in buffers.items()}
    return buffers, layout.unflatten
