"""Tests for jaxtricks.tricks.averaging: EMA, Polyak and SWA of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtricks.tricks.averaging import (
    EmaParamsState,
    SwaParamsState,
    ema_params,
    polyak_params,
    swa_params,
)


def sequence(seed, length=6):
    """A made-up trajectory θ_1..θ_T of a small parameter tree (float32 and bfloat16)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16),
        }
        for _ in range(length)
    ]


INIT = jax.tree.map(jnp.zeros_like, sequence(0, 1)[0])


def run(averaging, trajectory, init=INIT):
    state = averaging.init(init)
    for params in trajectory:
        state = averaging.update(state, params)
    return state


def weighted_mean(trajectory, weights):
    """Σ a_k θ_k / Σ a_k in float64, cast back to each leaf's dtype."""
    weights = np.asarray(weights, np.float64) / np.sum(weights)

    def mean(*leaves):
        stacked = np.stack([np.asarray(leaf, np.float64) for leaf in leaves])
        return jnp.asarray(np.tensordot(weights, stacked, axes=1), leaves[0].dtype)

    return jax.tree.map(mean, *trajectory)


def test_ema_with_decay_zero_is_the_latest_params(allclose):
    trajectory = sequence(1)
    for debias in (True, False):
        ema = ema_params(0.0, debias=debias)
        allclose(ema.averaged(run(ema, trajectory)), trajectory[-1], rtol=0)


def test_ema_with_decay_one_without_debias_keeps_the_initial_params(allclose):
    init = sequence(2, 1)[0]
    ema = ema_params(1.0, debias=False)
    allclose(ema.averaged(run(ema, sequence(3), init=init)), init, rtol=0)


def test_ema_with_decay_one_debiased_is_the_uniform_mean(allclose):
    trajectory = sequence(4)
    ema = ema_params(1.0)
    expected = weighted_mean(trajectory, np.ones(len(trajectory)))
    allclose(ema.averaged(run(ema, trajectory))["w"], expected["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_debiased_ema_is_the_normalized_discounted_sum(allclose, decay):
    trajectory = sequence(5)
    t = len(trajectory)
    expected = weighted_mean(trajectory, [decay ** (t - k) for k in range(1, t + 1)])
    actual = ema_params(decay).averaged(run(ema_params(decay), trajectory))
    allclose(actual["w"], expected["w"], rtol=1e-5, atol=1e-6)
    allclose(actual["b"], expected["b"], rtol=2e-2, atol=2e-2)  # bfloat16 leaf


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_plain_ema_starts_from_init(allclose, decay):
    init, trajectory = sequence(6, 1)[0], sequence(7)
    t = len(trajectory)
    # θ̄_t = d^t θ_0 + Σ_k (1 − d) d^{t−k} θ_k: weights on (θ_0, θ_1, ..., θ_t).
    weights = [decay**t] + [(1 - decay) * decay ** (t - k) for k in range(1, t + 1)]
    expected = weighted_mean([init, *trajectory], weights)
    actual = ema_params(decay, debias=False).averaged(
        run(ema_params(decay, debias=False), trajectory, init=init)
    )
    allclose(actual["w"], expected["w"], rtol=1e-5, atol=1e-6)


def test_ema_decay_schedule():
    # d_t = 0 on the last update: the average becomes the last params whatever came before.
    ema = ema_params(lambda count: jnp.where(count < 3, 0.9, 0.0))
    trajectory = sequence(8, 4)
    np.testing.assert_array_equal(ema.averaged(run(ema, trajectory))["w"], trajectory[-1]["w"])


def test_averages_keep_the_params_dtypes():
    for averaging in (ema_params(0.9), polyak_params(), swa_params(2, 2)):
        average = averaging.averaged(run(averaging, sequence(9)))
        assert jax.tree.map(lambda leaf: leaf.dtype, average) == {
            "w": jnp.float32,
            "b": jnp.bfloat16,
        }


def test_polyak_is_the_arithmetic_mean(allclose):
    trajectory = sequence(10, 7)
    state = run(polyak_params(), trajectory)
    assert isinstance(state, SwaParamsState)
    assert int(state.num_averaged) == 7
    expected = weighted_mean(trajectory, np.ones(7))
    allclose(polyak_params().averaged(state)["w"], expected["w"], rtol=1e-5, atol=1e-6)


def test_swa_of_constant_params_is_those_params(allclose):
    constant = sequence(11, 1)[0]
    swa = swa_params(start=2, every=3)
    allclose(swa.averaged(run(swa, [constant] * 8)), constant, rtol=0)


def test_swa_averages_only_the_window(allclose):
    trajectory = sequence(12, 9)
    swa = swa_params(start=3, every=2)
    state = run(swa, trajectory)
    # Updates t = 3, 5, 7, 9 enter.
    assert int(state.num_averaged) == 4
    expected = weighted_mean([trajectory[t - 1] for t in (3, 5, 7, 9)], np.ones(4))
    allclose(swa.averaged(state)["w"], expected["w"], rtol=1e-5, atol=1e-6)


def test_swa_tracks_the_params_before_the_window(allclose):
    trajectory = sequence(13, 3)
    swa = swa_params(start=5)
    state = swa.init(INIT)
    allclose(swa.averaged(state), INIT, rtol=0)
    for params in trajectory:
        state = swa.update(state, params)
        allclose(swa.averaged(state), params, rtol=0)
    assert int(state.num_averaged) == 0


@pytest.mark.parametrize(
    "averaging", [ema_params(0.9), ema_params(0.8, debias=False), polyak_params(), swa_params(2)]
)
def test_jit_and_scan_match_eager(allclose, averaging):
    trajectory = sequence(14, 5)
    eager = run(averaging, trajectory)
    update = jax.jit(averaging.update)
    jitted = averaging.init(INIT)
    for params in trajectory:
        jitted = update(jitted, params)
    # Compiled and op-by-op code may round bfloat16 differently (it depends on the CPU's
    # instructions): one bfloat16 ulp, 2**-7 relative, is allowed there, float32 stays tight.
    assert_close_per_dtype(allclose, jitted, eager)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *trajectory)
    scanned, _ = jax.lax.scan(
        lambda state, params: (averaging.update(state, params), None),
        averaging.init(INIT),
        stacked,
    )
    assert_close_per_dtype(allclose, scanned, eager)


def assert_close_per_dtype(allclose, actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        allclose(a, e, rtol=2**-7 if a.dtype == jnp.bfloat16 else 1e-6)


def test_state_types():
    state = ema_params(0.9).init(INIT)
    assert isinstance(state, EmaParamsState)
    assert state.count.dtype == jnp.int32 and state.weight_sum.dtype == jnp.float32


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: ema_params(1.5), "decay"),
        (lambda: ema_params(-0.1), "decay"),
        (lambda: ema_params(0.9, debias=None), "debias"),
        (lambda: swa_params(start=0), "start"),
        (lambda: swa_params(every=0), "every"),
        (lambda: swa_params(every=2.0), "every"),
    ],
)
def test_invalid_arguments_are_refused(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_mismatched_or_integer_params_are_refused():
    averaging = polyak_params()
    state = averaging.init(INIT)
    with pytest.raises(ValueError, match="params"):
        averaging.update(state, {"w": jnp.zeros((3, 2))})
    with pytest.raises(TypeError, match="params"):
        averaging.init({"w": jnp.zeros(2, jnp.int32)})
