"""The notebooks stay stripped of outputs and run top to bottom (fast mode, real MNIST)."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_the_two_notebooks():
    assert {path.name for path in NOTEBOOKS} >= {"overview.ipynb", "Dropout.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_stored_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_top_to_bottom_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("JAXTRICKS_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute()
    text = "".join(
        output.get("text", "")
        for cell in book.cells if cell.cell_type == "code"
        for output in cell.outputs
    )  # fmt: skip
    assert "fast mode" in text
    assert not any(
        output.output_type == "error"
        for cell in book.cells if cell.cell_type == "code"
        for output in cell.outputs
    )  # fmt: skip
