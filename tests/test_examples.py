"""The example script stays in step with the library (compiles, imports resolve)."""

import ast
import importlib
import pathlib

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
