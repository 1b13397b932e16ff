"""``jaxtricks launch``: a job of several processes on this machine, started and stopped whole.

    python -m jaxtricks launch --processes 2 --devices-per-process 2 -- train --epochs 1 ...

starts N processes of ``python -m jaxtricks train ... --coordinator-address 127.0.0.1:PORT
--num-processes N --process-id I`` (PORT a free one), which join one ``jax.distributed`` job
and train on all N·K devices, K simulated CPU devices each with ``--devices-per-process``. It
is the program that runs on many hosts under SLURM or Kubernetes, run on one machine.

Output: process 0's goes straight to this terminal, the same as a one-process ``train`` (its
progress bar, its one JSON summary line on stdout). The other processes' would repeat it (they
print nothing else by design), so it is held back: the last lines of each are kept and shown,
prefixed ``[process I]``, only if that process fails.

Failure: when a process exits with a non-zero status or a signal, the others are killed
(SIGKILL: a process whose peer is gone waits in its next collective and would never return to
Python), and the command exits non-zero with one line saying which and how (``jaxtricks
launch: error: process 1 exited with signal 9 (SIGKILL); stopped the others``). Its status is
the failed process's exit status, 128 + the signal number for a signal. A process that outlives
the others' clean exit by :data:`FINISH_S` seconds is stopped and reported the same way.

Ctrl-C (SIGINT) or SIGTERM to the launcher stops every process: SIGINT (Python unwinds where it
can), then SIGKILL after ``--grace`` seconds; the command exits with 128 + the signal number.
Not SIGTERM to the processes: JAX's distributed runtime catches it (as a preemption notice) and
the process runs on. Every stop is over within the grace period and a poll.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

DESCRIPTION = (
    "Start a job of N processes of 'jaxtricks train' on this machine (jax.distributed, gloo "
    "collectives on the CPU), each with K simulated CPU devices if asked, and stop them all "
    "when one fails or on Ctrl-C. Usage: jaxtricks launch --processes 2 --devices-per-process "
    "2 -- train [FLAGS]. See docs/multi_device.md."
)
GRACE_S = 5.0
FINISH_S = 60.0
TAIL_LINES = 40
_POLL_S = 0.05
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
JOB_FLAGS = ("--coordinator-address", "--num-processes", "--process-id", "--distributed")


class LaunchError(Exception):
    """A launch refused before starting anything, said in one line (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``launch`` flags to ``parser``."""
    parser.add_argument("--processes", type=int, required=True, metavar="N",
                        help="how many processes to start, >= 1")
    parser.add_argument("--devices-per-process", type=int, default=None, metavar="K",
                        help="simulate K CPU devices in each process (sets JAX_PLATFORMS=cpu and "
                             f"{DEVICE_COUNT_FLAG}=K in XLA_FLAGS); unset: the environment's")
    parser.add_argument("--grace", type=float, default=GRACE_S, metavar="SECONDS",
                        help="on Ctrl-C or SIGTERM: how long the processes get to exit after "
                             "SIGINT, before SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- train ...",
                        help="the command every process runs: train and its flags")


def free_port() -> int:
    """A TCP port no process listens on now (the kernel's choice for port 0).

    Another process could take it before the coordinator binds it; the job then fails to
    start, with a message, and is started again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment(environ: dict[str, str], devices_per_process: int | None) -> dict[str, str]:
    """The environment of each process: ``environ``, with K simulated CPU devices if asked.

    Examples:
        >>> env = child_environment({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, 2)
        >>> env["XLA_FLAGS"], env["JAX_PLATFORMS"]
        ('--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2', 'cpu')
    """
    env = dict(environ)
    if devices_per_process is not None:
        kept = [flag for flag in env.get("XLA_FLAGS", "").split()
                if not flag.startswith(DEVICE_COUNT_FLAG + "=")]
        env["XLA_FLAGS"] = " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def describe_exit(status: int) -> str:
    """``"status 2"`` or ``"signal 9 (SIGKILL)"`` for a ``Popen.returncode``.

    Examples:
        >>> describe_exit(2), describe_exit(-9)
        ('status 2', 'signal 9 (SIGKILL)')
    """
    if status >= 0:
        return f"status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"
    return f"signal {-status} ({name})"


def exit_status(status: int) -> int:
    """The launcher's exit status for a process's ``returncode``: itself, or 128 + a signal."""
    return status if status > 0 else 128 - status


class _Tail:
    """Reads a process's merged output until it closes, keeping the last lines."""

    def __init__(self, stream: Any):
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def text(self, index: int) -> str:
        self._thread.join(timeout=1.0)
        return "".join(f"[process {index}] {line}\n" for line in self.lines)


def stop(processes: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGINT to every process still running, then SIGKILL to those left after ``grace_s``
    (at once for 0); returns once all have exited."""
    if grace_s > 0:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait()


def launch(argv: Sequence[str], processes: int, *, devices_per_process: int | None = None,
           grace_s: float = GRACE_S, stderr: Any = None) -> int:
    """Runs ``argv`` as ``processes`` processes of one ``jax.distributed`` job on this machine.

    Process I runs ``argv + ["--coordinator-address", "127.0.0.1:PORT", "--num-processes", N,
    "--process-id", I]``; see the module docstring for its output, failures and signals.

    Args:
        argv: the command of every process (``[sys.executable, "-m", "jaxtricks", "train",
            ...]``), which must take the three flags above.
        processes: N >= 1.
        devices_per_process: K simulated CPU devices per process; None: the environment's.
        grace_s: seconds between SIGINT and SIGKILL when the launcher is interrupted.
        stderr: where the launcher's own lines go; ``sys.stderr`` by default.

    Returns:
        0 when every process exited with 0; else the failed process's status (128 + the
        signal number for a signal), or 128 + the signal number the launcher received.
    """
    stderr = stderr or sys.stderr
    env = child_environment(dict(os.environ), devices_per_process)
    address = f"127.0.0.1:{free_port()}"
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    started: list[subprocess.Popen] = []
    tails: dict[int, _Tail] = {}
    try:
        for index in range(processes):
            flags = ["--coordinator-address", address, "--num-processes", str(processes),
                     "--process-id", str(index)]
            quiet = index > 0
            process = subprocess.Popen(
                [*argv, *flags], env=env,
                stdout=subprocess.PIPE if quiet else None,
                stderr=subprocess.STDOUT if quiet else None,
            )
            started.append(process)
            if quiet:
                tails[index] = _Tail(process.stdout)
        return _supervise(started, tails, grace_s, received, stderr)
    finally:
        stop(started, grace_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(started, tails, grace_s, received, stderr) -> int:
    first_clean_exit = None
    while True:
        if received:
            stop(started, grace_s)
            name = signal.Signals(received[0]).name
            print(f"jaxtricks launch: {name} received; stopped the {len(started)} processes",
                  file=stderr, flush=True)
            return 128 + received[0]
        statuses = [process.poll() for process in started]
        failed = [(i, s) for i, s in enumerate(statuses) if s is not None and s != 0]
        if failed:
            index, status = failed[0]
            stop(started, 0.0)
            if index in tails and status > 0:
                stderr.write(tails[index].text(index))
            print(f"jaxtricks launch: error: process {index} exited with "
                  f"{describe_exit(status)}; stopped the others", file=stderr, flush=True)
            return exit_status(status)
        if all(status == 0 for status in statuses):
            return 0
        if any(status == 0 for status in statuses):
            first_clean_exit = first_clean_exit or time.monotonic()
            if time.monotonic() - first_clean_exit > FINISH_S:
                late = [i for i, status in enumerate(statuses) if status is None]
                stop(started, 0.0)
                print(f"jaxtricks launch: error: process {late[0]} was still running "
                      f"{FINISH_S:.0f} s after another exited cleanly; stopped it", file=stderr,
                      flush=True)
                return 1
        time.sleep(_POLL_S)


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Checks the flags; returns the command after ``--``. ``LaunchError`` names a bad flag."""
    if args.processes < 1:
        raise LaunchError(f"--processes must be an integer >= 1, got {args.processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        raise LaunchError(
            f"--devices-per-process must be an integer >= 1, got {args.devices_per_process}")
    if not (math.isfinite(args.grace) and args.grace >= 0):
        raise LaunchError(f"--grace must be a finite number >= 0, got {args.grace}")
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] != ["train"]:
        raise LaunchError(
            "the command after -- must be train and its flags (jaxtricks launch --processes 2 "
            f"-- train ...), got {' '.join(command) or 'nothing'}")
    for flag in JOB_FLAGS:
        if any(token == flag or token.startswith(flag + "=") for token in command):
            raise LaunchError(f"{flag}: launch sets the job's flags itself; leave {flag} out")
    return command


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The ``launch`` command; returns the exit status (2 after a one-line error)."""
    del parser
    try:
        command = check_arguments(args)
    except LaunchError as err:
        print(f"jaxtricks launch: error: {err}", file=sys.stderr)
        return 2
    return launch([sys.executable, "-m", "jaxtricks", *command], args.processes,
                  devices_per_process=args.devices_per_process, grace_s=args.grace)
