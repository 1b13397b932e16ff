"""jit_with: one jitted function per equal arguments, and its arguments checked."""

import jax.numpy as jnp
import pytest

from jaxtricks.training.caching import jit_with


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
