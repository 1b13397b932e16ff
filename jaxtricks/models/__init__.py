"""Flax models with switchable batch norm and dropout (an MLP, a CNN and a small ResNet),
LSUV initialization and signal-propagation measurement for them.

Every model maps a floating batch to float32 logits of shape ``(N, num_classes)`` and is
applied as ``model.apply(variables, x, train=..., rngs={"dropout": key},
mutable=["batch_stats"])``.
"""

from jaxtricks.models.cnn import CNN
from jaxtricks.models.lsuv import lsuv
from jaxtricks.models.mlp import MLP
from jaxtricks.models.resnet import ResidualBlock, ResNet
from jaxtricks.models.signal import LAYER_TYPES, LayerSignal, signal_propagation

__all__ = [
    "CNN",
    "LAYER_TYPES",
    "MLP",
    "LayerSignal",
    "ResNet",
    "ResidualBlock",
    "lsuv",
    "signal_propagation",
]
