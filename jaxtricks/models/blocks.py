"""The pieces every jaxtricks model is built from: weights, batch norm, activation, dropout.

A hidden layer applies the weights ``W`` (a dense or convolutional layer), then, when batch
normalization is on, normalizes each feature over the batch, then the activation ``φ``::

    z = W x                                     (no bias under batch norm: β replaces it)
    ẑ = γ (z - μ) / sqrt(σ² + ε) + β            (batch norm, Ioffe & Szegedy, 2015)
    h = φ(ẑ)

In training ``μ`` and ``σ²`` are the batch mean and (biased) variance of each feature and the
running averages are updated as ``μ_run ← m μ_run + (1 - m) μ`` (same for ``σ²``), with
``m = batch_norm_momentum``; in evaluation ``μ_run`` and ``σ²_run`` are used and nothing is
updated. The running averages live in the ``batch_stats`` collection.

Dropout (Srivastava et al., 2014) is inverted: in training each unit is kept with probability
``1 - r`` and scaled, ``y = mask * x / (1 - r)`` with ``mask ~ Bernoulli(1 - r)``, so that
``E[y] = x``; in evaluation ``y = x``. Its randomness comes from the ``"dropout"`` RNG
collection.

The input of every activation is sown into the ``intermediates`` collection under the name
``"preactivations"``; apply with ``mutable=["intermediates"]`` to read them, e.g. to see that
batch norm keeps them in range. Otherwise sowing does nothing.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtricks.backend import speed_paths
from jaxtricks.models.batch_norm import BatchNorm
from jaxtricks.models.conv import conv_general_dilated_by_shifts
from jaxtricks.tricks.checks import check_callable, check_int, check_range
from jaxtricks.tricks.initializers import he_normal

Initializer = Callable[..., jax.Array]


def check_sizes(name: str, sizes: Sequence[int]) -> None:
    """Raises ``ValueError`` unless ``sizes`` is a non-empty sequence of positive ints."""
    if isinstance(sizes, str) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {sizes!r}")
    for size in sizes:
        check_int(name, size, 1)


def check_input(model: str, x: jax.Array, *, ndim: int | None, expected: str) -> None:
    """Raises ``ValueError`` unless ``x`` is a floating array of the expected rank.

    ``ndim=None`` accepts any rank of at least 2 (a batch axis and features).
    """
    shape = tuple(jnp.shape(x))
    rank_ok = len(shape) >= 2 if ndim is None else len(shape) == ndim
    dtype = jnp.result_type(x)
    if not (rank_ok and jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(
            f"{model} expects a floating batch of shape {expected}, "
            f"got shape {shape} and dtype {dtype}"
        )


class NormActModule(nn.Module):
    """Base of a module whose hidden layers are weights → [batch norm] → activation.

    Attributes:
        use_batch_norm: normalize each weight layer's output before the activation.
        batch_norm_momentum: ``m`` in the running-average update, in ``[0, 1]``.
        activation: the non-linearity ``φ``, any callable ``array -> array``.
        kernel_init: initializer of every Dense and Conv kernel, with the
            ``jax.nn.initializers`` signature ``(key, shape, dtype) -> array``. The default,
            :func:`jaxtricks.tricks.initializers.he_normal` (variance ``2 / fan_in``, He et al.,
            2015, a truncated normal as ``jax.nn.initializers.he_normal``), suits the default
            ReLU; with tanh pass ``lecun_normal()`` or ``glorot_normal()`` from the same module
            (or the lesson's untruncated ``gaussian()``, ``glorot_normal_untruncated()``).
        dtype: the compute dtype of the Dense and Conv layers; None (the default) computes in
            the dtype of the inputs and parameters as they arrive, so a precision policy that
            casts both (:mod:`jaxtricks.training.precision`) decides. Parameters are created in
            float32, and batch norm computes in float32 before casting back.
    """

    _: dataclasses.KW_ONLY
    use_batch_norm: bool = False
    batch_norm_momentum: float = 0.9
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    kernel_init: Initializer = he_normal()
    dtype: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("batch_norm_momentum", self.batch_norm_momentum, 0.0, 1.0)
        check_callable("activation", self.activation)
        check_callable("kernel_init", self.kernel_init)
        if self.dtype is not None and not jnp.issubdtype(self.dtype, jnp.floating):
            raise ValueError(f"dtype must be a floating dtype or None, got {self.dtype!r}")

    def dense(self, features: int, **kwargs: Any) -> nn.Dense:
        """A Dense layer, without bias when batch norm follows it."""
        return nn.Dense(
            features,
            use_bias=not self.use_batch_norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            **kwargs,
        )

    def conv(self, features: int, kernel_size: int, strides: int = 1, *, train: bool = False,
             **kwargs: Any) -> nn.Conv:
        """A square Conv layer with ``SAME`` padding, without bias when batch norm follows it.

        With ``train=True`` and the backend's ``one_channel_conv_by_shifts`` speed path
        (:func:`jaxtricks.backend.speed_paths`), a one-channel input is convolved by
        :func:`jaxtricks.models.conv.conv_general_dilated_by_shifts`: the same layer and
        parameters, its forward pass as shifted multiply-adds.
        """
        if train and speed_paths().one_channel_conv_by_shifts:
            kwargs.setdefault("conv_general_dilated", conv_general_dilated_by_shifts)
        return nn.Conv(
            features,
            (kernel_size, kernel_size),
            strides=(strides, strides),
            use_bias=not self.use_batch_norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            **kwargs,
        )

    # The batch-norm layer: jaxtricks' (Flax's layer with a faster training path). A subclass
    # may set flax.linen.BatchNorm, as the benchmarks' plain-Flax baseline does.
    batch_norm_layer = BatchNorm

    def normalize(self, z: jax.Array, train: bool) -> jax.Array:
        """Batch norm of ``z`` over all axes but the last when it is on, else ``z``."""
        if not self.use_batch_norm:
            return z
        # In float32 throughout: statistics need the precision, and Flax's layer mixes float32
        # statistics with a low-precision input, which strict dtype promotion refuses.
        normalized = self.batch_norm_layer(
            use_running_average=not train,
            momentum=self.batch_norm_momentum,
            dtype=jnp.float32,
        )(z.astype(jnp.float32))
        return normalized.astype(z.dtype)

    def activate(self, z: jax.Array) -> jax.Array:
        """``φ(z)``, sowing ``z`` as a pre-activation."""
        self.sow("intermediates", "preactivations", z)
        return self.activation(z)


class Classifier(NormActModule):
    """Base of a model mapping a batch to logits, with dropout and a Dense head.

    Attributes:
        num_classes: the number of logits per example.
        dropout_rate: the probability ``r`` of zeroing a unit in training, in ``[0, 1)``.
        Others: see :class:`NormActModule`.
    """

    _: dataclasses.KW_ONLY
    num_classes: int = 10
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_classes", self.num_classes, 1)
        check_range("dropout_rate", self.dropout_rate, 0.0, 1.0, high_open=True)

    def dropout(self, h: jax.Array, train: bool) -> jax.Array:
        """Inverted dropout of ``h`` in training, the identity in evaluation."""
        return nn.Dropout(self.dropout_rate, deterministic=not train)(h)

    def head(self, h: jax.Array) -> jax.Array:
        """The float32 logits ``W h + b`` of shape ``(N, num_classes)``."""
        logits = nn.Dense(
            self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="head"
        )(h)
        return logits.astype(jnp.float32)

