"""Tests for jaxtricks.training.ensemble: K models in one compiled program, and their average."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import CLASSES, TinyNet, toy_problem

from jaxtricks.training.ensemble import (
    _ensemble_sums,
    create_ensemble,
    ensemble_member,
    ensemble_probabilities,
    evaluate_ensemble,
    fit_ensemble,
    make_ensemble_train_step,
)
from jaxtricks.training.epochs import epoch_indices
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import evaluate, make_eval_step, make_train_step
from jaxtricks.tricks.optimizers import momentum, sgd

TRAIN = toy_problem(0, 96)
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
        model, optimizer, *TRAIN, *TEST, num_members=3, epochs=EPOCHS, batch_size=BATCH,
        seed=SEED,
    )
    return model, optimizer, states, history


def test_members_equal_models_trained_alone_with_their_seeds(trained):
    model, optimizer, states, history = trained
    assert history["header"]["member_seeds"] == [SEED, SEED + 1, SEED + 2]
    eval_step = make_eval_step(model)
    for k in range(3):
        alone = _train_alone(model, optimizer, init_seed=SEED + k)
        member = ensemble_member(states, k)
        assert int(member.step) == int(alone.step) == EPOCHS * (96 // BATCH)
        _assert_close_trees(member.params, alone.params)
        _assert_close_trees(member.batch_stats, alone.batch_stats)
        _assert_close_trees(member.opt_state, alone.opt_state)
        score = evaluate(eval_step, alone, *TEST, batch_size=64)
        assert history["epochs"][-1]["member_test_accuracy"][k] == score["accuracy"]
        np.testing.assert_allclose(
            history["epochs"][-1]["member_test_loss"][k], score["loss"], rtol=1e-5
        )
    # Different seeds, different models: the ensemble is not three copies of one.
    kernels = states.params["Dense_0"]["kernel"]
    assert not np.allclose(np.asarray(kernels[0]), np.asarray(kernels[1]))


def _numpy_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_ensemble_scores_come_from_averaged_probabilities(trained):
    model, _, states, history = trained
    images, labels = TEST
    probabilities = np.mean(
        [
            _numpy_softmax(model.apply(
                {"params": member.params, "batch_stats": member.batch_stats}, images, train=False
            ))
            for member in (ensemble_member(states, k) for k in range(3))
        ],
        axis=0,
    )
    record = history["epochs"][-1]
    assert record["ensemble_test_accuracy"] == np.mean(probabilities.argmax(1) == labels)
    np.testing.assert_allclose(
        record["ensemble_test_loss"],
        -np.mean(np.log(probabilities[np.arange(len(labels)), labels])),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(ensemble_probabilities(model, states, images)), probabilities, rtol=1e-5,
        atol=1e-7,
    )


def test_history_records_every_epoch_for_every_member(trained):
    _, _, _, history = trained
    header = history["header"]
    assert header["num_members"] == 3 and header["steps_per_epoch"] == 96 // BATCH
    assert [record["epoch"] for record in history["epochs"]] == list(range(1, EPOCHS + 1))
    for record in history["epochs"]:
        for name in (
            "member_train_loss", "member_train_accuracy", "member_test_loss",
            "member_test_accuracy", "member_skipped_steps",
        ):
            assert len(record[name]) == 3, name
        assert record["member_skipped_steps"] == [0, 0, 0]
    first, last = history["epochs"][0], history["epochs"][-1]
    assert all(b < a for a, b in zip(first["member_train_loss"], last["member_train_loss"],
                                     strict=True))


def test_the_reduction_averages_probabilities_not_logits_or_votes(getkey):
    k, b, c = 3, 400, 4
    # Members of very different confidence, so that the three ways of combining disagree.
    scales = jnp.array([0.3, 1.0, 8.0])[:, None, None]
    logits = scales * jax.random.normal(getkey(), (k, b, c))
    labels = jax.random.randint(getkey(), (b,), 0, c, jnp.int32)
    mask = jnp.arange(b) < 300
    sums = jax.device_get(jax.jit(_ensemble_sums)(logits, labels, mask))
    p = _numpy_softmax(logits).mean(0)
    y, m = np.asarray(labels), np.asarray(mask)
    by_probabilities = p.argmax(1)
    by_logits = np.asarray(logits).mean(0).argmax(1)
    votes = np.asarray(logits).argmax(2)
    by_votes = np.array([np.bincount(v, minlength=c).argmax() for v in votes.T])
    assert np.any(by_probabilities != by_logits) and np.any(by_probabilities != by_votes)
    assert int(sums["count"]) == 300
    assert int(sums["ensemble_correct"]) == int(np.sum((by_probabilities == y) & m))
    np.testing.assert_allclose(
        float(sums["ensemble_loss_sum"]), -np.sum(np.log(p[np.arange(b), y])[m]), rtol=1e-5
    )
    member_p = _numpy_softmax(logits)
    np.testing.assert_array_equal(
        sums["member_correct"], ((np.asarray(logits).argmax(2) == y) & m).sum(1)
    )
    np.testing.assert_allclose(
        sums["member_loss_sum"],
        -(np.log(member_p[:, np.arange(b), y]) * m).sum(1),
        rtol=1e-5,
    )


def test_padding_does_not_change_the_evaluation(trained):
    model, _, states, _ = trained
    whole = evaluate_ensemble(model, states, *TEST, batch_size=1000)
    padded = evaluate_ensemble(model, states, *TEST, batch_size=7)
    assert whole["ensemble_accuracy"] == padded["ensemble_accuracy"]
    assert whole["member_accuracy"] == padded["member_accuracy"]
    np.testing.assert_allclose(whole["ensemble_loss"], padded["ensemble_loss"], rtol=1e-5)


def test_a_learning_rate_sweep_equals_separate_runs():
    model = TinyNet(batch_norm=False, dropout_rate=0.0)
    rates = [0.01, 0.1, 0.4]
    optimizer = optax.inject_hyperparams(sgd)(learning_rate=0.1)
    states, history = fit_ensemble(
        model, optimizer, *TRAIN, *TEST, num_members=3, epochs=EPOCHS, batch_size=BATCH,
        seed=SEED, hyperparams={"learning_rate": rates}, shared_init=True,
    )
    assert history["header"]["hyperparams"] == {"learning_rate": rates}
    assert history["header"]["member_seeds"] == [SEED] * 3
    np.testing.assert_allclose(
        np.asarray(states.opt_state.hyperparams["learning_rate"]), rates, rtol=1e-7
    )
    for k, rate in enumerate(rates):
        alone = _train_alone(model, sgd(rate), init_seed=SEED)
        _assert_close_trees(ensemble_member(states, k).params, alone.params)
    losses = history["epochs"][-1]["member_train_loss"]
    assert len(set(losses)) == 3


def test_the_ensemble_step_is_shared_and_steps_every_member():
    model, optimizer = TinyNet(), sgd(0.1)
    assert make_ensemble_train_step(model, optimizer) is make_ensemble_train_step(
        model, optimizer
    )
    images, labels = (jnp.asarray(a[:8]) for a in TRAIN)
    states = create_ensemble(model, optimizer, jax.random.split(jax.random.key(0), 2), images)
    states, metrics = make_ensemble_train_step(model, optimizer)(states, (images, labels))
    assert states.step.tolist() == [1, 1] and metrics["loss"].shape == (2,)


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
        ({"eval_batch_size": 0}, "eval_batch_size"),
    ]
    for overrides, match in fit_cases:
        kwargs = {"num_members": 2, "epochs": 1, "batch_size": 16, **overrides}
        with pytest.raises(ValueError, match=match):
            fit_ensemble(model, optimizer, *TRAIN, *TEST, **kwargs)
    bad_labels = TEST[1] + CLASSES
    with pytest.raises(ValueError, match=r"test_labels must be in \[0, 3\)"):
        fit_ensemble(
            model, optimizer, *TRAIN, TEST[0], bad_labels, num_members=2, epochs=1, batch_size=16
        )
    with pytest.raises(ValueError, match="index"):
        ensemble_member(create_ensemble(model, optimizer, keys, images), 2)
