"""Flax models with switchable batch norm and dropout (an MLP, a CNN and a small ResNet),
LSUV initialization and signal-propagation measurement for them, and the batch-norm layer and
one-channel convolution they train with (Flax's and XLA's, with faster training paths).

Every model maps a floating batch to float32 logits of shape ``(N, num_classes)`` and is
applied as ``model.apply(variables, x, train=..., rngs={"dropout": key},
mutable=["batch_stats"])``.
"""

from jaxtricks.models.batch_norm import BatchNorm, batch_norm_train
from jaxtricks.models.cnn import CNN
from jaxtricks.models.conv import conv_general_dilated_by_shifts, one_channel_conv
from jaxtricks.models.lsuv import lsuv
from jaxtricks.models.mlp import MLP
from jaxtricks.models.resnet import ResidualBlock, ResNet
from jaxtricks.models.signal import LAYER_TYPES, LayerSignal, signal_propagation

__all__ = [
    "CNN",
    "LAYER_TYPES",
    "MLP",
    "BatchNorm",
    "LayerSignal",
    "ResNet",
    "ResidualBlock",
    "batch_norm_train",
    "conv_general_dilated_by_shifts",
    "lsuv",
    "one_channel_conv",
    "signal_propagation",
]
