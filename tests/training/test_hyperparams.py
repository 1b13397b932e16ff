"""``set_hyperparams``: writes injected hyperparameters wherever they sit in a state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtricks as jt
from jaxtricks.training import set_hyperparams

PARAMS = {"w": jnp.ones(3)}


def test_sets_every_injected_state_that_holds_the_name_and_leaves_the_input_alone():
    tx = optax.chain(
        optax.inject_hyperparams(jt.sgd)(learning_rate=0.1),
        optax.inject_hyperparams(jt.adam)(learning_rate=0.2, b1=0.9),
    )
    state = tx.init(PARAMS)
    new = set_hyperparams(state, {"learning_rate": 0.5, "b1": 0.8})
    assert [float(s.hyperparams["learning_rate"]) for s in new] == [0.5, 0.5]
    assert float(new[1].hyperparams["b1"]) == pytest.approx(0.8)
    assert [float(s.hyperparams["learning_rate"]) for s in state] == pytest.approx([0.1, 0.2])
    assert new[1].hyperparams["b1"].dtype == state[1].hyperparams["b1"].dtype


def test_the_new_value_is_what_the_next_update_uses():
    tx = optax.MultiSteps(optax.inject_hyperparams(jt.sgd)(learning_rate=0.1), every_k_schedule=1)
    state = set_hyperparams(tx.init(PARAMS), {"learning_rate": 2.0})
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps is not strict-clean
        updates, _ = tx.update({"w": jnp.ones(3)}, state, PARAMS)
    np.testing.assert_allclose(updates["w"], -2.0 * np.ones(3))


def test_works_on_tracers_under_jit_without_compiling_again():
    tx = optax.inject_hyperparams(jt.sgd)(learning_rate=0.1)
    state = set_hyperparams(tx.init(PARAMS), {"learning_rate": 0.1})

    @jax.jit
    def step(state, rate):
        state = set_hyperparams(state, {"learning_rate": rate})
        return tx.update({"w": jnp.ones(3)}, state, PARAMS)[0]["w"]

    for rate in (0.5, 3.0):
        np.testing.assert_allclose(step(state, jnp.float32(rate)), -rate * np.ones(3))
    assert step._cache_size() == 1


def test_stacked_states_take_one_value_per_member():
    tx = optax.inject_hyperparams(jt.sgd)(learning_rate=0.1)
    stacked = jax.vmap(lambda _: tx.init(PARAMS))(jnp.arange(3))
    new = set_hyperparams(stacked, {"learning_rate": [1.0, 2.0, 3.0]})
    np.testing.assert_allclose(new.hyperparams["learning_rate"], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("tx", "values", "match"),
    [
        (optax.inject_hyperparams(jt.sgd)(learning_rate=0.1), {"momentum": 0.9},
         r"^values\['momentum'\]: .*no injected hyperparameter.*\['learning_rate'\]"),
        (jt.sgd(0.1), {"learning_rate": 0.9}, "no injected hyperparameter"),
        (optax.inject_hyperparams(jt.sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 5)),
         {"learning_rate": 0.9}, "schedule"),
    ],
)
def test_a_name_it_cannot_set_is_refused(tx, values, match):
    with pytest.raises(ValueError, match=match):
        set_hyperparams(tx.init(PARAMS), values)
    with pytest.raises(ValueError, match=r"^given\["):
        set_hyperparams(tx.init(PARAMS), values, argument="given")
