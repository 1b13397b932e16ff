"""Mixed precision: float32 master parameters, a 16-bit compute dtype, dynamic loss scaling.

A :class:`Precision` policy names three dtypes (Micikevicius et al., 2018):

- the **param dtype** (float32) of the parameters θ and of the optimizer state: the master
  copy, updated as θ ← θ + u in full precision, so that updates far smaller than θ are not
  rounded away;
- the **compute dtype** (bfloat16 or float16) of the forward and backward passes: a step runs
  the model on c(θ) and c(x), the parameters and the floating inputs cast to it, so every
  activation kept for the backward pass takes half the bytes;
- the **output dtype** (float32) the model's outputs are cast to before the loss, so the
  log-softmax and the batch mean are float32.

The casts are inside the differentiated function, so ∇_θ L comes back through them in the
param dtype. float16 keeps 5 exponent bits: a gradient below 2⁻²⁴ flushes to zero, one above
65504 overflows. **Dynamic loss scaling** differentiates the loss times s and divides the
gradients by s in float32,

    g = (1/s) ∇_θ (s · L(θ)),

and adapts s: a step whose g holds a NaN or an infinity (the scaled backward pass overflowed)
is skipped and s ← s/2; once ``growth_interval`` steps in a row were finite, the next finite
one doubles s. bfloat16 keeps float32's 8 exponent bits and needs no scaling.

Design:

- The policy is our own few lines rather than DeepMind's ``jmp``: jmp's last release, 0.0.4
  (marked beta), dates from January 2023, and it would be one more runtime dependency for a
  few casts. The loss scale is Flax's own
  ``flax.training.dynamic_scale.DynamicScale`` (Flax is a dependency already, and maintained).
- The loss scale is kept in the optimizer state (:class:`LossScaleState` wraps the optimizer's
  own state), not in a new field of :class:`~jaxtricks.training.state.TrainState`: it then
  checkpoints, shards and restores with the optimizer state through code that already handles
  it, and every other state stays as it was.

Examples:
    >>> import jax.numpy as jnp
    >>> policy = precision_policy("bf16")
    >>> policy.cast_to_compute({"w": jnp.ones(2), "n": jnp.arange(2)})["w"].dtype
    dtype(bfloat16)
    >>> policy.cast_to_compute({"w": jnp.ones(2), "n": jnp.arange(2)})["n"].dtype
    dtype('int32')
    >>> str(precision_policy("fp16"))
    'params=float32,compute=float16,output=float32,loss_scale=dynamic'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.dynamic_scale import DynamicScale

__all__ = [
    "PRECISIONS",
    "DynamicScale",
    "LossScaleState",
    "Precision",
    "as_precision",
    "precision_policy",
]

# The names the command line and ``fit`` take.
PRECISIONS = ("fp32", "bf16", "fp16")


def _cast_floating(tree: Any, dtype: np.dtype) -> Any:
    """Every floating array leaf of ``tree`` cast to ``dtype``; other leaves untouched."""

    def cast(leaf: Any) -> Any:
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: the dtypes a training step keeps, computes and outputs in.

    Attributes:
        compute_dtype: the dtype the model runs in (float32, bfloat16 or float16).
        param_dtype: the dtype of the master parameters and the optimizer state.
        output_dtype: the dtype of the model's outputs as the loss sees them.
        loss_scale: the initial dynamic loss scale and its settings, a Flax ``DynamicScale``
            holding Python numbers (``scale``, ``growth_interval``, ``growth_factor``,
            ``backoff_factor``, ``minimum_scale``); None: no loss scaling.

    Equal policies compare and hash equal, so compiled steps built for one are reused.

    Examples:
        >>> import jax.numpy as jnp
        >>> policy = Precision(compute_dtype=jnp.bfloat16)
        >>> policy.cast_to_output(policy.cast_to_compute(jnp.ones(2))).dtype
        dtype('float32')
    """

    compute_dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32
    loss_scale: DynamicScale | None = None

    def __post_init__(self) -> None:
        for name in ("compute_dtype", "param_dtype", "output_dtype"):
            value = getattr(self, name)
            try:
                dtype = jnp.dtype(value)
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"{name} must be a floating dtype, got {value!r}")
            object.__setattr__(self, name, dtype)
        scale = self.loss_scale
        if scale is None:
            return
        if not isinstance(scale, DynamicScale):
            raise ValueError(
                f"loss_scale must be a flax.training.dynamic_scale.DynamicScale or None, got "
                f"{type(scale).__name__}"
            )
        number = isinstance(scale.scale, int | float) and not isinstance(scale.scale, bool)
        if not (number and math.isfinite(scale.scale) and scale.scale > 0):
            raise ValueError(
                f"loss_scale.scale must be a finite Python number > 0 (the initial scale), got "
                f"{scale.scale!r}"
            )
        if isinstance(scale.fin_steps, bool) or not isinstance(scale.fin_steps, int):
            raise ValueError(f"loss_scale.fin_steps must be a Python int, got {scale.fin_steps!r}")

    def __str__(self) -> str:
        text = (f"params={self.param_dtype.name},compute={self.compute_dtype.name},"
                f"output={self.output_dtype.name}")
        return text + (",loss_scale=dynamic" if self.loss_scale is not None else "")

    def cast_to_compute(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` (parameters, inputs) in the compute dtype."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` in the param dtype."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """The floating leaves of ``tree`` (the model's outputs) in the output dtype."""
        return _cast_floating(tree, self.output_dtype)

    def wrap_opt_state(self, opt_state: Any) -> Any:
        """The optimizer state a training state keeps under this policy: ``opt_state`` itself,
        or with loss scaling a :class:`LossScaleState` holding the initial scale and it."""
        if self.loss_scale is None:
            return opt_state
        initial = self.loss_scale.replace(
            scale=jnp.asarray(self.loss_scale.scale, jnp.float32),
            fin_steps=jnp.asarray(self.loss_scale.fin_steps, jnp.int32),
        )
        return LossScaleState(initial, opt_state)


class LossScaleState(NamedTuple):
    """The optimizer state of a run with dynamic loss scaling."""

    loss_scale: DynamicScale  # scale: shape=(), float32; fin_steps: shape=(), int32
    inner_state: Any  # the optimizer's own state


def precision_policy(name: str) -> Precision:
    """The policy called ``name``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``fp32`` computes in float32 (casting nothing that is float32 already); ``bf16`` computes
    in bfloat16; ``fp16`` computes in float16 with Flax's default dynamic loss scale (initial
    scale 2¹⁶, doubled on the finite step after 2,000 finite steps in a row, halved on an
    overflow). All three keep
    float32 parameters, optimizer state and outputs.

    Examples:
        >>> precision_policy("bf16").compute_dtype
        dtype(bfloat16)
    """
    if name == "fp32":
        return Precision()
    if name == "bf16":
        return Precision(compute_dtype=jnp.bfloat16)
    if name == "fp16":
        return Precision(compute_dtype=jnp.float16, loss_scale=DynamicScale())
    raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")


def as_precision(precision: Precision | str | None) -> Precision | None:
    """``precision`` as a policy: a :class:`Precision` as it is, a name of :data:`PRECISIONS`
    through :func:`precision_policy`, None as None (no policy: nothing is cast).

    Examples:
        >>> as_precision("fp32") == Precision(), as_precision(None)
        (True, None)
    """
    if precision is None or isinstance(precision, Precision):
        return precision
    if isinstance(precision, str):
        return precision_policy(precision)
    raise ValueError(
        f"precision must be a Precision, one of {PRECISIONS} or None, got {precision!r}"
    )
