"""Joining a multi-process JAX job: ``jax.distributed`` with cross-process collectives on the CPU.

Several processes, on one machine or on many, become one JAX program when each calls
``jax.distributed.initialize`` with the address of a coordinator (process 0 runs it), the number
of processes P and its own id in [0, P) before any other JAX computation. Afterwards
``jax.devices()`` lists every process's devices, ``jax.local_devices()`` its own, and a
computation over a mesh of all of them runs its collectives across the processes.

On the CPU those collectives go through a library chosen by the option
``jax_cpu_collectives_implementation``: :func:`initialize_distributed` sets it to ``"gloo"``
(TCP between the processes, no MPI needed) unless the environment names another
(``JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi``). jaxlib 0.10 already defaults to gloo; setting it
keeps the choice explicit, where an older or newer default would otherwise decide. GPUs and
TPUs run their collectives through their own libraries (NCCL, ICI), untouched by it.

Given none of the three arguments, ``jax.distributed.initialize`` detects them from the cluster
it runs in: SLURM (``srun``), Open MPI (``mpirun``), Cloud TPU, or a Kubernetes pod (with the
``kubernetes`` package installed). Like :func:`~jaxtricks.backend.configure_xla_cpu`, this is a
process-wide setting: entry points call it, ``import jaxtricks`` never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
from jax._src import xla_bridge

__all__ = ["CPU_COLLECTIVES", "initialize_distributed"]

CPU_COLLECTIVES = "gloo"
_COLLECTIVES_ENV = "JAX_CPU_COLLECTIVES_IMPLEMENTATION"


def _check_address(address: Any) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"coordinator_address must be 'HOST:PORT' with a port in [1, 65535], got {address!r}"
        )


def _check_count(name: str, value: Any, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < low):
        raise ValueError(f"{name} must be an int >= {low} or None, got {value!r}")


def initialize_distributed(
        coordinator_address: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
        *,
        initialize: Callable[..., None] | None = None,
        backend_started: bool | None = None,
) -> str:
    """Makes this process one of ``num_processes`` of a JAX job; call it before any JAX work.

    Sets the CPU's cross-process collectives to :data:`CPU_COLLECTIVES` (unless
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` names another), then calls
    ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``. Arguments
    left None are detected by JAX from the cluster (SLURM, Open MPI, Cloud TPU, Kubernetes); on a
    machine that is none of these, give all three.

    Args:
        coordinator_address: ``"HOST:PORT"`` of process 0, which listens on PORT; the same for
            every process.
        num_processes: P >= 1, the number of processes of the job.
        process_id: this process's id in [0, P); process 0 runs the coordinator.
        initialize: the function to call instead of ``jax.distributed.initialize`` (for tests).
        backend_started: whether JAX's backends exist already; asked of JAX by default.

    Returns:
        The CPU collectives implementation in use, e.g. ``"gloo"``.

    Raises:
        ValueError: an argument is out of range.
        RuntimeError: JAX has computed something already (its backends exist), too late to join
            a job.

    Examples:
        >>> calls = []
        >>> initialize_distributed("127.0.0.1:1234", 2, 1, backend_started=False,
        ...                        initialize=lambda *args: calls.append(args))
        'gloo'
        >>> calls
        [('127.0.0.1:1234', 2, 1)]
        >>> initialize_distributed("127.0.0.1", 2, 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: coordinator_address must be 'HOST:PORT' ..., got '127.0.0.1'
    """
    if coordinator_address is not None:
        _check_address(coordinator_address)
    _check_count("num_processes", num_processes, 1)
    _check_count("process_id", process_id, 0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"process_id must be in [0, num_processes - 1] = [0, {num_processes - 1}], got "
            f"{process_id}"
        )
    if backend_started is not None and not isinstance(backend_started, bool):
        raise ValueError(f"backend_started must be a bool or None, got {backend_started!r}")
    if backend_started is None:
        backend_started = xla_bridge.backends_are_initialized()
    if backend_started:
        raise RuntimeError(
            "initialize_distributed must be called before any JAX computation: JAX's backends "
            "exist already, and a process cannot join a job after they have started"
        )
    if not os.environ.get(_COLLECTIVES_ENV):
        jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    (initialize or jax.distributed.initialize)(coordinator_address, num_processes, process_id)
    return str(jax.config.values["jax_cpu_collectives_implementation"])
