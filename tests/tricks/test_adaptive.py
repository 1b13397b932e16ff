"""Tests for jaxtricks.tricks.adaptive: Adagrad, RMSProp and Adam against NumPy by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import (
    ScaleByRmsWithCountState,
    ScaleByRssWithCountState,
    ScaleByRStdDevWithCountState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)

STEPS = 4


def _grads(steps=STEPS, dtype=np.float32):
    """``steps`` small gradient trees with entries of different sizes, as NumPy arrays."""
    rng = np.random.default_rng(2)

    def draw(shape):
        if np.issubdtype(dtype, np.complexfloating):
            return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        return rng.standard_normal(shape)

    return [
        {
            "a": (draw(3) * [0.1, 1.0, 10.0]).astype(dtype),
            "b": draw((2, 2)).astype(dtype),
        }
        for _ in range(steps)
    ]


def _run(tx, grads):
    """The updates of ``tx`` over ``grads``, each step compiled once, and the last state."""
    update = jax.jit(tx.update)
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    updates = []
    for g in grads:
        u, state = update(jax.tree.map(jnp.asarray, g), state)
        updates.append(u)
    return updates, state


def _compare(mine, expected, rtol=1e-5, atol=1e-6):
    for m, e in zip(jax.tree.leaves(mine), jax.tree.leaves(expected), strict=True):
        wide = np.complex128 if np.iscomplexobj(m) else np.float64
        np.testing.assert_allclose(np.asarray(m, wide), e, rtol=rtol, atol=atol)


def _per_leaf(fn, grads):
    """Runs the NumPy optimizer ``fn(list of one leaf's gradients) -> list of updates``."""
    leaves = [jax.tree.leaves(g) for g in grads]
    wide = np.complex128 if np.iscomplexobj(leaves[0][0]) else np.float64
    per_leaf = [fn([step[i].astype(wide) for step in leaves]) for i in range(len(leaves[0]))]
    treedef = jax.tree.structure(grads[0])
    return [jax.tree.unflatten(treedef, [out[t] for out in per_leaf]) for t in range(len(grads))]


# --- Adagrad ------------------------------------------------------------------------------


def _adagrad(gs, s0, eps):
    s, out = np.full_like(gs[0], s0), []
    for g in gs:
        s = s + np.abs(g) ** 2
        out.append(g / np.sqrt(s + eps))
    return out


@pytest.mark.parametrize(("s0", "eps"), [(0.1, 1e-7), (0.0, 0.5), (2.0, 0.3)])
def test_adagrad_matches_numpy(s0, eps):
    grads = _grads()
    mine, state = _run(scale_by_adagrad(initial_accumulator_value=s0, eps=eps), grads)
    _compare(mine, _per_leaf(lambda gs: _adagrad(gs, s0, eps), grads))
    assert type(state) is optax.ScaleByRssState
    expected_sum = jax.tree.map(lambda *gs: s0 + np.sum(np.square(gs, dtype=np.float64), 0), *grads)
    _compare(state.sum_of_squares, jax.tree.leaves(expected_sum))


def test_scale_by_adagrad_is_optax_named_scale_by_rss():
    assert scale_by_adagrad is scale_by_rss


def test_adagrad_eps_schedule_adds_a_step_count():
    grads = _grads()
    mine, state = _run(scale_by_rss(0.1, lambda count: jnp.where(count < 2, 0.5, 0.1)), grads)
    assert isinstance(state, ScaleByRssWithCountState)
    assert int(state.count) == STEPS

    def reference(gs):
        s, out = np.full_like(gs[0], 0.1), []
        for t, g in enumerate(gs):
            s = s + g * g
            out.append(g / np.sqrt(s + (0.5 if t < 2 else 0.1)))
        return out

    _compare(mine, _per_leaf(reference, grads))


def test_adagrad_zero_gradient_with_empty_accumulator_gives_zero_not_nan():
    tx = scale_by_adagrad(initial_accumulator_value=0.0, eps=1e-30)
    u, _ = tx.update(jnp.zeros(3), tx.init(jnp.zeros(3)))
    np.testing.assert_array_equal(np.asarray(u), np.zeros(3, np.float32))


# --- RMSProp ------------------------------------------------------------------------------


def _rms(gs, decay, eps, n0, centered, eps_in_sqrt, bias_correction=False):
    n, m, out = np.full_like(gs[0], n0), np.zeros_like(gs[0]), []
    for t, g in enumerate(gs, start=1):
        n = decay * n + (1 - decay) * np.abs(g) ** 2
        m = decay * m + (1 - decay) * g
        correction = 1 - decay**t if bias_correction else 1.0
        n_hat, m_hat = n / correction, m / correction
        spread = n_hat - np.abs(m_hat) ** 2 if centered else n_hat
        out.append(g / np.sqrt(spread + eps) if eps_in_sqrt else g / (np.sqrt(spread) + eps))
    return out


# A large ε, so that its placement changes the result visibly.
RMS_CASES = {
    "plain": {"decay": 0.9, "eps": 0.1, "initial_scale": 0.0},
    "tensorflow_initial_scale": {"decay": 0.8, "eps": 1e-8, "initial_scale": 1.0},
    "centered": {"decay": 0.9, "eps": 0.1, "initial_scale": 0.0, "centered": True},
    "eps_outside_sqrt": {"decay": 0.9, "eps": 0.1, "initial_scale": 0.0, "eps_in_sqrt": False},
    "centered_eps_outside_sqrt": {
        "decay": 0.7,
        "eps": 0.1,
        "initial_scale": 0.5,
        "centered": True,
        "eps_in_sqrt": False,
    },
    "bias_correction": {"decay": 0.8, "eps": 0.1, "initial_scale": 0.0, "bias_correction": True},
    "centered_bias_correction": {
        "decay": 0.8,
        "eps": 0.1,
        "initial_scale": 0.0,
        "centered": True,
        "bias_correction": True,
    },
}

# The state Optax keeps for each combination of centered and bias_correction.
RMS_STATES = {
    (False, False): optax.ScaleByRmsState,
    (False, True): ScaleByRmsWithCountState,
    (True, False): optax.ScaleByRStdDevState,
    (True, True): ScaleByRStdDevWithCountState,
}


@pytest.mark.parametrize("case", list(RMS_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.slow
def test_rms_matches_numpy(case, dtype):
    kwargs = {"centered": False, "eps_in_sqrt": True, "bias_correction": False, **RMS_CASES[case]}
    grads = _grads(dtype=dtype)
    mine, state = _run(scale_by_rms(**kwargs), grads)
    reference = lambda gs: _rms(
        gs,
        kwargs["decay"],
        kwargs["eps"],
        kwargs["initial_scale"],
        kwargs["centered"],
        kwargs["eps_in_sqrt"],
        kwargs["bias_correction"],
    )
    # The centered spread n − |m|² cancels: float32 keeps fewer of its digits for complex g.
    _compare(mine, _per_leaf(reference, grads), rtol=2e-4 if dtype == np.complex64 else 1e-5)
    assert type(state) is RMS_STATES[kwargs["centered"], kwargs["bias_correction"]]


def test_centered_rms_is_optax_named_scale_by_stddev():
    grads = _grads()
    centered, _ = _run(scale_by_rms(0.8, 0.1, centered=True), grads)
    stddev, state = _run(scale_by_stddev(0.8, 0.1), grads)
    _compare(centered, jax.tree.map(np.asarray, stddev), rtol=0, atol=0)
    assert type(state) is optax.ScaleByRStdDevState


def test_rms_with_bias_correction_and_eps_outside_is_adam_without_momentum():
    grads = _grads()
    rms, _ = _run(scale_by_rms(0.99, 1e-8, eps_in_sqrt=False, bias_correction=True), grads)
    adam, _ = _run(scale_by_adam(b1=0.0, b2=0.99), grads)
    _compare(rms, jax.tree.map(np.asarray, adam))


def test_rms_decay_schedule_is_read_at_each_step():
    grads = _grads()
    mine, _ = _run(scale_by_rms(lambda count: jnp.where(count < 2, 0.9, 0.5), eps=0.1), grads)
    decays = [0.9, 0.9, 0.5, 0.5]

    def reference(gs):
        n, out = np.zeros_like(gs[0]), []
        for g, rho in zip(gs, decays, strict=True):
            n = rho * n + (1 - rho) * g * g
            out.append(g / np.sqrt(n + 0.1))
        return out

    _compare(mine, _per_leaf(reference, grads))


def test_rms_decay_schedule_adds_a_step_count_to_the_state():
    tx = scale_by_rms(lambda count: 0.9)
    assert isinstance(tx.init(jnp.zeros(2)), ScaleByRmsWithCountState)
    tx = scale_by_stddev(0.9, lambda count: 0.1)
    assert isinstance(tx.init(jnp.zeros(2)), ScaleByRStdDevWithCountState)


# --- Adam ---------------------------------------------------------------------------------


def _adam(gs, b1s, b2, eps, eps_root, round_mu=None, nesterov=False):
    """Adam by hand; ``b1s`` per step; ``round_mu`` rounds the stored first moment."""
    m, n, out = np.zeros_like(gs[0]), np.zeros_like(gs[0]), []
    for t, (g, b1) in enumerate(zip(gs, b1s, strict=True), start=1):
        m = b1 * m + (1 - b1) * g
        n = b2 * n + (1 - b2) * np.abs(g) ** 2
        if nesterov:  # Dozat's NAdam: the first moment one step ahead.
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        n_hat = n / (1 - b2**t)
        out.append(m_hat / (np.sqrt(n_hat + eps_root) + eps))
        if round_mu is not None:
            m = round_mu(m)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("b1", "b2", "eps", "eps_root"),
    [(0.9, 0.999, 1e-8, 0.0), (0.5, 0.8, 0.1, 0.0), (0.7, 0.9, 1e-3, 0.05), (0.0, 0.0, 1e-8, 0.0)],
)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_adam_matches_numpy_with_bias_correction(b1, b2, eps, eps_root, nesterov, dtype):
    grads = _grads(dtype=dtype)
    mine, state = _run(scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov), grads)
    reference = lambda gs: _adam(gs, [b1] * STEPS, b2, eps, eps_root, nesterov=nesterov)
    _compare(mine, _per_leaf(reference, grads))
    assert type(state) is optax.ScaleByAdamState
    assert int(state.count) == STEPS


def test_adam_first_step_is_the_sign_of_the_gradient():
    # m̂₁ = g and n̂₁ = g², so the bias correction makes the first update g / (|g| + ε).
    # (1 − β₂ᵗ is taken with β₂ = 0.999 rounded to float32, 1.3e-5 off in the correction and
    # 6e-6 in the update: 1 to within 1e-5, not to float32's 1e-7.)
    g = jnp.array([1e-3, -2.0, 50.0])
    tx = scale_by_adam(eps=1e-12)
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(u), [1.0, -1.0, 1.0], rtol=1e-5)


def test_adam_hyperparameter_schedules_are_read_at_each_step():
    grads = _grads()
    tx = scale_by_adam(b1=lambda count: jnp.where(count < 2, 0.9, 0.5), b2=0.8, eps=0.01)
    mine, _ = _run(tx, grads)
    b1s = [0.9, 0.9, 0.5, 0.5]
    _compare(mine, _per_leaf(lambda gs: _adam(gs, b1s, 0.8, 0.01, 0.0), grads))


def test_adam_bfloat16_mu_is_stored_in_bfloat16_while_updates_keep_float32():
    grads = _grads()
    mine, state = _run(scale_by_adam(0.9, 0.99, 1e-8, 0.0, jnp.bfloat16), grads)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state.mu))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.nu))
    assert all(leaf.dtype == jnp.float32 for step in mine for leaf in jax.tree.leaves(step))
    # Each step's m is computed from the stored, rounded m of the step before.
    to_bf16 = lambda m: m.astype(jnp.bfloat16).astype(np.float64)
    expected = _per_leaf(lambda gs: _adam(gs, [0.9] * STEPS, 0.99, 1e-8, 0.0, to_bf16), grads)
    _compare(mine, expected)
    unrounded = _per_leaf(lambda gs: _adam(gs, [0.9] * STEPS, 0.99, 1e-8, 0.0), grads)
    assert not np.allclose(np.asarray(mine[-1]["b"]), unrounded[-1]["b"], rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: scale_by_adagrad(),
        lambda: scale_by_rms(),
        lambda: scale_by_rms(centered=True),
        lambda: scale_by_rms(bias_correction=True),
        lambda: scale_by_adam(),
        lambda: scale_by_adam(nesterov=True),
    ],
    ids=["adagrad", "rms", "rms_centered", "rms_bias_correction", "adam", "nadam"],
)
def test_bfloat16_gradients_give_bfloat16_updates_and_state(build):
    grads = _grads(2, jnp.bfloat16)
    mine, state = _run(build(), grads)
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.int32, jnp.bfloat16)
    for u in jax.tree.leaves(mine[-1]):
        assert u.dtype == jnp.bfloat16
        assert bool(jnp.all(jnp.isfinite(u)))
        assert bool(jnp.any(u != 0))
