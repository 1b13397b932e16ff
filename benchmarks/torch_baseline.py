"""The PyTorch baseline: jaxtricks' CNN rebuilt in PyTorch and trained the way PyTorch users do.

The network is :class:`jaxtricks.models.CNN` layer for layer (its default is the Flax MNIST
example's CNN)::

    x → [Conv 3×3, padding 1 → BN → ReLU → avg-pool 2×2] for each of features=(32, 64)
      → flatten → Linear(hidden=256) → BN → ReLU → dropout → Linear(num_classes)

with the same initialization (He normal kernels ``N(0, 2 / fan_in)``, zero biases), batch-norm
momentum ``m`` as PyTorch's ``1 - m`` and ε = 1e-5, in PyTorch's NCHW layout (so the flattened
features come in (C, H, W) order instead of (H, W, C): a fixed permutation of the dense layer's
rows, the same function class). A step is the usual eager loop: ``zero_grad``, forward,
``cross_entropy`` (the mean over the batch), ``backward``, ``optimizer.step``, on a batch sliced
from CPU tensors by a NumPy permutation, as the Flax loop does.

PyTorch is optional: :func:`available` says whether it can be imported. Install the CPU build
with ``pip install torch==2.13.0`` (the ``bench`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def available() -> bool:
    """Whether ``torch`` can be imported."""
    return importlib.util.find_spec("torch") is not None


def version() -> str | None:
    """The installed PyTorch version, or None."""
    if not available():
        return None
    import torch

    return torch.__version__


def set_threads(threads: int | None = None) -> int:
    """Sets PyTorch's intra-op threads (default: ``os.cpu_count()``); returns the number set."""
    import torch

    threads = os.cpu_count() if threads is None else threads
    torch.set_num_threads(threads)
    return threads


def cnn(
        features: Sequence[int] = (32, 64),
        hidden: int = 256,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        use_batch_norm: bool = False,
        batch_norm_momentum: float = 0.9,
        dropout_rate: float = 0.0,
        seed: int = 0,
) -> Any:
    """The ``torch.nn.Sequential`` twin of :class:`jaxtricks.models.CNN` with these settings.

    Args:
        features: channels of the 3×3 conv layers, each followed by a 2×2 average pool.
        hidden: width of the dense layer before the head.
        num_classes: number of logits.
        in_channels: channels of the input images.
        image_size: height and width of the (square) input images.
        use_batch_norm: batch norm after each conv/dense layer, before ReLU (no bias then).
        batch_norm_momentum: jaxtricks' ``m`` in ``μ_run ← m μ_run + (1 - m) μ``.
        dropout_rate: dropout probability before the head.
        seed: seed of the initialization.

    Returns:
        The module, in training mode.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for width in features:
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not use_batch_norm))
        if use_batch_norm:
            layers.append(nn.BatchNorm2d(width, eps=1e-5, momentum=1 - batch_norm_momentum))
        layers += [nn.ReLU(), nn.AvgPool2d(2)]
        channels, size = width, size // 2
    layers += [nn.Flatten(), nn.Linear(channels * size * size, hidden, bias=not use_batch_norm)]
    if use_batch_norm:
        layers.append(nn.BatchNorm1d(hidden, eps=1e-5, momentum=1 - batch_norm_momentum))
    layers += [nn.ReLU(), nn.Dropout(dropout_rate), nn.Linear(hidden, num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model.train()


def to_nchw(images: np.ndarray) -> Any:
    """A float32 CPU tensor ``(N, C, H, W)`` from NumPy images ``(N, H, W, C)``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)), np.float32))


def train_images_per_s(
        model: Any,
        optimizer: Any,
        images: Any,
        labels: Any,
        batch_size: int,
        steps: int,
        seed: int,
) -> tuple[float, float]:
    """Trains ``steps`` steps after one warm-up step and measures the rate.

    Args:
        model: a module from :func:`cnn`.
        optimizer: a ``torch.optim`` optimizer over ``model.parameters()``.
        images: float32 tensor ``(N, C, H, W)`` with ``N >= (steps + 1) * batch_size``, on the
            model's device (the CPU, or a CUDA GPU: the clock then waits for the device).
        labels: int64 tensor ``(N,)``, on the same device.
        batch_size: examples per step.
        steps: timed steps.
        seed: seed of the batch order.

    Returns:
        ``(images_per_s, last_loss)`` over the timed steps.
    """
    import torch

    order = np.random.default_rng(seed).permutation(images.shape[0])
    batches = torch.from_numpy(order[: (steps + 1) * batch_size].reshape(steps + 1, batch_size))
    batches = batches.to(images.device)

    def synchronize():
        if images.is_cuda:  # CUDA runs asynchronously: wait for the steps before the clock
            torch.cuda.synchronize()

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        optimizer.step()
        return loss

    step(batches[0])
    synchronize()
    begin = time.perf_counter()
    for i in range(1, steps + 1):
        loss = step(batches[i])
    synchronize()
    elapsed = time.perf_counter() - begin
    return steps * batch_size / elapsed, float(loss.detach())
