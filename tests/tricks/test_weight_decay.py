"""Tests for jaxtricks.tricks.weight_decay: ``u = g + λ w``, masks, coupled vs decoupled."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks.adaptive import scale_by_adam
from jaxtricks.tricks.learning_rate import scale_by_learning_rate
from jaxtricks.tricks.weight_decay import add_decayed_weights, add_l2_penalty

PARAMS = {
    "kernel": np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]], np.float32),
    "bias": np.array([0.5, -0.75, 2.0], np.float32),
}
GRADS = {
    "kernel": np.array([[0.1, 0.2, -0.3], [-0.4, 0.5, 0.6]], np.float32),
    "bias": np.array([1.0, -1.0, 0.25], np.float32),
}


def _decayed(grads, params, lam, decay=("kernel", "bias")):
    """NumPy ``g + λ w`` on the leaves named in ``decay``, ``g`` elsewhere."""
    return {
        k: (grads[k].astype(np.float64) + lam * params[k]) if k in decay else grads[k]
        for k in grads
    }


@pytest.mark.parametrize("factory", [add_decayed_weights, add_l2_penalty])
def test_adds_lambda_times_the_weights(factory):
    tx = factory(0.3)
    out, state = jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
    for k, expected in _decayed(GRADS, PARAMS, 0.3).items():
        assert out[k].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out[k]), expected, rtol=1e-6)
    assert state == optax.EmptyState()


def test_none_updates_pass_through_as_in_optax():
    tx = add_decayed_weights(0.1)
    assert tx.update(None, optax.EmptyState(), PARAMS)[0] is None
    grads = {k: (None if k == "bias" else g) for k, g in GRADS.items()}
    out, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert out["bias"] is None
    np.testing.assert_allclose(np.asarray(out["kernel"]), _decayed(GRADS, PARAMS, 0.1)["kernel"])


def test_weight_decay_schedule_is_read_at_each_step():
    tx = add_decayed_weights(lambda count: jnp.where(count < 2, 0.1, 0.0))
    state = tx.init(PARAMS)
    for lam in (0.1, 0.1, 0.0, 0.0):
        out, state = tx.update(GRADS, state, PARAMS)
        for k, expected in _decayed(GRADS, PARAMS, lam).items():
            np.testing.assert_allclose(np.asarray(out[k]), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "mask",
    [{"kernel": True, "bias": False}, lambda params: jax.tree.map(lambda p: p.ndim > 1, params)],
    ids=["pytree", "callable"],
)
@pytest.mark.parametrize("factory", [add_decayed_weights, add_l2_penalty])
def test_mask_decays_only_the_marked_leaves(factory, mask):
    tx = factory(0.3, mask=mask)
    out, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    expected = _decayed(GRADS, PARAMS, 0.3, decay=("kernel",))
    np.testing.assert_allclose(np.asarray(out["kernel"]), expected["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["bias"]), GRADS["bias"])


@pytest.mark.parametrize("mask", [None, {"kernel": True, "bias": False}], ids=["plain", "masked"])
@pytest.mark.parametrize("factory", [add_decayed_weights, add_l2_penalty])
def test_missing_params_raise_a_clear_error(factory, mask):
    tx = factory(0.1, mask=mask)
    with pytest.raises(ValueError, match=r"needs the parameters: call update\(updates, state, "):
        tx.update(GRADS, tx.init(PARAMS))


@pytest.mark.parametrize(
    ("params_dtype", "grads_dtype"),
    [(jnp.bfloat16, jnp.bfloat16), (jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32)],
)
def test_updates_keep_the_gradient_dtype(params_dtype, grads_dtype):
    params = jax.tree.map(lambda p: jnp.asarray(p, params_dtype), PARAMS)
    grads = jax.tree.map(lambda g: jnp.asarray(g, grads_dtype), GRADS)
    tx = add_decayed_weights(0.5)
    out, _ = tx.update(grads, tx.init(params), params)
    # from the rounded inputs, to bfloat16's resolution (g + λw cancels in some entries)
    held = lambda tree: {k: np.asarray(v, np.float64) for k, v in tree.items()}
    for k, expected in _decayed(held(grads), held(params), 0.5).items():
        assert out[k].dtype == grads_dtype
        np.testing.assert_allclose(np.asarray(out[k], np.float64), expected, rtol=2**-8, atol=2**-9)


def test_none_leaves_pass():
    params = {"w": jnp.ones(2), "frozen": None}
    tx = add_decayed_weights(0.5)
    out, _ = tx.update({"w": jnp.ones(2), "frozen": None}, tx.init(params), params)
    assert out["frozen"] is None
    np.testing.assert_array_equal(np.asarray(out["w"]), [1.5, 1.5])


# --- coupled L2 (before Adam) against decoupled weight decay (after Adam) ----------------

LAM, ETA = 0.5, 0.1
TARGET = {"kernel": np.full((2, 3), 0.25, np.float32), "bias": np.zeros(3, np.float32)}


def _loss(w):
    return 0.5 * sum(jnp.sum(jnp.square(w[k] - TARGET[k])) for k in w)


def _train(tx, loss, steps):
    """Parameters after ``steps`` steps of ``tx`` on ``loss`` from PARAMS, all in one jit."""

    def run(params):
        state = tx.init(params)
        trajectory = []
        for _ in range(steps):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
            trajectory.append(params)
        return trajectory

    return jax.jit(run)(jax.tree.map(jnp.asarray, PARAMS))


def test_coupled_and_decoupled_first_adam_steps_by_hand():
    # Adam's first step maps its input x to x / (|x| + ε). Coupled L2 feeds it g + λw;
    # decoupled decay adds λw to its output.
    eps = 1e-8
    coupled = optax.chain(add_l2_penalty(LAM), scale_by_adam(eps=eps), scale_by_learning_rate(ETA))
    decoupled = optax.chain(
        scale_by_adam(eps=eps), add_decayed_weights(LAM), scale_by_learning_rate(ETA)
    )
    u_coupled, _ = coupled.update(GRADS, coupled.init(PARAMS), PARAMS)
    u_decoupled, _ = decoupled.update(GRADS, decoupled.init(PARAMS), PARAMS)
    for k in PARAMS:
        g, w = GRADS[k].astype(np.float64), PARAMS[k].astype(np.float64)
        x = g + LAM * w
        # The bias correction uses β₂ = 0.999 rounded to float32, which puts Adam's output
        # 6e-6 off (see test_adaptive); some decoupled entries cancel to 0, hence atol.
        np.testing.assert_allclose(u_coupled[k], -ETA * x / (np.abs(x) + eps), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            u_decoupled[k], -ETA * (g / (np.abs(g) + eps) + LAM * w), rtol=1e-5, atol=1e-6
        )
        assert not np.allclose(u_coupled[k], u_decoupled[k], rtol=1e-2)


def test_coupled_l2_is_adam_on_the_penalized_loss_and_differs_from_decoupled(allclose):
    steps = 3
    coupled = optax.chain(add_l2_penalty(LAM), scale_by_adam(), scale_by_learning_rate(ETA))
    decoupled = optax.chain(scale_by_adam(), add_decayed_weights(LAM), scale_by_learning_rate(ETA))
    adam = optax.chain(scale_by_adam(), scale_by_learning_rate(ETA))

    def penalized(w):
        return _loss(w) + 0.5 * LAM * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(w))

    via_l2 = _train(coupled, _loss, steps)[-1]
    allclose(via_l2, _train(adam, penalized, steps)[-1], rtol=1e-6, atol=1e-7)
    via_decay = _train(decoupled, _loss, steps)[-1]
    difference = max(float(jnp.max(jnp.abs(via_l2[k] - via_decay[k]))) for k in PARAMS)
    assert difference > 1e-2


def test_for_plain_sgd_coupled_and_decoupled_are_the_same_step(allclose):
    steps = 3
    coupled = optax.chain(add_l2_penalty(LAM), scale_by_learning_rate(ETA))
    decoupled = optax.chain(add_decayed_weights(LAM), scale_by_learning_rate(ETA))
    via_l2 = _train(coupled, _loss, steps)
    via_decay = _train(decoupled, _loss, steps)
    # by hand: w ← w − η (∇L(w) + λ w) with ∇L(w) = w − target
    w = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    for step in range(steps):
        w = {k: w[k] - ETA * ((w[k] - TARGET[k]) + LAM * w[k]) for k in w}
        for k in w:
            np.testing.assert_allclose(np.asarray(via_l2[step][k]), w[k], rtol=1e-6, atol=1e-7)
        allclose(via_l2[step], via_decay[step], rtol=0)
