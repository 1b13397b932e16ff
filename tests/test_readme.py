"""The README's code runs as written, top to bottom, and each quickstart does what it says."""

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_the_examples_run_and_take_a_step():
    blocks = _python_blocks()
    assert len(blocks) >= 5, "README lost a quickstart"
    testing = importlib.util.find_spec("jaxtricks.testing") is not None
    namespace = {}
    # user code broadcasts a bias over a batch, which the suite's rank check would refuse
    with jax.numpy_rank_promotion("allow"):
        for block in blocks:
            if "jaxtricks.testing" in block and not testing:
                continue
            exec(compile(block, str(README), "exec"), namespace)
        # the property test a user writes runs under pytest; here it is called once by hand
        tests = [value for name, value in namespace.items() if name.startswith("test_")]
        assert tests or not testing, "the property-test quickstart defines no test"
        for test in tests:
            test()

    # the Optax chain took a step away from the initial weights
    params, x = namespace["params"], namespace["x"]
    assert params["w"].shape == (784, 10) and x.shape == (32, 784)
    assert np.isfinite(np.asarray(params["w"])).all()
    initial = namespace["jt"].glorot_normal()(jax.random.key(0), (784, 10))
    assert not np.allclose(np.asarray(params["w"]), np.asarray(initial))
    # the Linen TrainState and nnx.Optimizer each took one step
    assert int(namespace["ts"].step) == 1 and np.isfinite(float(namespace["linen_loss"]))
    assert int(namespace["optimizer"].step[...]) == 1
    assert np.isfinite(float(namespace["nnx_loss"]))
    # fit trained one epoch on real MNIST and validated it
    (record,) = namespace["history"].epochs
    assert record.epoch == 1 and 0.5 < record.metrics["val_accuracy"] <= 1.0


def test_readme_names_the_two_commands_that_ci_runs():
    text = README.read_text()
    assert "./run train" in text and "./run test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run test" in ci


def test_readme_links_point_at_files_that_exist():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_anchors_name_headings_of_the_linked_docs():
    # GitHub's and MkDocs' anchors agree for these headings: lower case, punctuation dropped,
    # spaces as hyphens; an explicit <a id="..."> counts too.
    def anchors(page):
        text = (ROOT / page).read_text()
        slugs = set(re.findall(r'<a id="([^"]+)"', text))
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
            slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
            slugs.add(re.sub(r"[-\s]+", "-", slug))
        return slugs

    links = re.findall(r"\]\(([^)#\s]+)#([^)\s]+)\)", README.read_text())
    assert links
    broken = [f"{page}#{anchor}" for page, anchor in links if anchor not in anchors(page)]
    assert not broken, f"README links to missing anchors: {broken}"
