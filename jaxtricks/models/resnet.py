"""A small residual network for 28×28 images (lesson points L3, L4, L7; He et al., 2016).

A basic residual block maps ``x`` to::

    y = φ(F(x) + S(x))     F(x) = BN(conv_3×3(φ(BN(conv_3×3,stride s(x)))))

where the shortcut ``S`` is the identity when the shape is kept and ``BN(conv_1×1,stride s(x))``,
a projection, when the stride or the number of channels changes. The residual is added before
the final activation. Without batch norm every ``BN`` above is the identity and the convs
carry biases.

The network is a 3×3 conv stem of ``width`` channels (``φ(BN(conv(x)))``), then stages of
``stage_sizes[i]`` blocks with ``width * 2**i`` channels, each stage after the first starting
with stride 2 (28 → 14 → 7), then global average pooling, dropout and a dense head.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxtricks.models.blocks import (
    Classifier,
    NormActModule,
    check_input,
    check_sizes,
)
from jaxtricks.tricks.checks import check_int


class ResidualBlock(NormActModule):
    """A basic residual block: two 3×3 convs and a shortcut, added before the last activation.

    ``y = φ(BN(conv(φ(BN(conv_s(x))))) + S(x))`` with ``S`` the identity, or a 1×1 conv with
    stride ``s`` (and batch norm) when the stride or the channels change.

    Attributes:
        features: the output channels.
        strides: the stride of the first conv and of the projection.
        use_batch_norm, batch_norm_momentum, activation, kernel_init, dtype: as in
            :class:`ResNet`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> block = ResidualBlock(16, strides=2, use_batch_norm=True)
        >>> x = jnp.ones((2, 28, 28, 8))
        >>> variables = block.init(jax.random.key(0), x, train=False)
        >>> block.apply(variables, x, train=False).shape
        (2, 14, 14, 16)
        >>> sorted(variables["params"])
        ['BatchNorm_0', 'BatchNorm_1', 'BatchNorm_2', 'Conv_0', 'Conv_1', 'projection']
    """

    features: int
    strides: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("features", self.features, 1)
        check_int("strides", self.strides, 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """The block's output, of shape ``(N, ⌈H / strides⌉, ⌈W / strides⌉, features)``.

        Args:
            x: a batch of feature maps of shape ``(N, H, W, C)``.
            train: batch statistics in training, running averages in evaluation.

        Returns:
            The output feature maps.
        """
        residual = self.conv(self.features, 3, self.strides)(x)
        residual = self.activate(self.normalize(residual, train))
        residual = self.normalize(self.conv(self.features, 3)(residual), train)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = self.conv(self.features, 1, self.strides, name="projection")(x)
            shortcut = self.normalize(shortcut, train)
        return self.activate(residual + shortcut)


class ResNet(Classifier):
    """A small ResNet classifier: conv stem, stages of residual blocks, pooling, dropout, head.

    Attributes:
        stage_sizes: the number of residual blocks in each stage.
        width: the channels of the stem and the first stage; each later stage doubles them.
        num_classes: the number of logits per example.
        use_batch_norm: batch norm after each conv's weights, before its activation (and before
            the residual add).
        dropout_rate: the probability ``r`` in ``[0, 1)`` of zeroing a pooled feature before the
            head, in training.
        activation: the non-linearity ``φ``, any callable.
        kernel_init: initializer of every kernel (``jax.nn.initializers`` signature); He normal,
            ``N(0, 2 / fan_in)``, by default, suited to ReLU.
        batch_norm_momentum: ``m`` in ``μ_run ← m μ_run + (1 - m) μ_batch``.
        dtype: the compute dtype; None: that of the inputs and parameters (a precision
            policy's). Parameters and logits are float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = ResNet(stage_sizes=(1, 1), width=8, use_batch_norm=True)
        >>> x = jnp.ones((2, 28, 28, 1))
        >>> variables = model.init(jax.random.key(0), x, train=False)
        >>> [name for name in variables["params"] if "Block" in name]
        ['ResidualBlock_0', 'ResidualBlock_1']
        >>> model.apply(variables, x, train=False).shape
        (2, 10)
    """

    stage_sizes: Sequence[int] = (1, 1, 1)
    width: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes("stage_sizes", self.stage_sizes)
        check_int("width", self.width, 1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """The logits of shape ``(N, num_classes)``.

        Args:
            x: a floating batch of images of shape ``(N, H, W, C)``, e.g. ``(N, 28, 28, 1)``.
            train: batch statistics and dropout in training; running averages and no dropout
                in evaluation.

        Returns:
            The float32 logits.
        """
        check_input("ResNet", x, ndim=4, expected="(N, H, W, C), e.g. (N, 28, 28, 1)")
        h = self.conv(self.width, 3, train=train)(x)
        h = self.activate(self.normalize(h, train))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for index in range(num_blocks):
                h = ResidualBlock(
                    self.width * 2**stage,
                    strides=2 if stage > 0 and index == 0 else 1,
                    use_batch_norm=self.use_batch_norm,
                    batch_norm_momentum=self.batch_norm_momentum,
                    activation=self.activation,
                    kernel_init=self.kernel_init,
                    dtype=self.dtype,
                )(h, train)
        h = h.mean(axis=(1, 2))
        h = self.dropout(h, train)
        return self.head(h)
