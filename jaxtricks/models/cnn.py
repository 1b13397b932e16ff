"""A small convolutional network with optional batch norm and dropout (lesson points L3, L4, L7).

The default is the layout of Flax's MNIST example, for ``(N, 28, 28, 1)`` images::

    x → [Conv 3×3 → BN → φ → avg-pool 2×2, stride 2] for each of features=(32, 64)
      → flatten → Dense(hidden=256) → BN → φ → dropout → Dense(num_classes)

Batch norm sits after the weights and before the activation; the weights carry no bias when it
is on. Dropout is applied once, before the last dense layer, as in the lesson's notebook.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxtricks.models.blocks import Classifier, check_input, check_sizes
from jaxtricks.tricks.checks import check_int


def average_pool_2x2(h: jax.Array) -> jax.Array:
    """The mean over 2×2 windows with stride 2; an odd last row or column is dropped.

    ``flax.linen.avg_pool`` divides by an int32 window size, which strict dtype promotion
    refuses for float inputs.
    """
    n, height, width, channels = h.shape
    h = h[:, : height // 2 * 2, : width // 2 * 2]
    return h.reshape((n, height // 2, 2, width // 2, 2, channels)).mean(axis=(2, 4))


class CNN(Classifier):
    """A convolutional classifier: conv blocks, a hidden dense layer, dropout, a dense head.

    Each conv block is ``avg_pool(φ(BN(conv_3×3(x))))``; then
    ``logits = W_out dropout(φ(BN(W flatten(x)))) + b_out``.

    Attributes:
        features: the channels of the 3×3 conv layers, each followed by a 2×2 average pool.
        hidden: the width of the dense layer before the head.
        num_classes: the number of logits per example.
        use_batch_norm: batch norm after each conv/dense layer's weights, before its activation.
        dropout_rate: the probability ``r`` in ``[0, 1)`` of zeroing a hidden unit before the
            head, in training.
        activation: the non-linearity ``φ``, any callable.
        kernel_init: initializer of every kernel (``jax.nn.initializers`` signature); He normal,
            ``N(0, 2 / fan_in)``, by default, suited to ReLU.
        batch_norm_momentum: ``m`` in ``μ_run ← m μ_run + (1 - m) μ_batch``.
        dtype: the compute dtype; None: that of the inputs and parameters (a precision
            policy's). Parameters and logits are float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = CNN(features=(8, 16), hidden=32, use_batch_norm=True)
        >>> x = jnp.ones((4, 28, 28, 1))
        >>> variables = model.init(jax.random.key(0), x, train=False)
        >>> variables["params"]["Conv_0"]["kernel"].shape
        (3, 3, 1, 8)
        >>> logits = model.apply(variables, x, train=False)
        >>> logits.shape, logits.dtype
        ((4, 10), dtype('float32'))
    """

    features: Sequence[int] = (32, 64)
    hidden: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes("features", self.features)
        check_int("hidden", self.hidden, 1)

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
        check_input("CNN", x, ndim=4, expected="(N, H, W, C), e.g. (N, 28, 28, 1)")
        h = x
        for channels in self.features:
            h = self.conv(channels, 3, train=train)(h)
            h = self.activate(self.normalize(h, train))
            h = average_pool_2x2(h)
        h = h.reshape((h.shape[0], -1))
        h = self.dense(self.hidden)(h)
        h = self.activate(self.normalize(h, train))
        h = self.dropout(h, train)
        return self.head(h)
