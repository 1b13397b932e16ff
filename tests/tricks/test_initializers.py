"""Tests for jaxtricks.tricks.initializers.

Statistical checks use a 5-standard-error tolerance. For n independent entries ``x_k`` the
sample mean has standard error ``√(m2 / n)`` and the sample mean square ``m2 = mean(x²)`` has
standard error ``√((m4 - m2²) / n)``, where ``m4 = mean(x⁴)`` estimates the fourth moment; this
covers normal, truncated-normal and uniform draws alike without assuming their kurtosis. A
correct initializer fails one such check with probability below 1e-6, and the keys are fixed,
so every run gives the same verdict. Draws are repeated until at least 200 000 entries, making
the variance tolerance about 5·√2/√200 000 ≈ 1.6 % for normal draws.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks import initializers as ini

SHAPES = [(784, 512), (256, 10), (3, 3, 32, 64), (5, 5, 1, 32)]
MIN_ENTRIES = 200_000
TOLERANCE_SE = 5.0


def fans(shape):
    """``(fan_in, fan_out)`` of a ``(*spatial, in, out)`` kernel, written out independently."""
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def scaled_variance(scale, mode):
    """``shape -> scale / fan`` for the documented ``mode``."""

    def variance(shape):
        fan_in, fan_out = fans(shape)
        return scale / {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[
            mode
        ]

    return variance


def orthogonal_variance(gain):
    """``shape -> gain² / max(rows, cols)``: exact, as the columns (or rows) have norm ``gain``."""

    def variance(shape):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        return gain**2 / max(rows, cols)

    return variance


LEAKY = 2 / (1 + 0.2**2)
# The variance of N(0, 1) cut at ±2 (JAX's truncated_normal, before any widening).
CUT_VARIANCE = 1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2))
# (id, factory() -> init, shape -> documented variance); all of them have mean 0.
CASES = [
    *(
        (
            f"variance_scaling-2-{mode}-{distribution}",
            functools.partial(ini.variance_scaling, 2.0, mode, distribution),
            scaled_variance(2.0, mode),
        )
        for mode in ("fan_in", "fan_out", "fan_avg")
        for distribution in ("normal", "truncated_normal", "uniform")
    ),
    ("lecun_normal", ini.lecun_normal, scaled_variance(1.0, "fan_in")),
    ("lecun_uniform", ini.lecun_uniform, scaled_variance(1.0, "fan_in")),
    ("glorot_normal", ini.glorot_normal, scaled_variance(1.0, "fan_avg")),
    ("glorot_normal_untruncated", ini.glorot_normal_untruncated, scaled_variance(1.0, "fan_avg")),
    ("glorot_uniform", ini.glorot_uniform, scaled_variance(1.0, "fan_avg")),
    ("he_normal", ini.he_normal, scaled_variance(2.0, "fan_in")),
    ("he_normal_untruncated", ini.he_normal_untruncated, scaled_variance(2.0, "fan_in")),
    ("he_uniform", ini.he_uniform, scaled_variance(2.0, "fan_in")),
    (
        "he_normal-leaky-0.2",
        functools.partial(ini.he_normal, negative_slope=0.2),
        scaled_variance(LEAKY, "fan_in"),
    ),
    (
        "he_uniform-leaky-0.2",
        functools.partial(ini.he_uniform, negative_slope=0.2),
        scaled_variance(LEAKY, "fan_in"),
    ),
    ("gaussian", ini.gaussian, scaled_variance(1.0, "fan_in")),
    ("normal", ini.normal, lambda shape: 0.01**2),
    ("normal-0.1", functools.partial(ini.normal, 0.1), lambda shape: 0.1**2),
    ("unscaled_normal", ini.unscaled_normal, lambda shape: 1.0),
    ("truncated_normal", ini.truncated_normal, lambda shape: 0.01**2 * CUT_VARIANCE),
    ("symmetric_uniform", ini.symmetric_uniform, lambda shape: 0.05**2 / 3),
    ("symmetric_uniform-0.3", functools.partial(ini.symmetric_uniform, 0.3), lambda s: 0.3**2 / 3),
    ("orthogonal", ini.orthogonal, orthogonal_variance(1.0)),
    ("orthogonal-2", functools.partial(ini.orthogonal, 2.0), orthogonal_variance(2.0)),
]
CASE_IDS = [case[0] for case in CASES]
# Every factory, JAX's uniform (mean scale / 2) included.
FACTORIES = [pytest.param(case[1], id=case[0]) for case in CASES] + [
    pytest.param(ini.uniform, id="uniform")
]
FAN_FREE = ("normal", "unscaled_normal", "truncated_normal", "symmetric_uniform", "uniform")
FAN_BASED = [p for p in FACTORIES if not p.id.startswith(FAN_FREE)]
# The factories JAX accepts complex dtypes in, and those it refuses them in.
COMPLEX_OK = [p for p in FACTORIES if not p.id.startswith(FAN_FREE[2:])]
REAL_ONLY = [p for p in FACTORIES if p.id.startswith(FAN_FREE[2:])]


def draw_many(init, shape, getkey):
    """At least ``MIN_ENTRIES`` entries: independent kernels of ``shape``, one per key.

    A loop of eager calls reuses the module's compiled draw for the shape; a vmap would compile
    anew for every initializer.
    """
    count = -(-MIN_ENTRIES // math.prod(shape))
    return np.stack([np.asarray(init(getkey(), shape), np.float64) for _ in range(count)])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("factory", "expected_variance"), [c[1:] for c in CASES], ids=CASE_IDS)
def test_mean_and_variance_match_the_documented_formula(factory, expected_variance, shape, getkey):
    x = draw_many(factory(), shape, getkey).ravel()
    n = x.size
    m2 = np.mean(x**2)
    m4 = np.mean(x**4)
    assert abs(np.mean(x)) <= TOLERANCE_SE * math.sqrt(m2 / n)
    target = expected_variance(shape)
    assert abs(m2 - target) <= TOLERANCE_SE * math.sqrt((m4 - m2**2) / n), (m2, target)


AXIS_CONFIGS = [
    pytest.param((784, 512), {}, id="dense"),
    pytest.param((3, 3, 32, 64), {}, id="conv"),
    pytest.param((8, 3, 3, 16, 32), {"batch_axis": 0}, id="batch_axis"),
    pytest.param((32, 3, 3, 64), {"in_axis": 0, "out_axis": -1}, id="in_axis-first"),
    pytest.param((4, 8, 3, 16), {"in_axis": (0, 1), "out_axis": (-1,)}, id="axis-sequences"),
]
MODES = ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]


def assert_same_as_jax(scale, mode, distribution, shape, axes, key, dtype=None):
    # Both scale the same standard draw from jax.random for the same key, so equal arrays mean
    # equal fans, equal variance and equal truncation correction.
    ours = ini.variance_scaling(scale, mode, distribution, **axes)(key, shape, dtype)
    theirs = jax.nn.initializers.variance_scaling(scale, mode, distribution, **axes)(
        key, shape, dtype
    )
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "axes"), AXIS_CONFIGS)
@pytest.mark.parametrize("mode", MODES)
def test_variance_scaling_fans_match_jax(mode, shape, axes, getkey):
    assert_same_as_jax(0.7, mode, "truncated_normal", shape, axes, getkey())


@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
@pytest.mark.parametrize("mode", MODES)
def test_variance_scaling_distributions_match_jax(mode, distribution, getkey):
    assert_same_as_jax(0.7, mode, distribution, (3, 3, 32, 64), {}, getkey())


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
def test_complex_variance_scaling_matches_jax(distribution, getkey):
    assert_same_as_jax(2.0, "fan_in", distribution, (3, 3, 32, 64), {}, getkey(), jnp.complex64)


# The names jax.nn.initializers also has, each against JAX's, on the same key.
JAX_NAMED = [
    (ini.lecun_normal, jax.nn.initializers.lecun_normal),
    (ini.glorot_normal, jax.nn.initializers.glorot_normal),
    (ini.he_normal, jax.nn.initializers.he_normal),
    (ini.lecun_uniform, jax.nn.initializers.lecun_uniform),
    (ini.glorot_uniform, jax.nn.initializers.glorot_uniform),
    (ini.he_uniform, jax.nn.initializers.he_uniform),
    (ini.xavier_normal, jax.nn.initializers.xavier_normal),
    (ini.kaiming_uniform, jax.nn.initializers.kaiming_uniform),
    (ini.normal, jax.nn.initializers.normal),
    (ini.uniform, jax.nn.initializers.uniform),
    (ini.truncated_normal, jax.nn.initializers.truncated_normal),
]


@pytest.mark.parametrize(
    ("ours", "theirs"), JAX_NAMED, ids=[ours.__name__ for ours, _ in JAX_NAMED]
)
@pytest.mark.parametrize("shape", [(784, 512), (3, 3, 32, 64)], ids=str)
def test_named_match_jax_named_with_jax_defaults(ours, theirs, shape, getkey, allclose):
    key = getkey()
    allclose(ours()(key, shape), theirs()(key, shape), rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_options_match_jax(getkey, allclose):
    key = getkey()
    pairs = [
        (ini.normal(0.3), jax.nn.initializers.normal(0.3)),
        (ini.uniform(2.0), jax.nn.initializers.uniform(2.0)),
        (ini.truncated_normal(0.5, None, -1.0, 3.0),
         jax.nn.initializers.truncated_normal(0.5, None, -1.0, 3.0)),
        (ini.glorot_uniform(0, -1, (), jnp.float32),
         jax.nn.initializers.glorot_uniform(0, -1, (), jnp.float32)),
    ]
    for ours, theirs in pairs:
        allclose(ours(key, (32, 3, 3, 64)), theirs(key, (32, 3, 3, 64)), rtol=1e-5, atol=1e-8)


def test_complex_normal_matches_jax(getkey):
    key = getkey()
    ours = ini.normal(0.5)(key, (64, 32), jnp.complex64)
    theirs = jax.nn.initializers.normal(0.5)(key, (64, 32), jnp.complex64)
    assert ours.dtype == theirs.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)


@pytest.mark.parametrize(
    ("named", "scale", "mode", "distribution"),
    [
        (ini.lecun_normal(), 1.0, "fan_in", "truncated_normal"),
        (ini.lecun_uniform(), 1.0, "fan_in", "uniform"),
        (ini.glorot_normal(), 1.0, "fan_avg", "truncated_normal"),
        (ini.glorot_normal_untruncated(), 1.0, "fan_avg", "normal"),
        (ini.glorot_uniform(), 1.0, "fan_avg", "uniform"),
        (ini.he_normal(), 2.0, "fan_in", "truncated_normal"),
        (ini.he_normal_untruncated(), 2.0, "fan_in", "normal"),
        (ini.he_uniform(), 2.0, "fan_in", "uniform"),
        (ini.he_normal(negative_slope=0.5), 2.0 / 1.25, "fan_in", "truncated_normal"),
        (ini.he_normal_untruncated(negative_slope=0.5), 2.0 / 1.25, "fan_in", "normal"),
        (ini.he_uniform(negative_slope=-0.5), 2.0 / 1.25, "fan_in", "uniform"),
        (ini.gaussian(), 1.0, "fan_in", "normal"),
    ],
)
def test_named_are_variance_scaling(named, scale, mode, distribution, getkey):
    key = getkey()
    expected = ini.variance_scaling(scale, mode, distribution)(key, (3, 3, 32, 64))
    np.testing.assert_array_equal(named(key, (3, 3, 32, 64)), expected)


def test_unscaled_normal_is_normal_with_a_unit_default(getkey):
    key = getkey()
    np.testing.assert_array_equal(ini.unscaled_normal()(key, (7, 5)), ini.normal(1.0)(key, (7, 5)))


def test_aliases_are_the_same_functions():
    assert ini.xavier_normal is ini.glorot_normal
    assert ini.xavier_uniform is ini.glorot_uniform
    assert ini.kaiming_normal is ini.he_normal
    assert ini.kaiming_uniform is ini.he_uniform


def test_lesson_normal_is_plain_and_jax_named_normal_is_cut(getkey):
    shape = (784, 512)
    n = math.prod(shape)
    std = 1 / math.sqrt(fans(shape)[0])
    plain = np.asarray(ini.gaussian()(getkey(), shape), np.float64)
    # P(|Z| > 2) for Z ~ N(0, 1); the truncated draw never goes there.
    tail = 1 - math.erf(2 / math.sqrt(2))
    observed = np.mean(np.abs(plain) > 2 * std)
    assert abs(observed - tail) <= TOLERANCE_SE * math.sqrt(tail * (1 - tail) / n)

    # The truncated draw is N(0, s²) cut at ±2s with s chosen so the variance is std²: s = std / c
    # with c² = 1 - 4φ(2) / erf(√2) the variance of N(0, 1) cut at ±2.
    cut = np.asarray(ini.lecun_normal()(getkey(), shape), np.float64)
    bound = 2 * std / math.sqrt(CUT_VARIANCE)
    assert np.all(np.abs(cut) <= bound * (1 + 1e-6))
    assert np.max(np.abs(cut)) > 0.99 * bound


@pytest.mark.parametrize("scale", [0.05, 0.3, 2.0])
def test_symmetric_uniform_support_is_symmetric_half_open(scale, getkey):
    w = np.asarray(ini.symmetric_uniform(scale)(getkey(), (784, 512)))
    bound = np.float32(scale)
    assert w.min() >= -bound
    assert w.max() < bound
    # 400 000 draws come within 0.1 % of both ends unless the support is narrower.
    assert w.min() < -0.999 * bound
    assert w.max() > 0.999 * bound


@pytest.mark.parametrize("scale", [0.01, 2.0])
def test_uniform_is_jaxs_from_zero_to_scale(scale, getkey):
    x = np.asarray(ini.uniform(scale)(getkey(), (784, 512)), np.float64).ravel()
    assert x.min() >= 0 and x.max() < np.float32(scale)
    assert x.min() < 0.001 * scale and x.max() > 0.999 * scale
    # Mean scale / 2 and variance scale² / 12, to 5 standard errors.
    n = x.size
    assert abs(x.mean() - scale / 2) <= TOLERANCE_SE * scale / math.sqrt(12 * n)
    assert abs(x.var() - scale**2 / 12) <= TOLERANCE_SE * scale**2 / math.sqrt(180 * n)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_symmetric_uniform_support_in_narrow_dtypes(dtype, getkey):
    w = np.asarray(ini.symmetric_uniform(0.05)(getkey(), (784, 512), dtype), np.float64)
    bound = float(jnp.asarray(0.05, dtype))
    assert w.min() >= -bound
    assert w.max() <= bound


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    ("factory", "variance"),
    [
        (ini.lecun_uniform, scaled_variance(1.0, "fan_in")),
        (ini.glorot_uniform, scaled_variance(1.0, "fan_avg")),
        (ini.he_uniform, scaled_variance(2.0, "fan_in")),
    ],
    ids=["lecun_uniform", "glorot_uniform", "he_uniform"],
)
def test_variance_scaling_uniform_support(factory, variance, shape, getkey):
    w = np.asarray(factory()(getkey(), shape), np.float64)
    bound = math.sqrt(3 * variance(shape))
    assert np.all(np.abs(w) <= bound * (1 + 1e-6))
    assert np.max(np.abs(w)) > 0.99 * bound


def as_matrix(w, column_axis=-1):
    w = np.moveaxis(np.asarray(w, np.float64), column_axis, -1)
    return w.reshape(-1, w.shape[-1])


def assert_orthogonal(m, scale):
    """``mᴴm = scale² I`` for a tall ``m``, ``mmᴴ = scale² I`` for a wide one."""
    product = m.conj().T @ m if m.shape[0] >= m.shape[1] else m @ m.conj().T
    np.testing.assert_allclose(product, scale**2 * np.eye(len(product)), atol=2e-5 * scale**2)


@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize(
    "shape", [(784, 512), (256, 10), (10, 256), (64, 64), (3, 3, 32, 64), (5, 5, 1, 32)], ids=str
)
def test_orthogonal_is_orthogonal(shape, scale, getkey):
    assert_orthogonal(as_matrix(ini.orthogonal(scale)(getkey(), shape)), scale)


def test_complex_orthogonal_is_unitary(getkey):
    w = ini.orthogonal(2.0)(getkey(), (48, 16), jnp.complex64)
    assert w.dtype == jnp.complex64
    assert_orthogonal(np.asarray(w, np.complex128), 2.0)


def test_orthogonal_column_axis(getkey):
    w = ini.orthogonal(column_axis=0)(getkey(), (32, 3, 3, 64))
    m = as_matrix(w, column_axis=0)
    assert m.shape == (3 * 3 * 64, 32)
    assert_orthogonal(m, 1.0)


@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (3, 6)], ids=str)
def test_orthogonal_is_haar_unbiased(shape, getkey):
    # Haar-distributed entries have mean 0 and variance 1 / max(rows, cols); without the sign fix
    # on diag(R), QR's sign convention gives e.g. Q[0, 0] a mean far from 0.
    draws = 2000
    keys = jax.random.split(getkey(), draws)
    q = np.asarray(jax.jit(jax.vmap(lambda k: ini.orthogonal()(k, shape)))(keys), np.float64)
    standard_error = math.sqrt(1 / max(shape) / draws)
    assert np.all(np.abs(q.mean(axis=0)) <= TOLERANCE_SE * standard_error), q.mean(axis=0)


@pytest.mark.parametrize("factory", FACTORIES)
def test_same_key_same_array_different_key_different(factory, getkey):
    init = factory()
    key = getkey()
    first = init(key, (5, 5, 1, 32))
    np.testing.assert_array_equal(init(key, (5, 5, 1, 32)), first)
    assert not np.array_equal(init(getkey(), (5, 5, 1, 32)), first)


def test_raw_uint32_keys_are_accepted():
    init = ini.glorot_normal()
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(init(key, (256, 10)), init(key, (256, 10)))


# Every named initializer is variance_scaling (test_named_are_variance_scaling), so one per draw.
DISTINCT_DRAWS = [
    *(
        pytest.param(functools.partial(ini.variance_scaling, 2.0, "fan_avg", d), id=d)
        for d in ("normal", "truncated_normal", "uniform")
    ),
    *(
        pytest.param(f, id=f.__name__)
        for f in (ini.normal, ini.uniform, ini.symmetric_uniform, ini.truncated_normal,
                  ini.orthogonal)
    ),
]


@pytest.mark.parametrize("factory", DISTINCT_DRAWS)
def test_works_under_jit(factory, getkey, allclose):
    init = factory()
    key = getkey()
    jitted = jax.jit(init, static_argnums=(1, 2))
    allclose(jitted(key, (3, 3, 32, 64), jnp.float32), init(key, (3, 3, 32, 64), jnp.float32),
             rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("factory", FACTORIES)
def test_output_dtype_is_requested_and_rounds_the_float32_draw(factory, dtype, getkey):
    init = factory()
    key = getkey()
    w = init(key, (5, 5, 1, 32), dtype)
    assert w.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(w, init(key, (5, 5, 1, 32), jnp.float32).astype(dtype))


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.slow
def test_float64_under_x64(factory, getkey):
    with jax.enable_x64(True):
        w = np.asarray(factory()(getkey(), (5, 5, 1, 32), jnp.float64))
    assert w.dtype == np.float64
    # Drawn in float64, not widened from float32.
    assert np.any(w != w.astype(np.float32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.slow
def test_factory_dtype_is_the_default(dtype, getkey):
    key = getkey()
    for init in (ini.variance_scaling(1.0, "fan_in", "normal", dtype=dtype),
                 ini.he_uniform(dtype=dtype), ini.gaussian(dtype=dtype), ini.normal(dtype=dtype),
                 ini.uniform(dtype=dtype), ini.symmetric_uniform(dtype=dtype),
                 ini.truncated_normal(dtype=dtype), ini.orthogonal(dtype=dtype)):
        assert init(key, (5, 5, 1, 32)).dtype == jnp.dtype(dtype)
        # As in JAX, an explicit None is the default float, not the factory's dtype.
        assert init(key, (5, 5, 1, 32), None).dtype == jnp.float32


@pytest.mark.parametrize("factory", FACTORIES)
def test_default_dtype_is_jaxs_default_float(factory, getkey):
    assert factory()(getkey(), (4, 3)).dtype == jnp.float32
    with jax.enable_x64(True):
        assert factory()(getkey(), (4, 3)).dtype == jnp.float64


@pytest.mark.parametrize("factory", [ini.glorot_normal, ini.normal, ini.orthogonal])
def test_out_sharding_lays_the_draw_out(factory, getkey):
    # out_sharding belongs to JAX's explicit sharding mode.
    mesh = jax.sharding.Mesh(
        np.array(jax.devices()[:1]), ("x",), axis_types=(jax.sharding.AxisType.Explicit,)
    )
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "x"))
    key = getkey()
    w = factory()(key, (8, 4), None, sharding)
    assert w.sharding == sharding
    np.testing.assert_array_equal(np.asarray(w), np.asarray(factory()(key, (8, 4))))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 0, 2, 4)], ids=str)
@pytest.mark.parametrize("factory", FACTORIES)
def test_empty_shapes_give_empty_arrays(factory, shape, getkey):
    w = factory()(getkey(), shape)
    assert w.shape == shape
    assert w.dtype == jnp.float32


def test_flax_dense(getkey):
    params = nn.Dense(512, kernel_init=ini.glorot_uniform()).init(getkey(), jnp.ones((1, 784)))
    kernel = params["params"]["kernel"]
    assert kernel.shape == (784, 512)
    assert kernel.dtype == jnp.float32
    # Flax's own default (truncated lecun_normal) would break this bound at once.
    assert np.all(np.abs(np.asarray(kernel)) <= math.sqrt(6 / (784 + 512)) * (1 + 1e-6))

    dense = nn.Dense(
        64, kernel_init=ini.orthogonal(), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
    )
    kernel = dense.init(getkey(), jnp.ones((1, 784), jnp.bfloat16))["params"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    dense = nn.Dense(64, kernel_init=ini.orthogonal())
    assert_orthogonal(as_matrix(dense.init(getkey(), jnp.ones((1, 784)))["params"]["kernel"]), 1.0)


def test_flax_conv(getkey):
    conv = nn.Conv(64, (3, 3), kernel_init=ini.he_normal())
    kernel = np.asarray(conv.init(getkey(), jnp.ones((1, 8, 8, 32)))["params"]["kernel"],
                        np.float64)
    assert kernel.shape == (3, 3, 32, 64)
    m2, m4, n = np.mean(kernel**2), np.mean(kernel**4), kernel.size
    assert abs(m2 - 2 / (3 * 3 * 32)) <= TOLERANCE_SE * math.sqrt((m4 - m2**2) / n)

    conv = nn.Conv(32, (5, 5), kernel_init=ini.orthogonal())
    kernel = conv.init(getkey(), jnp.ones((1, 28, 28, 1)))["params"]["kernel"]
    assert kernel.shape == (5, 5, 1, 32)
    assert_orthogonal(as_matrix(kernel), 1.0)


@pytest.mark.parametrize(
    "name", [n for n in ini.NAMES if n not in ("variance_scaling", "zeros", "ones")]
)
def test_get_builds_the_named_factory(name, getkey):
    key = getkey()
    expected = getattr(ini, name)()(key, (256, 10))
    np.testing.assert_array_equal(ini.get(name)(key, (256, 10)), expected)
    np.testing.assert_array_equal(ini.get(name.upper())(key, (256, 10)), expected)


def test_get_forwards_options_and_maps_constants(getkey):
    key = getkey()
    np.testing.assert_array_equal(ini.get("Normal", stddev=0.5)(key, (4, 3)),
                                  ini.normal(0.5)(key, (4, 3)))
    built = ini.get("variance_scaling", scale=2.0, mode="fan_out", distribution="uniform")
    np.testing.assert_array_equal(built(key, (4, 3)),
                                  ini.variance_scaling(2.0, "fan_out", "uniform")(key, (4, 3)))
    assert ini.get("ZEROS") is jax.nn.initializers.zeros
    assert ini.get("ones") is jax.nn.initializers.ones


def test_every_public_initializer_has_a_name():
    factories = {name for name in ini.__all__ if name not in ("get", "NAMES")}
    assert factories <= set(ini.NAMES)


BAD_ARGUMENTS = [
    pytest.param(lambda: ini.variance_scaling(-1.0, "fan_in", "normal"), "scale", id="scale<0"),
    pytest.param(lambda: ini.variance_scaling(0.0, "fan_in", "normal"), "scale", id="scale=0"),
    pytest.param(lambda: ini.variance_scaling(1.0, "fan_geo", "normal"), "mode", id="mode"),
    pytest.param(lambda: ini.variance_scaling(1.0, "fan_in", "cauchy"), "distribution",
                 id="distribution"),
    pytest.param(lambda: ini.variance_scaling(1.0, "fan_in", "normal", in_axis="a"), "in_axis",
                 id="in_axis-type"),
    pytest.param(lambda: ini.lecun_normal(batch_axis=[0.5]), "batch_axis", id="batch_axis-type"),
    pytest.param(lambda: ini.he_normal(negative_slope=float("nan")), "negative_slope",
                 id="negative_slope"),
    pytest.param(lambda: ini.normal(stddev=-1.0), "stddev", id="stddev"),
    pytest.param(lambda: ini.uniform(scale=0.0), "scale", id="uniform-scale"),
    pytest.param(lambda: ini.symmetric_uniform(scale=-1.0), "scale", id="symmetric-scale"),
    pytest.param(lambda: ini.truncated_normal(upper=-3.0), "upper", id="upper-below-lower"),
    pytest.param(lambda: ini.orthogonal(scale=-1.0), "scale", id="orthogonal-scale"),
    pytest.param(lambda: ini.orthogonal(column_axis=1.5), "column_axis", id="column_axis-type"),
    pytest.param(lambda: ini.get("nope"), "name", id="get-unknown"),
    pytest.param(lambda: ini.get(3), "name", id="get-not-a-string"),
    pytest.param(lambda: ini.get("zeros", dtype=jnp.float32), "name", id="get-zeros-options"),
    pytest.param(lambda: ini.he_uniform(dtype=jnp.int32), "dtype", id="factory-int-dtype"),
    pytest.param(lambda: ini.uniform(dtype=jnp.complex64), "dtype", id="factory-complex-dtype"),
    pytest.param(lambda: ini.uniform(dtype="not a dtype"), "dtype", id="factory-bad-dtype"),
]


@pytest.mark.parametrize(("build", "argument"), BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="glorot_uniform") as info:
        ini.get("glorot")
    assert "'glorot'" in str(info.value)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize("factory", FACTORIES)
def test_non_float_dtype_is_refused_at_call(factory, dtype, getkey):
    with pytest.raises(ValueError, match="dtype"):
        factory()(getkey(), (4, 3), dtype)


@pytest.mark.parametrize("factory", REAL_ONLY)
def test_complex_dtype_is_refused_where_jax_refuses_it(factory, getkey):
    with pytest.raises(ValueError, match="dtype"):
        factory()(getkey(), (4, 3), jnp.complex64)


@pytest.mark.parametrize("factory", COMPLEX_OK)
def test_complex_dtype_draws_of_the_documented_mean_square(factory, getkey):
    init = factory()
    shape = (3, 3, 32, 64)
    expected = dict(zip(CASE_IDS, (case[2] for case in CASES), strict=True))
    w = np.concatenate(
        [np.asarray(init(getkey(), shape, jnp.complex64)).ravel() for _ in range(4)]
    )
    assert w.dtype == np.complex64
    name = next(p.id for p in COMPLEX_OK if p.values[0] is factory)
    # JAX's complex truncated normal has E|w|² ≈ 1.0176 σ² (see _COMPLEX_CUT_STD).
    factor = 1.0176 if "truncated_normal" in name or name.endswith(
        ("lecun_normal", "glorot_normal", "he_normal", "he_normal-leaky-0.2")
    ) else 1.0
    m2 = np.mean(np.abs(w) ** 2)
    np.testing.assert_allclose(m2, factor * expected[name](shape), rtol=0.02)


@pytest.mark.parametrize("shape", [(5,), ()], ids=str)
@pytest.mark.parametrize("factory", FAN_BASED)
def test_fan_based_refuse_rank_below_two(factory, shape, getkey):
    with pytest.raises(ValueError, match=r"shape \(") as info:
        factory()(getkey(), shape)
    assert str(shape) in str(info.value)


@pytest.mark.parametrize(
    "factory",
    [ini.normal, ini.unscaled_normal, ini.truncated_normal, ini.uniform, ini.symmetric_uniform],
)
def test_fan_free_accept_any_rank(factory, getkey):
    assert factory()(getkey(), (5,)).shape == (5,)
    assert factory()(getkey(), ()).shape == ()


@pytest.mark.parametrize(
    ("init", "argument"),
    [
        (ini.variance_scaling(1.0, "fan_in", "normal", in_axis=5), "in_axis"),
        (ini.variance_scaling(1.0, "fan_in", "normal", out_axis=-3), "out_axis"),
        (ini.variance_scaling(1.0, "fan_in", "normal", batch_axis=2), "batch_axis"),
        (ini.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=0), "in_axis"),
        (ini.variance_scaling(1.0, "fan_in", "normal", batch_axis=-1), "batch_axis"),
        (ini.orthogonal(column_axis=2), "column_axis"),
    ],
    ids=["in_axis", "out_axis", "batch_axis", "overlap", "batch-overlaps-out", "column_axis"],
)
def test_axes_that_do_not_fit_the_shape_raise(init, argument, getkey):
    with pytest.raises(ValueError, match=argument) as info:
        init(getkey(), (4, 3))
    assert "(4, 3)" in str(info.value)


def test_bad_shape_raises(getkey):
    with pytest.raises(ValueError, match="shape"):
        ini.glorot_normal()(getkey(), (4, -3))
