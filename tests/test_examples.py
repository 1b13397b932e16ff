"""The example script stays in step with the library (compiles, imports resolve)."""

import ast
import importlib
import importlib.util
import json
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_mnist_example_names_only_things_the_library_has():
    source = (EXAMPLES / "mnist.py").read_text()
    tree = ast.parse(source)
    compile(source, "mnist.py", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("jaxtricks"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    import jaxtricks as jt

    used = {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id == "jt"
    }
    assert used and all(hasattr(jt, name) for name in used), used


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
