"""The README's code runs as written."""

import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_examples_run_and_take_a_step():
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    namespace = {}
    # user code broadcasts a bias over a batch, which the suite's rank check would refuse
    with jax.numpy_rank_promotion("allow"):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    params, x = namespace["params"], namespace["x"]
    assert params["w"].shape == (784, 10)
    assert np.isfinite(np.asarray(jax.tree.leaves(params)[0])).all()
    # the step moved the weights away from their initial values
    initial = namespace["jt"].glorot_normal()(jax.random.key(0), (784, 10))
    assert not np.allclose(np.asarray(params["w"]), np.asarray(initial))
    assert x.shape == (32, 784)
    # the nnx example builds an optimizer over the model's parameters
    assert len(blocks) >= 2
    assert int(namespace["optimizer"].step[...]) == 0


def test_readme_names_the_two_commands_that_ci_runs():
    text = README.read_text()
    assert "./run train" in text and "./run test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./run test" in ci
