"""Shared test set-up: strict dtype and rank promotion, fresh keys, pytree comparison."""

import itertools

import jax
import numpy as np
import pytest

from jaxtricks.backend import configure_host_allocator, configure_xla_cpu

# The tests run with the XLA:CPU and malloc settings the command line uses; set before JAX starts.
configure_xla_cpu()
configure_host_allocator()

# Implicit promotion hides dtype bugs; every test runs with both made errors.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="module")
def _compiled_code_freed_after_each_module():
    """Drops JAX's compiled executables after each test module, so a long-lived pytest-xdist
    worker does not hold those of every module it ran (XLA:CPU crashed compiling in workers
    that had grown to several GB)."""
    yield
    jax.clear_caches()


@pytest.fixture
def getkey():
    """A function returning a fresh PRNG key on each call, reproducible per test."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))


def tree_allclose(actual, expected, *, rtol=1e-6, atol=0.0):
    """Asserts two pytrees have the same structure, shapes, dtypes and close values."""
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert actual_def == expected_def, f"structures differ: {actual_def} vs {expected_def}"
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"shapes differ: {a.shape} vs {e.shape}"
        assert a.dtype == e.dtype, f"dtypes differ: {a.dtype} vs {e.dtype}"
        np.testing.assert_allclose(
            a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol
        )


@pytest.fixture
def allclose():
    """The :func:`tree_allclose` helper as a fixture, so test modules need no import path."""
    return tree_allclose
