"""The optimizer-step benchmark runs and reports what it says (its structure, not its timings)."""

import json
import math
import subprocess
import sys

import jax
import pytest
from benchmark_modules import ROOT, import_benchmark


@pytest.fixture(scope="module")
def optimizer_step():
    return import_benchmark("optimizer_step")


def _count(shapes):
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return len(leaves), sum(math.prod(shape) for shape in leaves)


def test_full_trees_are_resnet50_and_2004_small_leaves(optimizer_step):
    assert _count(optimizer_step.tree_shapes("resnet50", quick=False)) == (161, 25_557_032)
    assert _count(optimizer_step.tree_shapes("small_leaves", quick=False)) == (2004, 1_036_068)


@pytest.mark.parametrize(
    "argv",
    [["--trees", "resnet"], ["--optimizers", "adam,lamb"], ["--implementations", "torch"],
     ["--repeats", "0"]],
)
def test_unknown_names_are_refused(argv, optimizer_step):
    with pytest.raises(SystemExit):
        optimizer_step.main(argv)


@pytest.mark.slow
def test_quick_run_prints_one_record_per_measurement_and_a_table(optimizer_step):
    optimizers = ["sgd", "adam"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.optimizer_step", "--quick", "--optimizers",
         ",".join(optimizers)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    implementations = list(optimizer_step.DEFAULT_IMPLEMENTATIONS)
    assert [(r["tree"], r["optimizer"], r["implementation"]) for r in records] == [
        (tree, name, impl)
        for tree in optimizer_step.TREES for name in optimizers for impl in implementations
    ]
    arrays = {"sgd": 3, "adam": 7}
    for r in records:
        leaves, size = _count(optimizer_step.tree_shapes(r["tree"], quick=True))
        assert (r["leaves"], r["params"]) == (leaves, size)
        assert r["bytes_per_step"] == arrays[r["optimizer"]] * 4 * size
        assert r["step_s"]["n"] == 3
        assert 0 < r["step_s"]["min"] <= r["step_s"]["median"] <= r["step_s"]["max"]
        assert r["lower_s"] > 0 and r["compile_s"] > 0
        assert r["gb_per_s"] == pytest.approx(r["bytes_per_step"] / r["step_s"]["median"] / 1e9)
        assert r["backend"] == "cpu" or r["backend"] == jax.default_backend()
        if r["implementation"] == "optax":
            assert "step_ratio_vs_optax" not in r
        else:
            assert r["step_ratio_vs_optax"]["n"] == 3 and r["compile_ratio_vs_optax"] > 0
        if r["implementation"].startswith("jaxtricks_flat"):
            # one buffer per moment: the state no longer grows with the number of leaves
            assert r["state_leaves"] <= 1 + 2 * (arrays[r["optimizer"]] - 3) // 2
    table = result.stderr.splitlines()
    assert table[0].split()[:3] == ["tree", "optimizer", "implementation"]
    assert len([line for line in table[2:] if line.strip()]) == len(records)
