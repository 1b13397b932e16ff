"""The GPU script: its bandwidth table, its refusals, and its ``--quick`` run on the CPU with the
MNIST files it is given (structure, not speed)."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from benchmark_modules import ROOT, import_benchmark

from jaxtricks.data import DatasetNotFoundError, datasets, load


@pytest.fixture(scope="module")
def gpu():
    return import_benchmark("gpu")


@pytest.mark.parametrize(
    ("kind", "gbps"),
    [
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA H100 NVL", 3900.0),
        ("NVIDIA H200", 4800.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100-PCIE-40GB", 1555.0),
        ("cpu", None),
    ],
)
def test_peak_bandwidth_by_device_kind_with_its_source(gpu, kind, gbps):
    found, source = gpu.peak_bandwidth(kind)
    assert found == gbps
    assert (source is None) == (gbps is None)
    if source is not None:
        assert "NVIDIA" in source and "datasheet" in source


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bandwidth-gbps", "0"], "--bandwidth-gbps must be a finite number > 0"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--data-dir", "/nonexistent/mnist"], "--data-dir /nonexistent/mnist: no such folder"),
    ],
)
def test_bad_arguments_stop_it_before_any_benchmark(gpu, argv, message):
    with pytest.raises(SystemExit, match=message):
        gpu.main(argv)


def test_a_folder_without_mnist_is_named(gpu, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTRICKS_DATA_DIR", str(tmp_path))  # main sets it; restored after
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_PATHS", {"mnist": ()})
    with pytest.warns(UserWarning, match="is not usable"), pytest.raises(
            SystemExit, match=f"--data-dir {tmp_path}: no verified MNIST"):
        gpu.main(["--data-dir", str(tmp_path)])


@pytest.mark.slow
def test_quick_run_on_the_cpu_finds_the_carried_mnist_and_reports_every_check(gpu, tmp_path):
    try:
        source = pathlib.Path(load("mnist", download=False).source.split()[-1])
    except DatasetNotFoundError as err:
        pytest.skip(f"MNIST is not on this machine: {err}")
    data = tmp_path / "carried"
    shutil.copytree(source, data)
    out = tmp_path / "gpu.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick", "--data-dir", str(data),
         "--bandwidth-gbps", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=True,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records == [json.loads(line) for line in out.read_text().splitlines()]
    by_kind = {}
    for record in records:
        by_kind.setdefault(record["benchmark"], []).append(record)
    (setup,) = by_kind["gpu_setup"]
    assert setup["data_source"] == f"JAXTRICKS_DATA_DIR {data}" and setup["quick"]
    assert (setup["peak_gb_per_s"], setup["peak_source"]) == (20.0, "--bandwidth-gbps")

    steps = by_kind["optimizer_step"]
    assert {r["optimizer"] for r in steps} == {"adam"} and {r["tree"] for r in steps} == {
        "resnet50"}
    (step,) = by_kind["gpu_optimizer_step"]
    assert set(step["implementations"]) == {r["implementation"] for r in steps}
    for r in steps:
        entry = step["implementations"][r["implementation"]]
        assert entry["gb_per_s"] == r["gb_per_s"] and entry["fraction"] == r["gb_per_s"] / 20
    best = max(r["gb_per_s"] for r in steps if r["implementation"].startswith("jaxtricks"))
    assert step["best_jaxtricks_fraction"] == best / 20
    assert step["meets_goal"] == (best / 20 >= 0.8) and step["bytes_per_step"] == 28 * step[
        "params"]

    (throughput,) = by_kind["train_throughput"]
    (summary,) = by_kind["gpu_train_throughput"]
    assert summary["config"] == throughput["config"] == "flax_example"
    assert summary["jaxtricks_images_per_s"] == throughput["jaxtricks_images_per_s"]["median"]
    if throughput["torch"] is None:
        assert summary["ratio_vs_torch"] is None and summary["meets_goal"] is None

    runs = by_kind["time_to_99"]
    (time_to_99,) = by_kind["gpu_time_to_99"]
    assert time_to_99["seeds"] == [r["seed"] for r in runs] == [0]  # --quick keeps one seed
    assert time_to_99["reached"] == sum(r["reached"] for r in runs)
    if time_to_99["reached"]:
        assert time_to_99["median_wall_s"] == runs[0]["wall_s"]
        assert time_to_99["meets_goal"] == (runs[0]["wall_s"] < 1.0)
