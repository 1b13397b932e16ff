"""Tests for jaxtricks.training.ensemble: K models in one compiled program, and their average."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from training_toys import CLASSES, TinyNet, toy_problem

from jaxtricks.backend import speed_paths, use_speed_paths
from jaxtricks.training.ensemble import (
    create_ensemble,
    ensemble_member,
    ensemble_probabilities,
    evaluate_ensemble,
    fit_ensemble,
    make_ensemble_eval_step,
    make_ensemble_train_step,
)
from jaxtricks.training.epochs import epoch_indices
from jaxtricks.training.hooks import EvaluationHook
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step, make_train_step
from jaxtricks.tricks.optimizers import momentum, sgd

TRAIN = toy_problem(0, 96)
VAL = toy_problem(2, 30)
TEST = toy_problem(1, 45)
BATCH, EPOCHS, SEED = 16, 2, 5

# Members against separate runs: vmap turns each member's matrix products into one batched
# product, which XLA may sum in another order, so agreement is to float32 rounding, not bits.
RTOL, ATOL = 1e-5, 1e-6


def _train_alone(model, optimizer, init_seed, data_seed=SEED):
    """What member training means, written out: one model, the data order fit(seed) uses."""
    images, labels = (jnp.asarray(a) for a in TRAIN)
    state = create_train_state(
        model, optimizer, jax.random.split(jax.random.key(init_seed))[0], images[:1]
    )
    step = make_train_step(model, optimizer)
    data_key = jax.random.split(jax.random.key(data_seed))[1]
    for epoch in range(1, EPOCHS + 1):
        for rows in epoch_indices(data_key, epoch, images.shape[0], BATCH):
            state, _ = step(state, (images[rows], labels[rows]))
    return state


def _assert_close_trees(actual, expected):
    leaves = jax.tree_util.tree_leaves_with_path(actual)
    for (path, a), e in zip(leaves, jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def trained():
    # Momentum, not Adam: TinyNet's first bias sits before batch norm, so its gradient is 0 in
    # exact arithmetic and rounding noise in float32; Adam divides that noise by its own root
    # mean square and steps by ±lr, which turns a 1e-9 difference into a 1e-2 one.
    model, optimizer = TinyNet(), momentum(0.05, 0.9)
    states, history = fit_ensemble(
        model, optimizer, *TRAIN, num_members=3, epochs=EPOCHS, batch_size=BATCH, seed=SEED,
        validation_data=VAL, callbacks=[EvaluationHook("test", *TEST)], progress=False,
    )
    return model, optimizer, states, history


@pytest.mark.slow
def test_members_equal_models_trained_alone_with_their_seeds(trained):
    model, optimizer, states, history = trained
    assert history.header["member_seeds"] == [SEED, SEED + 1, SEED + 2]
    eval_step = make_eval_step(model)
    last = history.epochs[-1]
    for k in range(3):
        alone = _train_alone(model, optimizer, init_seed=SEED + k)
        member = ensemble_member(states, k)
        assert int(member.step) == int(alone.step) == EPOCHS * (96 // BATCH)
        _assert_close_trees(member.params, alone.params)
        _assert_close_trees(member.model_state, alone.model_state)
        _assert_close_trees(member.opt_state, alone.opt_state)
        for name, (images, labels) in (("test", TEST), ("val", VAL)):
            score = evaluate(eval_step, alone, images, labels, batch_size=64)
            assert last.info[f"{name}_member_accuracy"][k] == score["accuracy"]
            np.testing.assert_allclose(last.info[f"{name}_member_loss"][k], score["loss"],
                                       rtol=1e-5)
    # Different seeds, different models: the ensemble is not three copies of one.
    kernels = states.params["Dense_0"]["kernel"]
    assert not np.allclose(np.asarray(kernels[0]), np.asarray(kernels[1]))


def _numpy_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_ensemble_scores_come_from_averaged_probabilities(trained):
    model, _, states, history = trained
    record = history.epochs[-1]
    for name, (images, labels) in (("test", TEST), ("val", VAL)):
        probabilities = np.mean(
            [
                _numpy_softmax(model.apply(
                    {"params": member.params, **member.model_state}, images, train=False
                ))
                for member in (ensemble_member(states, k) for k in range(3))
            ],
            axis=0,
        )
        assert record[f"{name}_accuracy"] == np.mean(probabilities.argmax(1) == labels)
        np.testing.assert_allclose(
            record[f"{name}_loss"],
            -np.mean(np.log(probabilities[np.arange(len(labels)), labels])),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        np.asarray(ensemble_probabilities(model, states, images)), probabilities, rtol=1e-5,
        atol=1e-7,
    )


def test_history_records_every_epoch_for_every_member(trained):
    _, _, _, history = trained
    header = history.header
    assert header["num_members"] == 3 and header["steps_per_epoch"] == 96 // BATCH
    assert [record.epoch for record in history.epochs] == list(range(1, EPOCHS + 1))
    for record in history.epochs:
        for name in (
            "loss", "accuracy", "grad_norm", "val_member_loss", "val_member_accuracy",
            "test_member_loss", "test_member_accuracy",
        ):
            assert len(record.info[name]) == 3, name
            # The record's number is the members' mean; their values are in info.
            assert record[name] == pytest.approx(np.mean(record.info[name]), rel=1e-12), name
        assert record.skipped_steps == 0
    first, last = history.epochs[0], history.epochs[-1]
    assert all(b < a for a, b in zip(first.info["loss"], last.info["loss"], strict=True))


class FixedOutputs(nn.Module):
    """A model whose outputs, of shape (B, C), are its parameter whatever the input."""

    shape: tuple[int, int]

    @nn.compact
    def __call__(self, x):
        del x
        return self.param("outputs", nn.initializers.zeros, self.shape)


def _members_with_outputs(outputs):
    """An ensemble of FixedOutputs members, member k outputting ``outputs[k]``."""
    model = FixedOutputs(outputs.shape[1:])
    states = create_ensemble(model, optax.sgd(0.1), jax.random.split(jax.random.key(0),
                                                                     outputs.shape[0]),
                             jnp.zeros((1, 1)))
    return model, states._replace(params={"outputs": outputs})


def test_the_reduction_averages_probabilities_not_logits_or_votes(getkey):
    k, b, c = 3, 400, 4
    # Members of very different confidence, so that the three ways of combining disagree.
    scales = jnp.array([0.3, 1.0, 8.0])[:, None, None]
    logits = scales * jax.random.normal(getkey(), (k, b, c))
    labels = jax.random.randint(getkey(), (b,), 0, c, jnp.int32)
    mask = jnp.arange(b) < 300
    model, states = _members_with_outputs(logits)
    sums = jax.device_get(make_ensemble_eval_step(model)(states, (jnp.zeros((b, 1)), labels),
                                                         mask))
    p = _numpy_softmax(logits).mean(0)
    y, m = np.asarray(labels), np.asarray(mask)
    by_probabilities = p.argmax(1)
    by_logits = np.asarray(logits).mean(0).argmax(1)
    votes = np.asarray(logits).argmax(2)
    by_votes = np.array([np.bincount(v, minlength=c).argmax() for v in votes.T])
    assert np.any(by_probabilities != by_logits) and np.any(by_probabilities != by_votes)
    assert int(sums["count"]) == 300
    assert int(sums["accuracy"]) == int(np.sum((by_probabilities == y) & m))
    np.testing.assert_allclose(
        float(sums["loss"]), -np.sum(np.log(p[np.arange(b), y])[m]), rtol=1e-5
    )
    member_p = _numpy_softmax(logits)
    np.testing.assert_array_equal(
        sums["member_accuracy"], ((np.asarray(logits).argmax(2) == y) & m).sum(1)
    )
    np.testing.assert_allclose(
        sums["member_loss"],
        -(np.log(member_p[:, np.arange(b), y]) * m).sum(1),
        rtol=1e-5,
    )


def test_with_a_loss_of_ones_own_the_ensemble_output_is_the_members_mean(getkey):
    k, b = 3, 50
    outputs = jax.random.normal(getkey(), (k, b, 1))
    targets = jax.random.normal(getkey(), (b,))
    mask = jnp.arange(b) < 40

    def squared_error(out, y):
        return (out[:, 0] - y) ** 2

    def absolute_error(out, y):
        return jnp.abs(out[:, 0] - y)

    model, states = _members_with_outputs(outputs)
    eval_step = make_ensemble_eval_step(model, loss_fn=squared_error,
                                        metrics={"absolute": absolute_error})
    sums = jax.device_get(eval_step(states, (jnp.zeros((b, 1)), targets), mask))
    assert set(sums) == {"loss", "absolute", "member_loss", "member_absolute", "count"}
    o, y, m = (np.asarray(a, np.float64) for a in (outputs[..., 0], targets, mask))
    mean = o.mean(0)
    np.testing.assert_allclose(sums["loss"], np.sum(m * (mean - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(sums["absolute"], np.sum(m * np.abs(mean - y)), rtol=1e-5)
    np.testing.assert_allclose(sums["member_loss"], (m * (o - y) ** 2).sum(1), rtol=1e-5)
    np.testing.assert_allclose(sums["member_absolute"], (m * np.abs(o - y)).sum(1), rtol=1e-5)
    # The mean output's error is not the members' mean error (Jensen): the check can tell.
    assert sums["loss"] < sums["member_loss"].mean()


def test_padding_does_not_change_the_evaluation(trained):
    model, _, states, _ = trained
    whole = evaluate_ensemble(model, states, *TEST, batch_size=1000)
    padded = evaluate_ensemble(model, states, *TEST, batch_size=7)
    assert list(whole) == ["loss", "accuracy", "member_accuracy", "member_loss"]
    assert whole["accuracy"] == padded["accuracy"]
    assert whole["member_accuracy"] == padded["member_accuracy"]
    np.testing.assert_allclose(whole["loss"], padded["loss"], rtol=1e-5)
    np.testing.assert_allclose(whole["member_loss"], padded["member_loss"], rtol=1e-5)


@pytest.mark.slow
def test_a_learning_rate_sweep_equals_separate_runs():
    model = TinyNet(batch_norm=False, dropout_rate=0.0)
    rates = [0.01, 0.1, 0.4]
    optimizer = optax.inject_hyperparams(sgd)(learning_rate=0.1)
    states, history = fit_ensemble(
        model, optimizer, *TRAIN, num_members=3, epochs=EPOCHS, batch_size=BATCH, seed=SEED,
        hyperparams={"learning_rate": rates}, shared_init=True, progress=False,
    )
    assert history.header["hyperparams"] == {"learning_rate": rates}
    assert history.header["member_seeds"] == [SEED] * 3
    np.testing.assert_allclose(
        np.asarray(states.opt_state.hyperparams["learning_rate"]), rates, rtol=1e-7
    )
    for k, rate in enumerate(rates):
        alone = _train_alone(model, sgd(rate), init_seed=SEED)
        _assert_close_trees(ensemble_member(states, k).params, alone.params)
    losses = history.epochs[-1].info["loss"]
    assert len(set(losses)) == 3


@pytest.mark.slow
def test_the_ensemble_step_is_shared_and_steps_every_member():
    model, optimizer = TinyNet(), sgd(0.1)
    assert make_ensemble_train_step(model, optimizer) is make_ensemble_train_step(
        model, optimizer
    )
    images, labels = (jnp.asarray(a[:8]) for a in TRAIN)
    states = create_ensemble(model, optimizer, jax.random.split(jax.random.key(0), 2), images)
    states, metrics = make_ensemble_train_step(model, optimizer)(states, (images, labels))
    assert states.step.tolist() == [1, 1] and metrics["loss"].shape == (2,)


@pytest.mark.slow
def test_bad_arguments_raise_naming_them():
    model, optimizer = TinyNet(), sgd(0.1)
    images = jnp.asarray(TRAIN[0][:4])
    keys = jax.random.split(jax.random.key(0), 2)
    injected = optax.inject_hyperparams(sgd)(learning_rate=0.1)
    scheduled = optax.inject_hyperparams(sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 5))
    create_cases = [
        ((model, optimizer, jax.random.key(0), images), {}, "keys"),
        ((model, optimizer, jnp.zeros((2, 2), jnp.uint32), images), {}, "keys"),
        ((object(), optimizer, keys, images), {}, "model"),
        ((nnx.Linear(2, 2, rngs=nnx.Rngs(0)), optimizer, keys, images), {},
         "model: an ensemble's members must be a flax.linen.Module"),
        ((model, "sgd", keys, images), {}, "optimizer"),
        ((model, injected, keys, images), {"hyperparams": {"learning_rate": [0.1]}},
         r"hyperparams\['learning_rate'\] must hold 2"),
        ((model, injected, keys, images), {"hyperparams": [0.1, 0.2]}, "hyperparams must be"),
        ((model, injected, keys, images), {"hyperparams": {"momentum": [0.1, 0.2]}},
         "no injected hyperparameter"),
        ((model, optimizer, keys, images), {"hyperparams": {"learning_rate": [0.1, 0.2]}},
         "no injected hyperparameter"),
        ((model, scheduled, keys, images), {"hyperparams": {"learning_rate": [0.1, 0.2]}},
         "schedule"),
    ]
    for args, kwargs, match in create_cases:
        with pytest.raises(ValueError, match=match):
            create_ensemble(*args, **kwargs)
    fit_cases = [
        ({"num_members": 0}, "num_members"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1000}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"shared_init": 1}, "shared_init"),
        ({"progress": "no"}, "progress"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"hyperparams": {"learning_rate": [0.1, np.nan]}}, "hyperparams"),
    ]
    for overrides, match in fit_cases:
        kwargs = {"num_members": 2, "epochs": 1, "batch_size": 16, "progress": False,
                  **overrides}
        with pytest.raises(ValueError, match=match):
            fit_ensemble(model, optimizer, *TRAIN, **kwargs)
    bad_labels = TEST[1] + CLASSES
    with pytest.raises(ValueError, match=r"validation y must hold integer labels in \[0, 2\]"):
        fit_ensemble(model, optimizer, *TRAIN, validation_data=(TEST[0], bad_labels),
                     num_members=2, epochs=1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"^y must hold integer labels in \[0, 2\]"):
        fit_ensemble(model, optimizer, TRAIN[0], TRAIN[1] - 1, num_members=2, epochs=1,
                     batch_size=16, progress=False)
    with pytest.raises(ValueError, match="index"):
        ensemble_member(create_ensemble(model, optimizer, keys, images), 2)


def test_members_take_the_exact_non_finite_test_alone_under_vmap():
    # A batched lax.cond runs both branches, so the CPU's quick row-sum test of the strict guard
    # (a dot product per large leaf) would only add work to every ensemble step.
    model, tx = nn.Dense(64), optax.sgd(0.1)  # a (128, 64) kernel: large enough for row sums
    x, y = jnp.ones((8, 128)), jnp.zeros(8, jnp.int32)
    states = create_ensemble(model, tx, jax.random.split(jax.random.key(0), 2), x[:1])
    state = create_train_state(model, tx, jax.random.key(0), x[:1])

    def dots(make, state, by_sums):
        with use_speed_paths(speed_paths()._replace(finite_check_by_sums=by_sums)):
            step = make(model, tx, skip_nonfinite="strict")
        return str(jax.make_jaxpr(step)(state, (x, y))).count("dot_general")

    assert dots(make_train_step, state, True) > dots(make_train_step, state, False)
    assert dots(make_ensemble_train_step, states, True) == dots(
        make_ensemble_train_step, states, False)
