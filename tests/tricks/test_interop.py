"""jaxtricks transforms and optimizers inside Optax's and Flax's own machinery.

Optax's code mixes weakly and strongly typed values, which the suite's strict dtype promotion
refuses (``TypePromotionError``). Wherever Optax's arithmetic runs (an Optax transform, a
mixed chain, ``MultiSteps``, an Optax schedule) the test enters
``jax.numpy_dtype_promotion("standard")``; jaxtricks' own code runs strict everywhere else.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtricks.tricks.optimizers as opt
from jaxtricks.tricks.adaptive import scale_by_adam
from jaxtricks.tricks.clipping import clip_by_global_norm
from jaxtricks.tricks.learning_rate import scale_by_learning_rate

PARAMS = {"w": jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]), "b": jnp.array([0.1, 0.2, 0.3])}


def _grads(steps, scale=1.0):
    rng = np.random.default_rng(3)
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * scale, p.dtype), PARAMS)
        for _ in range(steps)
    ]


def _updates(tx, grads):
    """The updates of ``tx`` over ``grads`` at fixed params, the whole run compiled once."""

    def run(grads):
        state, out = tx.init(PARAMS), []
        for g in grads:
            u, state = tx.update(g, state, PARAMS)
            out.append(u)
        return out

    return jax.jit(run)(grads)


# --- a jaxtricks transform is one more stage of an Optax chain ---------------------------


@pytest.mark.parametrize(
    "mixed",
    [
        lambda: optax.chain(
            clip_by_global_norm(1.0), optax.scale_by_adam(), scale_by_learning_rate(0.1)
        ),
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0), scale_by_adam(), optax.scale_by_learning_rate(0.1)
        ),
    ],
    ids=["jaxtricks_clip_and_lr_around_optax_adam", "optax_clip_and_lr_around_jaxtricks_adam"],
)
def test_mixed_chain_equals_the_all_optax_chain(mixed, allclose):
    grads = _grads(3, scale=2.0)  # the global norm is above 1: clipping is active
    reference = optax.chain(
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale_by_learning_rate(0.1)
    )
    with jax.numpy_dtype_promotion("standard"):
        ours, theirs = _updates(mixed(), grads), _updates(reference, grads)
    # jaxtricks' clip multiplies by θ/‖g‖ (one rounding, so bfloat16 cannot overshoot θ);
    # Optax divides by ‖g‖, then multiplies by θ. The last-bit difference is magnified by
    # Adam's division for small coordinates: measured 2e-6 relative on one of them.
    for a, b in zip(ours, theirs, strict=True):
        allclose(a, b, rtol=1e-5)


# --- optax.inject_hyperparams -------------------------------------------------------------


@pytest.mark.parametrize("name", list(opt.OPTIMIZERS))
@pytest.mark.slow
def test_every_optimizer_under_inject_hyperparams(name, allclose):
    tx = optax.inject_hyperparams(opt.OPTIMIZERS[name])(learning_rate=1e-3)
    state = tx.init(PARAMS)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-3)
    (grads,) = _grads(1)
    update = jax.jit(tx.update)
    updates, _ = update(grads, state, PARAMS)
    plain = opt.OPTIMIZERS[name](1e-3)
    # Injected, β₂ = 0.999 is a float32 array in both 1 − β₂ and Adam's bias correction 1 − β₂ᵗ;
    # as a Python float the first is exact and the second rounded, 6.7e-6 apart on step 1.
    allclose(updates, plain.update(grads, plain.init(PARAMS), PARAMS)[0], rtol=1e-5)
    # The first update is linear in η for every optimizer, so doubling η doubles it; the
    # same compiled update serves the new value, which is a traced argument.
    doubled = state._replace(hyperparams={**state.hyperparams, "learning_rate": jnp.asarray(2e-3)})
    updates_2, _ = update(grads, doubled, PARAMS)
    allclose(updates_2, jax.tree.map(lambda u: 2 * u, updates), rtol=1e-6)


# --- optax.MultiSteps ---------------------------------------------------------------------


def test_multisteps_updates_every_third_step_with_the_mean_gradient(allclose):
    grads = _grads(6)
    inner = opt.adam(0.1)
    with jax.numpy_dtype_promotion("standard"):
        ours = _updates(optax.MultiSteps(inner, every_k_schedule=3), grads)
    means = [
        jax.tree.map(lambda *gs: sum(gs) / 3, *grads[:3]),
        jax.tree.map(lambda *gs: sum(gs) / 3, *grads[3:]),
    ]
    expected = _updates(inner, means)
    for step, u in enumerate(ours):
        if step % 3 == 2:
            # MultiSteps averages by running mean, a different rounding of the same mean
            allclose(u, expected[step // 3], rtol=1e-5, atol=1e-7)
        else:
            allclose(u, jax.tree.map(jnp.zeros_like, u), rtol=0)


# --- flax.nnx.Optimizer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [lambda: opt.adam(0.05), lambda: opt.momentum(0.05, 0.9, form="lesson")],
    ids=["adam", "momentum_lesson"],
)
def test_drives_a_flax_nnx_optimizer(build):
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, build(), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    y = x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3

    def loss_fn(model):
        return jnp.mean(jnp.square(model(x) - y))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    kernel_0 = np.asarray(model.kernel[...])
    grad_0 = np.asarray(nnx.grad(loss_fn)(model).kernel[...])
    losses = [float(step(model, optimizer)) for _ in range(6)]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.8 * losses[0]
    assert int(optimizer.step[...]) == 6
    # the Optimizer applied our transform: it moved the kernel, against the first gradient
    assert np.all(np.sign(np.asarray(model.kernel[...]) - kernel_0) == -np.sign(grad_0))


# --- Optax schedules as learning rates ----------------------------------------------------


def test_optax_exponential_decay_drives_sgd(allclose):
    schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    grads = _grads(4)
    with jax.numpy_dtype_promotion("standard"):
        ours = _updates(opt.sgd(schedule), grads)
    for t, (u, g) in enumerate(zip(ours, grads, strict=True)):
        eta = np.float32(0.1 * 0.5**t)
        allclose(u, jax.tree.map(lambda x, eta=eta: np.asarray(x) * -eta, g), rtol=1e-6)


def test_optax_cosine_decay_drives_adam(allclose):
    schedule = optax.cosine_decay_schedule(0.1, decay_steps=4)
    grads = _grads(4)
    with jax.numpy_dtype_promotion("standard"):
        ours = _updates(opt.adam(schedule), grads)
    directions = _updates(scale_by_adam(), grads)
    for t, (u, d) in enumerate(zip(ours, directions, strict=True)):
        eta = np.float32(0.1 * 0.5 * (1 + np.cos(np.pi * t / 4)))
        allclose(u, jax.tree.map(lambda x, eta=eta: np.asarray(x) * -eta, d), rtol=1e-6)
    # the last step has η = 0.1·½(1 + cos(3π/4)) ≈ 0.0146, the first 0.1: the schedule acted
    assert float(jnp.max(jnp.abs(ours[3]["w"]))) < 0.2 * float(jnp.max(jnp.abs(ours[0]["w"])))


@pytest.mark.parametrize("name", list(opt.OPTIMIZERS))
def test_every_optimizer_accepts_optax_schedules(name, allclose):
    # At step 0 the cosine schedule is its initial value: the first update is the one taken
    # with that constant learning rate.
    (grads,) = _grads(1)
    with jax.numpy_dtype_promotion("standard"):
        (ours,) = _updates(opt.OPTIMIZERS[name](optax.cosine_decay_schedule(0.02, 10)), [grads])
    (constant,) = _updates(opt.OPTIMIZERS[name](0.02), [grads])
    allclose(ours, constant, rtol=1e-6)
