"""Layer 0, below the tricks: what differs between backends and processes.

- :mod:`~jaxtricks.backend.paths`: the speed paths taken on each backend (the CPU's were
  measured; elsewhere the plain path), chosen in this one place.
- :func:`configure_xla_cpu` and :func:`configure_host_allocator`: process-wide settings for
  fast training on the CPU. Entry points (the command line, the examples, the notebooks, the
  benchmarks and the tests) call them first thing; ``import jaxtricks`` never does.
- :func:`initialize_distributed`: joins a job of several processes (``jax.distributed``, gloo
  collectives on the CPU), before any JAX computation; the command line calls it when asked.
"""

from jaxtricks.backend.distributed import CPU_COLLECTIVES, initialize_distributed
from jaxtricks.backend.host_allocator import DEFAULT_KEEP_BYTES, configure_host_allocator
from jaxtricks.backend.paths import PLAIN, SpeedPaths, speed_paths, use_speed_paths
from jaxtricks.backend.xla_cpu import YNN_FUSION_FLAG, configure_xla_cpu

__all__ = [
    "CPU_COLLECTIVES",
    "DEFAULT_KEEP_BYTES",
    "PLAIN",
    "YNN_FUSION_FLAG",
    "SpeedPaths",
    "configure_host_allocator",
    "configure_xla_cpu",
    "initialize_distributed",
    "speed_paths",
    "use_speed_paths",
]
