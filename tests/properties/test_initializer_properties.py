"""Properties of every initializer in ``jaxtricks.tricks.initializers`` for random requests.

For 2-D (dense) and 4-D (convolution) shapes, zero-size ones included, every float dtype
(float64 under ``jax.enable_x64``) and random keys: the array has exactly the requested shape
and dtype, is finite, and is a function of the key alone (the same key gives the same bits,
another key other values).
"""

import chex
import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import DTYPES, FLOAT64

from jaxtricks.tricks import initializers

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
NAMES = sorted(INITIALIZERS)

# Dense (in, out) and convolution (h, w, in, out) kernels, zero-size ones among them. A menu,
# not any shape: each initializer compiles once per shape and dtype, and the cache then hits.
SHAPES = st.sampled_from(
    [(1, 1), (5, 3), (2, 7), (0, 4), (3, 3, 2, 4), (1, 1, 6, 2), (2, 3, 1, 5), (3, 3, 0, 2)]
)
DTYPES_X64 = st.sampled_from((*DTYPES, FLOAT64))
KEYS = st.integers(0, 2**32 - 1).map(jax.random.key)


def check_request(init, key, shape, dtype, *, random):
    value = init(key, shape, dtype)
    chex.assert_shape(value, shape)
    chex.assert_type(value, dtype)
    chex.assert_tree_all_finite(value)
    chex.assert_trees_all_equal(init(key, shape, dtype), value)
    # Four or more draws from another key: equal bits by chance are practically impossible.
    if random and value.size >= 4:
        other = init(jax.random.fold_in(key, 1), shape, dtype)
        assert not np.array_equal(np.asarray(other), np.asarray(value))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@given(key=KEYS, shape=SHAPES, dtype=DTYPES_X64)
def test_draws_the_requested_shape_and_dtype_as_a_function_of_the_key(name, key, shape, dtype):
    with jax.enable_x64(dtype == FLOAT64):
        check_request(INITIALIZERS[name], key, shape, dtype, random=name not in CONSTANT)


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
    with jax.enable_x64(dtype == FLOAT64):
        init = initializers.variance_scaling(scale, mode, distribution)
        check_request(init, key, shape, dtype, random=True)
