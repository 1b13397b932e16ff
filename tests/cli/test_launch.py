"""``jaxtricks launch``: flags, a job's exit status, and stopping the others when one dies.

These run stand-in processes (a few lines of Python, no JAX) so that they are quick; the real
jobs of ``jaxtricks train`` over two processes are in ``tests/training/test_multi_process.py``.
"""

import io
import subprocess
import sys
import time

import pytest

from jaxtricks.cli import launch
from jaxtricks.cli.main import build_parser, main

# A stand-in for `train`: prints its flags, then does what argv[1] says.
CHILD = """
import sys, time
action, flags = sys.argv[1], sys.argv[2:]
index = int(flags[flags.index("--process-id") + 1])
print("process", index, "flags", " ".join(flags), flush=True)
if action == "ok":
    sys.exit(0)
if action == "fail1" and index == 1:
    print("the last words of process 1", flush=True)
    sys.exit(3)
time.sleep(600)
"""


def run_launch(action, processes=2, grace_s=1.0):
    stderr = io.StringIO()
    started = time.monotonic()
    status = launch.launch([sys.executable, "-c", CHILD, action], processes, grace_s=grace_s,
                           stderr=stderr)
    return status, stderr.getvalue(), time.monotonic() - started


def test_every_process_exits_cleanly():
    status, stderr, _ = run_launch("ok", processes=3)
    assert status == 0
    assert stderr == ""


def test_one_failure_stops_the_others_in_bounded_time():
    status, stderr, elapsed = run_launch("fail1")
    assert status == 3
    lines = stderr.splitlines()
    assert lines[-1] == ("jaxtricks launch: error: process 1 exited with status 3; stopped the "
                         "others")
    # The failed process's held-back output is shown, prefixed.
    assert "[process 1] the last words of process 1" in lines
    assert elapsed < 20  # process 0 sleeps for 600 s: it was killed, not waited for


def test_sigint_to_the_launcher_stops_the_job():
    script = (
        "import sys; from jaxtricks.cli import launch; "
        f"sys.exit(launch.launch([sys.executable, '-c', {CHILD!r}, 'hang'], 2, grace_s=1.0))"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    # Process 0's first line (its output is the launcher's): the job has started.
    assert launcher.stdout.readline().startswith("process 0 flags")
    started = time.monotonic()
    launcher.send_signal(2)
    _, stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 130
    assert stderr.strip().splitlines()[-1] == (
        "jaxtricks launch: SIGINT received; stopped the 2 processes")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(("argv", "message"), [
    (["--processes", "0", "--", "train"], "--processes must be an integer >= 1, got 0"),
    (["--processes", "2", "--devices-per-process", "0", "--", "train"],
     "--devices-per-process must be an integer >= 1, got 0"),
    (["--processes", "2", "--grace", "nan", "--", "train"],
     "--grace must be a finite number >= 0, got nan"),
    (["--processes", "2", "--", "experiment"], "the command after -- must be train"),
    (["--processes", "2", "--", "train", "--process-id", "1"],
     "--process-id: launch sets the job's flags itself"),
    (["--processes", "2", "--", "train", "--coordinator-address=h:1"],
     "--coordinator-address: launch sets the job's flags itself"),
])  # fmt: skip
def test_bad_flags_are_one_line(argv, message, capsys):
    assert main(["launch", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("jaxtricks launch: error: ")
    assert message in err


def test_the_launch_command_is_listed():
    assert "launch" in build_parser().format_help()
