"""Properties of every initializer in ``jaxtricks.tricks.initializers`` for random requests.

For 2-D (dense) and 4-D (convolution) shapes, zero-size ones included, every float dtype
(float64 under ``jax.enable_x64``), complex64 (complex128 under x64) for the initializers that
draw complex numbers, and random keys, ``jaxtricks.testing.check_initializer`` checks that the
array has exactly the requested shape and dtype, is finite and is a function of the key alone
(the same key gives the same bits, another key other values). Under ``jit`` it draws the same
array, for one convolution shape (each initializer compiles once per dtype).
"""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from per_case import per_case

from jaxtricks.testing import INITIALIZER_CHECKS, REAL_DTYPES, check_initializer
from jaxtricks.testing.strategies import COMPLEX64, FLOAT64
from jaxtricks.tricks import initializers

COMPLEX128 = np.dtype(np.complex128)
# Every name ``get`` knows, with its defaults (``variance_scaling`` has none: it is drawn
# below), and the factories' options that change the draw.
INITIALIZERS = {
    name: initializers.get(name) for name in initializers.NAMES if name != "variance_scaling"
} | {
    "he_normal_leaky": initializers.he_normal(negative_slope=0.2),
    "normal_stddev": initializers.normal(0.1),
    "uniform_scale": initializers.uniform(0.5),
    "truncated_normal_bounds": initializers.truncated_normal(0.5, lower=-1.0, upper=3.0),
    "orthogonal_first_axis": initializers.orthogonal(2.0, column_axis=0),
}
CONSTANT = {"zeros", "ones"}
# As JAX's, these draw real numbers only and refuse a complex dtype with a ValueError.
REAL_ONLY = {
    "symmetric_uniform", "truncated_normal", "truncated_normal_bounds", "uniform",
    "uniform_scale",
}
NAMES = sorted(INITIALIZERS)

# Dense (in, out) and convolution (h, w, in, out) kernels, zero-size ones among them. A menu,
# not any shape: each initializer compiles once per shape and dtype, and the cache then hits.
SHAPES = st.sampled_from(
    [(1, 1), (5, 3), (2, 7), (0, 4), (3, 3, 2, 4), (1, 1, 6, 2), (2, 3, 1, 5), (3, 3, 0, 2)]
)
REAL_DTYPES_X64 = st.sampled_from((*REAL_DTYPES, FLOAT64))
DTYPES_X64 = st.sampled_from((*REAL_DTYPES, FLOAT64, COMPLEX64, COMPLEX128))
KEYS = st.integers(0, 2**32 - 1).map(jax.random.key)
# Compiling is the cost of a "jit" check: it has a test of its own, on one shape.
EAGER = [check for check in INITIALIZER_CHECKS if check != "jit"]


def wide(dtype):
    """Whether the dtype exists only under ``jax.enable_x64``."""
    return dtype in (FLOAT64, COMPLEX128)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@per_case
@given(key=KEYS, shape=SHAPES, data=st.data())
def test_draws_the_requested_shape_and_dtype_as_a_function_of_the_key(name, key, shape, data):
    dtype = data.draw(REAL_DTYPES_X64 if name in REAL_ONLY else DTYPES_X64)
    with jax.enable_x64(wide(dtype)):
        check_initializer(
            INITIALIZERS[name], key, shape, dtype, random=name not in CONSTANT, checks=EAGER
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@per_case
@given(key=KEYS, data=st.data())
def test_jit_draws_what_eager_draws(name, key, data):
    dtype = data.draw(REAL_DTYPES_X64 if name in REAL_ONLY else DTYPES_X64)
    with jax.enable_x64(wide(dtype)):
        check_initializer(INITIALIZERS[name], key, (3, 3, 2, 4), dtype, checks=["jit"])


@given(
    scale=st.floats(0.01, 10.0),
    mode=st.sampled_from(initializers.MODES),
    distribution=st.sampled_from(initializers.DISTRIBUTIONS),
    key=KEYS,
    shape=SHAPES,
    dtype=DTYPES_X64,
)
def test_variance_scaling_draws_the_requested_shape_and_dtype(
    scale, mode, distribution, key, shape, dtype
):
    with jax.enable_x64(wide(dtype)):
        init = initializers.variance_scaling(scale, mode, distribution)
        check_initializer(init, key, shape, dtype, checks=EAGER)
