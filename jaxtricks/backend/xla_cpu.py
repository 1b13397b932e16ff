"""XLA:CPU settings that make convolutional training faster, applied before JAX starts.

jaxlib 0.10 hands convolutions, element-wise ops and reductions to YNNPACK fusions by default.
For a CNN's training step that is the slow path: the weight gradient of a convolution whose
window is the whole output gradient runs several times slower there than in XLA's own CPU
kernels. Restricting YNNPACK to dot products,

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot

sends those convolutions back to XLA's own kernels, and the Flax example's CNN trains faster on
the CPU (the figures, and the commands that measure them, ``python -m benchmarks.cnn_ops`` and
``python -m benchmarks.train_throughput``, are in
docs/benchmarks.md#xlacpus-ynnpack-fusions-the-setting-that-doubles-cnn-training-on-the-cpu).

The flag is read once, when JAX creates its CPU backend (the first computation, not
``import jax``), so :func:`configure_xla_cpu` must run before that; the command line, the
examples, the benchmarks and the tests call it first thing. A library must not change a
process's compiler settings behind its user's back, so ``import jaxtricks`` does not; in your
own script call it yourself, or set ``XLA_FLAGS`` as above.

It leaves ``XLA_FLAGS`` alone when the flag is already there (so
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+dot`` keeps jaxlib's default), when the
backend has started, and on jaxlib versions other than 0.10, where it was not measured and
where an unknown flag in ``XLA_FLAGS`` aborts the process.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import jaxlib
from jax._src import xla_bridge

__all__ = ["YNN_FUSION_FLAG", "configure_xla_cpu"]

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
_MEASURED_JAXLIB = (0, 10)


def _jaxlib_minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def configure_xla_cpu(
        environ: MutableMapping[str, str] | None = None,
        *,
        jaxlib_version: str | None = None,
        backend_started: bool | None = None,
) -> str:
    """Adds :data:`YNN_FUSION_FLAG` to ``XLA_FLAGS`` when it can still take effect.

    Args:
        environ: the environment to change; ``os.environ`` by default.
        jaxlib_version: the jaxlib version to judge by; the installed one by default.
        backend_started: whether JAX's backends exist already; asked of JAX by default.

    Returns:
        What happened, one of ``"set"``, ``"already set"`` (the flag was in ``XLA_FLAGS``),
        ``"too late"`` (the backend had started; nothing changed) and ``"other jaxlib"``
        (nothing changed).

    Examples:
        >>> env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        >>> configure_xla_cpu(env, jaxlib_version="0.10.2", backend_started=False)
        'set'
        >>> env["XLA_FLAGS"]
        '--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=dot'
    """
    if jaxlib_version is not None and not isinstance(jaxlib_version, str):
        raise ValueError(f"jaxlib_version must be a string or None, got {jaxlib_version!r}")
    if backend_started is not None and not isinstance(backend_started, bool):
        raise ValueError(f"backend_started must be a bool or None, got {backend_started!r}")
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG.split("=")[0] + "=" in flags:
        return "already set"
    version = jaxlib.__version__ if jaxlib_version is None else jaxlib_version
    if _jaxlib_minor(version) != _MEASURED_JAXLIB:
        return "other jaxlib"
    if backend_started is None:
        backend_started = xla_bridge.backends_are_initialized()
    if backend_started:
        return "too late"
    environ["XLA_FLAGS"] = " ".join(filter(None, (flags, YNN_FUSION_FLAG)))
    return "set"
