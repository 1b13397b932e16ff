"""The per-operation CNN timings run and report every operation (structure, not speed)."""

import importlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cnn_ops():
    """``benchmarks.cnn_ops`` from the repository root (see test_train_throughput)."""
    sys.path.insert(0, str(ROOT))
    package = sys.modules.get("benchmarks")
    if package is not None and getattr(package, "__file__", None) is None:
        del sys.modules["benchmarks"]
    try:
        yield importlib.import_module("benchmarks.cnn_ops")
    finally:
        sys.path.remove(str(ROOT))


def test_best_ms_takes_the_fastest_round(cnn_ops):
    delays = iter([0.0, 0.03, 0.001, 0.02])

    def function():
        import time

        time.sleep(next(delays))
        return 0

    assert 1 <= cnn_ops.best_ms(function, rounds=3, calls=1) < 15


def test_quick_run_times_every_operation(cnn_ops, capsys):
    records = cnn_ops.main(["--quick"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == json.loads(
        json.dumps(records)
    )
    seen = {(r["operation"], r["variant"]) for r in records}
    for layer in ("conv1", "conv2"):
        for part in ("forward", "input_grad", "weight_grad"):
            assert {(f"{layer}_{part}", "NHWC"), (f"{layer}_{part}", "NCHW")} <= seen
    assert ("avg_pool_forward_backward", "reshape_mean") in seen
    assert {v for op, v in seen if op == "dropout_mask"} == {"threefry2x32", "rbg", "unsafe_rbg"}
    assert all(r["ms"] > 0 and r["batch_size"] == 8 for r in records)
    with pytest.raises(ValueError, match="--calls"):
        cnn_ops.main(["--calls", "0"])
