"""Tests for jaxtricks.cli.diagnostics_plot: per-layer gradient norms over training as a PNG."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.cli.diagnostics_plot import gradient_norm_series, plot_gradient_norms
from jaxtricks.tricks.diagnostics import get_health, gradient_health
from jaxtricks.tricks.optimizers import sgd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_records_and_series_give_the_same_series():
    records = [{"b": 1.0, "a": 2.0}, {"a": 3.0, "b": 4.0}, {"b": 5.0, "a": 0.0}]
    series = gradient_norm_series(records)
    assert list(series) == ["b", "a"]
    np.testing.assert_array_equal(series["a"], [2.0, 3.0, 0.0])
    again = gradient_norm_series({"b": [1.0, 4.0, 5.0], "a": np.array([2.0, 3.0, 0.0])})
    assert {k: v.tolist() for k, v in again.items()} == {k: v.tolist() for k, v in series.items()}


def test_norms_recorded_in_training_are_plotted(tmp_path):
    params = {"Dense_0": {"kernel": jnp.ones((3, 2))}, "head": {"kernel": jnp.ones((2, 1))}}
    tx = optax.chain(gradient_health(), sgd(0.1))
    state = tx.init(params)

    def loss(params, x):
        return jnp.sum(jnp.tanh(x @ params["Dense_0"]["kernel"]) @ params["head"]["kernel"])

    update = jax.jit(tx.update)
    records = []
    for step in range(4):
        grads = jax.grad(loss)(params, jnp.full((1, 3), 0.5 * step))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        records.append(jax.device_get(get_health(state, "module_grad_norms")))
    assert records[0]["head"] == 0.0  # a zero norm is left out of the log plot, not an error
    path = plot_gradient_norms(
        records, tmp_path / "norms.png", steps=[1, 2, 3, 4], vanish_threshold=1e-7,
        explode_threshold=1e3,
    )
    assert path == str(tmp_path / "norms.png")
    assert (tmp_path / "norms.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["norms.png"]


@pytest.mark.parametrize(
    ("records", "kwargs", "match"),
    [
        ([], {}, "records must be a non-empty"),
        ([{"a": 1.0}, {"b": 1.0}], {}, r"records\[1\] has the modules"),
        ({"a": [1.0, 2.0], "b": [1.0]}, {}, "one length"),
        ({}, {}, "one 1-D sequence"),
        ([{"a": 1.0}], {"steps": [1, 2]}, "steps must hold 1"),
        ([{"a": 1.0}], {"vanish_threshold": 0.0}, "vanish_threshold"),
        ([{"a": 1.0}], {"explode_threshold": float("inf")}, "explode_threshold"),
    ],
)
def test_bad_arguments_raise_naming_them(tmp_path, records, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_gradient_norms(records, tmp_path / "x.png", **kwargs)
    assert not list(tmp_path.iterdir())
