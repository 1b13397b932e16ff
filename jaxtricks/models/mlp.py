"""A multilayer perceptron with optional batch norm and dropout (lesson points L3, L4).

Each hidden layer ``l = 1..L`` of width ``features[l - 1]`` computes::

    h_l = dropout(φ(BN(W_l h_{l-1})))          h_0 = flatten(x)

and the head gives the logits ``W_out h_L + b_out``. Batch norm sits after the weights and
before the activation; the weights carry no bias when it is on, as its shift ``β`` replaces it.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxtricks.models.blocks import Classifier, check_input, check_sizes


class MLP(Classifier):
    """A multilayer perceptron classifier on flattened inputs.

    ``h_l = dropout(φ(BN(W_l h_{l-1})))`` for each hidden layer, then ``logits = W h_L + b``.

    Attributes:
        features: the widths of the hidden layers.
        num_classes: the number of logits per example.
        use_batch_norm: batch norm after each hidden layer's weights, before its activation.
        dropout_rate: the probability ``r`` in ``[0, 1)`` of zeroing a hidden unit in training,
            applied after each hidden activation.
        activation: the non-linearity ``φ``, any callable.
        kernel_init: initializer of every kernel (``jax.nn.initializers`` signature); He normal,
            ``N(0, 2 / fan_in)``, by default, suited to ReLU.
        batch_norm_momentum: ``m`` in ``μ_run ← m μ_run + (1 - m) μ_batch``.
        dtype: the compute dtype; None: that of the inputs and parameters (a precision
            policy's). Parameters and logits are float32.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = MLP(features=(32,), use_batch_norm=True, dropout_rate=0.5)
        >>> x = jnp.ones((8, 28, 28, 1))
        >>> variables = model.init(jax.random.key(0), x, train=False)
        >>> sorted(variables)
        ['batch_stats', 'params']
        >>> logits, updates = model.apply(variables, x, train=True,
        ...     rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
        >>> logits.shape, logits.dtype
        ((8, 10), dtype('float32'))
    """

    features: Sequence[int] = (512, 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sizes("features", self.features)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """The logits of shape ``(N, num_classes)``.

        Args:
            x: a floating batch of shape ``(N, ...)``; all axes but the first are flattened.
            train: batch statistics and dropout in training; running averages and no dropout
                in evaluation.

        Returns:
            The float32 logits.
        """
        check_input("MLP", x, ndim=None, expected="(N, ...), e.g. (N, 28, 28, 1) or (N, 784)")
        h = x.reshape((x.shape[0], -1))
        for width in self.features:
            h = self.dense(width)(h)
            h = self.activate(self.normalize(h, train))
            h = self.dropout(h, train)
        return self.head(h)
