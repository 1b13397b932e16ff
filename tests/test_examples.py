"""The example scripts stay in step with the library (compile, imports resolve) and, in the
slow suite, train on real MNIST."""

import ast
import importlib
import importlib.util
import json
import math
import pathlib

import jax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_the_examples_are_there():
    assert {path.name for path in SCRIPTS} >= {"mnist.py", "model_averaging.py"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.stem)
def test_an_example_names_only_things_the_library_has(path):
    source = path.read_text()
    tree = ast.parse(source)
    compile(source, path.name, "exec")
    imported = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxtricks"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
                imported += 1
    import jaxtricks as jt

    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id == "jt"
    }
    assert used or imported, "the example uses nothing of jaxtricks"
    assert all(hasattr(jt, name) for name in used), sorted(n for n in used if not hasattr(jt, n))


@pytest.mark.slow
def test_model_averaging_quick_run_writes_its_results(tmp_path):
    """--quick on 2,000 real MNIST images: the numbers are in range and the figure exists."""
    path = EXAMPLES / "model_averaging.py"
    spec = importlib.util.spec_from_file_location("model_averaging", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"
    for run in results["ensemble"]:
        assert len(run["member_test_accuracy"]) == 5
        assert all(0.5 < accuracy <= 1 for accuracy in run["member_test_accuracy"])
        assert 0.5 < run["ensemble_test_accuracy"] <= 1
        assert run["best_member_test_accuracy"] == max(run["member_test_accuracy"])
    for runs in results["averaging"].values():
        for run in runs:
            assert len(run["raw_test_accuracy"]) == len(run["averaged_test_accuracy"]) == 2
            accuracies = run["raw_test_accuracy"] + run["averaged_test_accuracy"]
            assert all(0.5 < accuracy <= 1 for accuracy in accuracies)
    # What docs/results.md is generated from: a claim, the seeds, a summary per condition.
    assert results["experiment"] == "model_averaging" and results["mode"] == "quick"
    assert results["claim"].startswith("L5") and results["seeds"] == [0, 1]
    final = results["summary"]["ensemble (base seeds 0 and 100)"]["final"]
    assert final["gain_accuracy"]["mean"] == pytest.approx(sum(results["ensemble_gain"]) / 2)
    assert results["provenance"]["module"] == "examples.model_averaging"


@pytest.mark.slow
def test_the_property_test_example_passes_as_pytest_runs_it():
    """examples/test_own_transform.py: each of its test functions runs and passes."""
    path = EXAMPLES / "test_own_transform.py"
    spec = importlib.util.spec_from_file_location("test_own_transform", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, name) for name in sorted(vars(module)) if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["autoencoder", "nnx_cnn", "label_smoothing",
                                  "gradient_accumulation", "own_loop"])
def test_the_fit_examples_train_on_real_mnist(name):
    """Each example's --quick run (4,000 real MNIST images) trains: the loss falls or the
    validation accuracy is far above chance, and what each shows holds."""
    # As a user runs them: under JAX's standard dtype promotion (Flax's nnx.avg_pool and
    # optax.MultiSteps mix int32 into float32 arithmetic, which the suite's strict mode refuses).
    with jax.numpy_dtype_promotion("standard"):
        results = _load(name).main(["--quick"])
    if name == "autoencoder":  # y = x under a mean-squared error
        assert results["val_loss"][-1] < results["val_loss"][0]
        assert all(math.isfinite(v) for v in results["val_loss"] + results["val_mae"])
        return
    assert results["val_accuracy"][-1] > 0.8
    if name == "gradient_accumulation":  # optax.MultiSteps: one update per ACCUMULATE batches
        module = _load(name)
        assert results["updates"] == results["steps"] // module.ACCUMULATE > 0
    if name == "own_loop":
        assert results["steps"] > 0
