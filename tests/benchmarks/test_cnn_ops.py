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
    assert ("train_step", "BN, Adam") in seen
    # XLA counts the convolutions' and the step's work; the rate is that work over the time.
    for r in records:
        if r["operation"].startswith("conv") or r["operation"] == "train_step":
            assert r["flops"] > 0
            assert r["gflop_per_s"] == pytest.approx(r["flops"] / r["ms"] / 1e6)
    assert all(r["matmul_gflop_per_s"] > 0 for r in records)
    with pytest.raises(ValueError, match="--calls"):
        cnn_ops.main(["--calls", "0"])


def test_the_layer_sizes_follow_the_flags(cnn_ops, capsys):
    records = cnn_ops.main(["--quick", "--features", "4", "8", "--hidden", "16"])
    wider = cnn_ops.main(["--quick", "--features", "8", "8", "--hidden", "16"])
    capsys.readouterr()
    nhwc = {r["operation"]: r for r in records if r["variant"] == "NHWC"}
    batch = 8
    # conv2 maps 4 channels to 8 on 14×14 images, padded SAME: XLA counts the multiply-adds of
    # the taps inside the image, (3·14 − 2)² per channel pair and image, 2 flops each.
    assert nhwc["conv2_forward"]["flops"] == pytest.approx(batch * 40**2 * 2 * 4 * 8, rel=0.01)
    assert {r["variant"] for r in records if r["operation"] == "dense_forward_backward"} == {
        "392x16"}
    assert all(r["features"] == [4, 8] and r["hidden"] == 16 for r in records)

    # The whole step is built from the flags too: twice conv1's channels, more work.
    def step_flops(run):
        return next(r["flops"] for r in run if r["operation"] == "train_step")

    assert step_flops(wider) > step_flops(records)
    for flags in (["--features", "0", "8"], ["--hidden", "0"]):
        with pytest.raises(ValueError, match="--features, --hidden"):
            cnn_ops.main(["--quick", *flags])
