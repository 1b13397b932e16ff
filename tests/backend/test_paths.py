"""Tests for jaxtricks.backend.paths: the one place that chooses the speed paths."""

import jax
import pytest

from jaxtricks.backend import PLAIN, SpeedPaths, speed_paths, use_speed_paths


def test_measured_paths_on_the_cpu_and_plain_elsewhere():
    cpu = speed_paths("cpu")
    assert cpu.batch_norm_custom_gradient and cpu.runner == "auto" and not cpu.donate_state
    assert cpu.finite_check_by_sums and cpu.one_channel_conv_by_shifts
    for platform in ("gpu", "cuda", "rocm", "tpu", "metal"):
        assert speed_paths(platform) == PLAIN
    assert PLAIN == SpeedPaths(batch_norm_custom_gradient=False, runner="loop", donate_state=True,
                               finite_check_by_sums=False, one_channel_conv_by_shifts=False)
    assert speed_paths() == speed_paths(jax.default_backend())


def test_use_speed_paths_replaces_the_choice_inside_its_block_only():
    before = speed_paths()
    with use_speed_paths(PLAIN) as paths:
        assert paths == PLAIN and speed_paths("cpu") == PLAIN and speed_paths("tpu") == PLAIN
        with use_speed_paths(PLAIN._replace(runner="scan")):
            assert speed_paths().runner == "scan"
        assert speed_paths() == PLAIN
    assert speed_paths() == before


@pytest.mark.parametrize(
    ("paths", "name"),
    [
        ("plain", "paths must be a SpeedPaths"),
        (PLAIN._replace(runner="unrolled"), "paths.runner"),
        (PLAIN._replace(donate_state=1), "paths.donate_state"),
        (PLAIN._replace(batch_norm_custom_gradient=None), "paths.batch_norm_custom_gradient"),
        (PLAIN._replace(finite_check_by_sums="yes"), "paths.finite_check_by_sums"),
        (PLAIN._replace(one_channel_conv_by_shifts=0), "paths.one_channel_conv_by_shifts"),
    ],
)
def test_bad_paths_are_refused(paths, name):
    with pytest.raises(ValueError, match=name), use_speed_paths(paths):
        pass


def test_a_platform_must_be_a_string():
    with pytest.raises(ValueError, match="platform"):
        speed_paths(3)


def test_the_batch_norm_layer_follows_the_paths():
    import jax.numpy as jnp

    from jaxtricks.models import BatchNorm

    x = jnp.arange(24.0).reshape(6, 4)
    layer = BatchNorm(use_running_average=False)
    variables = layer.init(jax.random.key(0), x)

    def grad(paths):
        with use_speed_paths(paths):
            def loss(params):
                y, _ = layer.apply({**variables, "params": params}, x * x, mutable=["batch_stats"])
                return jnp.sum(y * jnp.arange(24.0).reshape(6, 4))

            return jax.jit(jax.grad(loss)).lower(variables["params"]).as_text(), jax.grad(loss)(
                variables["params"])

    custom_text, custom = grad(PLAIN._replace(batch_norm_custom_gradient=True))
    plain_text, plain = grad(PLAIN)
    # Two different programs (the hand-written gradient has no autodiff of rsqrt) ...
    assert custom_text != plain_text
    # ... computing the same gradient.
    for a, b in zip(jax.tree.leaves(custom), jax.tree.leaves(plain), strict=True):
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-5)
