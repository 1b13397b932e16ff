"""Tests for jaxtricks.training.health_log: health_record by hand, and fit logging it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import TinyNet, toy_problem

from jaxtricks.training.ensemble import create_ensemble
from jaxtricks.training.fit import fit
from jaxtricks.training.health_log import health_record
from jaxtricks.tricks.diagnostics import gradient_health, update_health

PARAMS = {
    "Dense_0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.zeros(2)},
    "head": {"kernel": jnp.array([[1.0], [1.0]]), "bias": jnp.array([1.0])},
}
GRADS = {
    "Dense_0": {"kernel": jnp.full((2, 2), 1e-9), "bias": jnp.zeros(2)},
    "head": {"kernel": jnp.array([[2e3], [0.0]]), "bias": jnp.array([0.0])},
}


def recorded(tx):
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    return health_record(state)


def test_the_record_holds_the_norms_by_hand():
    tx = optax.chain(gradient_health(), optax.sgd(0.5), update_health())
    record = recorded(tx)
    grad_dense, grad_head = np.sqrt(4 * 1e-18), 2e3
    assert record["module_grad_norms"] == {
        "Dense_0": pytest.approx(grad_dense, rel=1e-6), "head": pytest.approx(grad_head),
    }  # fmt: skip
    assert record["module_param_norms"] == {"Dense_0": 5.0, "head": pytest.approx(np.sqrt(3))}
    assert record["module_grad_ratios"]["head"] == pytest.approx(grad_head / np.sqrt(3), rel=1e-6)
    assert record["grad_norm"] == pytest.approx(np.hypot(grad_dense, grad_head), rel=1e-6)
    assert record["vanishing"] == ["Dense_0"] and record["exploding"] == ["head"]
    assert record["module_update_norms"]["head"] == pytest.approx(0.5 * grad_head, rel=1e-6)
    assert record["update_norm"] == pytest.approx(0.5 * record["grad_norm"], rel=1e-6)
    assert all(isinstance(value, float) for value in record["module_grad_norms"].values())


def test_either_state_alone_and_none():
    assert set(recorded(optax.chain(update_health(), optax.sgd(0.1)))) == {
        "update_norm", "module_update_norms", "module_update_ratios",
    }  # fmt: skip
    assert "update_norm" not in recorded(optax.chain(gradient_health(), optax.sgd(0.1)))
    assert recorded(optax.sgd(0.1)) is None


def test_two_gradient_states_or_a_batched_one_are_refused(getkey):
    with pytest.raises(ValueError, match="at most one"):
        recorded(optax.chain(gradient_health(), gradient_health(), optax.sgd(0.1)))
    model, tx = TinyNet(), optax.chain(gradient_health(), optax.sgd(0.1))
    images, _ = toy_problem(seed=0, num_examples=4)
    states = create_ensemble(model, tx, jax.random.split(getkey(), 2), jnp.asarray(images[:1]))
    with pytest.raises(ValueError, match="ensemble_member"):
        health_record(states.opt_state)


def test_fit_logs_the_last_step_of_every_epoch():
    train, labels = toy_problem(seed=1, num_examples=96)
    tx = optax.chain(gradient_health(), optax.sgd(0.05), update_health())
    state, history = fit(TinyNet(), tx, train, labels, train, labels, epochs=2, batch_size=32,
                         runner="loop", progress=False)
    records = [record["health"] for record in history["epochs"]]
    assert records[0] != records[1]
    assert records[-1] == health_record(state.opt_state)
    for record in records:
        for name, norm in record["module_grad_norms"].items():
            assert record["module_update_norms"][name] == pytest.approx(0.05 * norm, rel=1e-5)
    _, plain = fit(TinyNet(), optax.sgd(0.05), train, labels, train, labels, epochs=1,
                   batch_size=32, runner="loop", progress=False)
    assert "health" not in plain["epochs"][0]
