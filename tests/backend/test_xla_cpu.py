"""configure_xla_cpu: when it sets the YNN fusion flag, and that jaxlib takes the flag."""

import os
import subprocess
import sys

import jaxlib
import pytest

from jaxtricks.backend.xla_cpu import YNN_FUSION_FLAG, configure_xla_cpu

FLAG_NAME = YNN_FUSION_FLAG.split("=")[0]


def test_sets_the_flag_when_absent():
    env = {}
    assert configure_xla_cpu(env, jaxlib_version="0.10.2", backend_started=False) == "set"
    assert env == {"XLA_FLAGS": YNN_FUSION_FLAG}


def test_appends_to_flags_already_there():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert configure_xla_cpu(env, jaxlib_version="0.10.0", backend_started=False) == "set"
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", YNN_FUSION_FLAG]


@pytest.mark.parametrize("value", ["dot", "+dot", "dot,eltwise,reduce"])
def test_leaves_a_users_setting_alone(value):
    env = {"XLA_FLAGS": f"--xla_cpu_use_xnnpack=true {FLAG_NAME}={value}"}
    before = dict(env)
    assert configure_xla_cpu(env, jaxlib_version="0.10.2", backend_started=False) == "already set"
    assert env == before


@pytest.mark.parametrize("version", ["0.9.2", "0.11.0", "1.0.0", "dev", ""])
def test_changes_nothing_on_jaxlib_versions_not_measured(version):
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert configure_xla_cpu(env, jaxlib_version=version, backend_started=False) == "other jaxlib"
    assert env == {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(jaxlib_version=0.10), "jaxlib_version must be a string"),
     (dict(backend_started="no"), "backend_started must be a bool")],
)
def test_bad_arguments_are_refused(kwargs, message):
    env = {}
    with pytest.raises(ValueError, match=message):
        configure_xla_cpu(env, **kwargs)
    assert env == {}


def test_changes_nothing_once_the_backend_has_started():
    env = {}
    assert configure_xla_cpu(env, jaxlib_version="0.10.2", backend_started=True) == "too late"
    assert env == {}


def test_asks_jax_whether_the_backend_has_started():
    # The tests have run computations by now (and conftest configured this process), so the
    # real question gets the real answer: too late.
    import jax.numpy as jnp

    jnp.ones(1).block_until_ready()
    env = {}
    expected = "too late" if jaxlib.__version__.startswith("0.10.") else "other jaxlib"
    assert configure_xla_cpu(env) == expected
    assert env == {}


_PROBE = """
from jaxtricks.backend import configure_xla_cpu
print(configure_xla_cpu())
import jax, jax.numpy as jnp
from jax import lax
x, w = jnp.ones((32, 14, 14, 32)), jnp.ones((3, 3, 32, 64))
def loss(w):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.sum()
print("ynn_fusion" in jax.jit(jax.grad(loss)).lower(w).compile().as_text())
"""


@pytest.mark.skipif(not jaxlib.__version__.startswith("0.10."), reason="measured on jaxlib 0.10")
@pytest.mark.parametrize(
    ("xla_flags", "outcome", "fused"),
    [("", "set", "False"), (f"{FLAG_NAME}=+dot", "already set", "True")],
)
def test_the_flag_takes_convolutions_out_of_ynn_fusions(xla_flags, outcome, fused):
    # In a fresh process, before JAX starts: jaxlib accepts the flag (an unknown one aborts the
    # process) and the compiled weight gradient is no longer a YNNPACK fusion; with jaxlib's
    # default kept ("+dot"), it still is.
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env["XLA_FLAGS"] = xla_flags
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-2:] == [outcome, fused]
