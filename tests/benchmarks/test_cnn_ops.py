"""The per-operation CNN timings run and report every operation (structure, not speed)."""

import json

import pytest
from benchmark_modules import import_benchmark


@pytest.fixture(scope="module")
def cnn_ops():
    return import_benchmark("cnn_ops")


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
