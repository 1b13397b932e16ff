"""Tests for jaxtricks.tricks.learning_rate: ``u = −η_t g``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks.learning_rate import scale_by_learning_rate

GRADS = {"w": np.array([[1.0, -2.0], [0.5, 4.0]], np.float32), "b": np.array([3.0], np.float32)}


def _steps(tx, grads, steps):
    state = tx.init(grads)
    out = []
    for _ in range(steps):
        u, state = tx.update(grads, state)
        out.append(u)
    return out


def test_scales_by_minus_eta_or_plus_eta(allclose):
    (down,) = _steps(scale_by_learning_rate(0.25), GRADS, 1)
    allclose(down, jax.tree.map(lambda g: g * np.float32(-0.25), GRADS), rtol=0)
    (up,) = _steps(scale_by_learning_rate(0.25, flip_sign=False), GRADS, 1)
    allclose(up, jax.tree.map(lambda g: g * np.float32(0.25), GRADS), rtol=0)
    (zero,) = _steps(scale_by_learning_rate(0.0), GRADS, 1)
    allclose(zero, jax.tree.map(lambda g: np.zeros_like(g), GRADS), rtol=0)


def test_schedule_is_read_at_each_step(allclose):
    # η = 1 for steps 0 and 1, then 0.5: a schedule read one step late or early would give
    # a different third or second update.
    tx = scale_by_learning_rate(lambda count: jnp.where(count < 2, 1.0, 0.5))
    updates = jax.jit(lambda g: _steps(tx, g, 4))(GRADS)
    for u, eta in zip(updates, [1.0, 1.0, 0.5, 0.5], strict=True):
        allclose(u, jax.tree.map(lambda g, eta=eta: g * np.float32(-eta), GRADS), rtol=0)


@pytest.mark.parametrize(
    "learning_rate",
    [0.5, np.float64(0.5), jnp.asarray(0.5, jnp.float32), lambda count: jnp.asarray(0.5)],
    ids=["python_float", "numpy_float64", "jax_float32", "schedule"],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_updates_keep_the_gradient_dtype_whatever_the_learning_rate_type(learning_rate, dtype):
    grads = {"w": jnp.asarray(GRADS["w"], dtype)}
    (u,) = _steps(scale_by_learning_rate(learning_rate), grads, 1)
    assert u["w"].dtype == dtype
    np.testing.assert_array_equal(np.asarray(u["w"], np.float32), -0.5 * GRADS["w"])


def test_traced_learning_rate_under_jit(allclose):
    run = jax.jit(lambda eta, g: _steps(scale_by_learning_rate(eta), g, 1)[0])
    for eta in (0.1, 2.0):
        allclose(run(eta, GRADS), jax.tree.map(lambda g, eta=eta: g * np.float32(-eta), GRADS))


def test_none_and_zero_size_leaves_pass():
    grads = {"w": jnp.ones(2), "empty": jnp.zeros((0, 3)), "frozen": None}
    (u,) = _steps(scale_by_learning_rate(0.1), grads, 1)
    assert u["frozen"] is None
    assert u["empty"].shape == (0, 3)
    np.testing.assert_allclose(np.asarray(u["w"]), [-0.1, -0.1], rtol=1e-7)
