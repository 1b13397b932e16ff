"""jit_with: one jitted function per equal arguments, its arguments checked, and what is compiled
with it keeps nothing alive past its cache."""

import gc
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxtricks.training import caching
from jaxtricks.training.averaging import recompute_batch_stats
from jaxtricks.training.caching import jit_with
from jaxtricks.training.ensemble import create_ensemble, ensemble_probabilities


def _add(offset, x):
    return x + offset


def test_equal_arguments_share_one_jitted_function_with_the_first_bound():
    f = jit_with(_add, 2.0, donate_argnums=())
    assert f is jit_with(_add, 2.0) and f is not jit_with(_add, 3.0)
    assert float(f(jnp.ones(()))) == 3.0


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"fn": "not a function", "first": 1}, "fn"),
    ({"fn": _add, "first": 1, "donate_argnums": (-1,)}, "donate_argnums"),
    ({"fn": _add, "first": 1, "donate_argnums": (True,)}, "donate_argnums"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        jit_with(**kwargs)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def test_ensemble_probabilities_and_recomputed_statistics_keep_no_model_alive():
    # Compiled with the model bound in (jit_with), not as a static argument of a module-level
    # jit, whose cache would hold every model and its executables for the life of the process.
    x = jnp.ones((4, 5))
    ensembled, measured = _Net(), _Net()
    states = create_ensemble(ensembled, optax.sgd(0.1), jax.random.split(jax.random.key(0), 2), x)
    ensemble_probabilities(ensembled, states, x)
    variables = measured.init(jax.random.key(0), x, train=False)
    recompute_batch_stats(measured, variables["params"], x, batch_size=2,
                          batch_stats_template=variables["batch_stats"])
    refs = [weakref.ref(ensembled), weakref.ref(measured)]
    del ensembled, measured, states, variables
    caching._cached.cache_clear()
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
