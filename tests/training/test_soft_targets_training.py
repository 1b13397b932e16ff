"""Mixup and label smoothing through the train step and ``fit``.

Mixup is a batch transform with a key of its own, b_t = fold_in(fold_in(r, t), 1): a step with
it must equal (up to rounding) a step without it on the batch mixed by hand with that key, so
the dropout key k_t = fold_in(r, t) is the same with or without it, and a transform that
changes nothing must leave a run bit-identical; a run continued from a saved
state must draw the same mixes as one that never stopped. Label smoothing is ``fit``'s
``loss_fn``; it must leave the trained model less confident.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_toys import CLASSES, TinyNet, assert_trees_equal, host, toy_problem

import jaxtricks as jt
from jaxtricks.training import accuracy, create_train_state, fit, make_train_step
from jaxtricks.training.steps import softmax_cross_entropy

MODEL = TinyNet(batch_norm=True, dropout_rate=0.3)
OPTIMIZER = jt.sgd(0.05)
IMAGES, LABELS = toy_problem(seed=0, num_examples=256)
VAL_IMAGES, VAL_LABELS = toy_problem(seed=1, num_examples=64)
BATCH = 32
MIXUP = jt.mixup(0.4, CLASSES)


def assert_trees_close(actual, expected):
    actual_leaves, actual_def = jax.tree.flatten(host(actual))
    expected_leaves, expected_def = jax.tree.flatten(host(expected))
    assert actual_def == expected_def
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)


def fresh_state():
    return create_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.asarray(IMAGES[:BATCH]))


def test_a_mixup_step_is_a_plain_step_on_the_batch_mixed_with_its_own_key():
    state = fresh_state()
    batch = jnp.asarray(IMAGES[:BATCH]), jnp.asarray(LABELS[:BATCH])
    with_mixup = make_train_step(MODEL, OPTIMIZER, batch_transform=MIXUP, donate=False)
    plain = make_train_step(MODEL, OPTIMIZER, donate=False)
    for _ in range(3):  # steps 0, 1, 2: the key follows the step
        dropout_key = jax.random.fold_in(state.rng, state.step)
        expected, expected_metrics = plain(state, MIXUP(jax.random.fold_in(dropout_key, 1), batch))
        # Mixed with the dropout key itself, the step would differ far beyond rounding.
        other, _ = plain(state, MIXUP(dropout_key, batch))
        state, metrics = with_mixup(state, batch)
        # Equal up to rounding: XLA fuses the mix into the step, which may round differently.
        assert_trees_close(state, expected)
        with pytest.raises(AssertionError):
            assert_trees_close(state.params, other.params)
        assert float(metrics["loss"]) == pytest.approx(float(expected_metrics["loss"]), rel=1e-6)


@pytest.mark.slow
def test_a_transform_leaves_the_dropout_stream_alone():
    arguments = {"epochs": 1, "batch_size": BATCH, "progress": False, "runner": "loop"}
    expected, _ = fit(MODEL, OPTIMIZER, IMAGES, LABELS, **arguments)
    state, history = fit(MODEL, OPTIMIZER, IMAGES, LABELS, batch_transform=lambda key, b: b,
                         **arguments)
    assert_trees_equal(state, expected)
    assert history.header["batch_transform"] == "<lambda>"


@pytest.mark.slow
def test_a_mixup_run_continues_bit_identically():
    arguments = {"batch_size": BATCH, "progress": False, "batch_transform": MIXUP,
                 "runner": "loop", "validation_data": (VAL_IMAGES, VAL_LABELS)}
    expected, expected_history = fit(MODEL, OPTIMIZER, IMAGES, LABELS, epochs=2, **arguments)
    state, _ = fit(MODEL, OPTIMIZER, IMAGES, LABELS, epochs=1, **arguments)
    state, history = fit(MODEL, OPTIMIZER, IMAGES, LABELS, epochs=1, initial_state=state,
                         **arguments)
    assert_trees_equal(state, expected)
    assert history["loss"] == expected_history["loss"][1:]
    assert expected_history.header["batch_transform"] == "mixup(alpha=0.4, num_classes=3)"
    # Mixed targets are soft: the training loss stays above the clean validation loss.
    assert expected_history["loss"][-1] > expected_history["val_loss"][-1]
    assert expected_history["val_accuracy"][-1] > 0.9


@pytest.mark.slow
def test_the_default_loss_and_accuracy_take_soft_targets(getkey):
    logits = jax.random.normal(getkey(), (6, CLASSES))
    labels = jax.random.randint(getkey(), (6,), 0, CLASSES)
    one_hot = jax.nn.one_hot(labels, CLASSES)
    np.testing.assert_allclose(softmax_cross_entropy(logits, one_hot),
                               softmax_cross_entropy(logits, labels), rtol=1e-6)
    np.testing.assert_array_equal(accuracy(logits, 0.9 * one_hot + 0.1 / CLASSES),
                                  accuracy(logits, labels))
    assert softmax_cross_entropy(logits.astype(jnp.bfloat16), one_hot).dtype == jnp.float32


@pytest.mark.slow
def test_label_smoothing_through_fit_keeps_the_model_less_confident():
    arguments = {"epochs": 4, "batch_size": BATCH, "progress": False, "runner": "loop",
                 "validation_data": (VAL_IMAGES, VAL_LABELS)}
    model = TinyNet(batch_norm=False, dropout_rate=0.0)
    optimizer = jt.adam(1e-2)
    plain, _ = fit(model, optimizer, IMAGES, LABELS, **arguments)
    smoothed, history = fit(model, optimizer, IMAGES, LABELS,
                            loss_fn=jt.smoothed_cross_entropy(0.3),
                            metrics={"accuracy": accuracy}, **arguments)
    assert history.header["loss"] == "smoothed_cross_entropy(alpha=0.3)"
    assert history["val_accuracy"][-1] > 0.9

    def confidence(state):
        logits = model.apply({"params": state.params}, jnp.asarray(VAL_IMAGES), train=False)
        return float(jnp.mean(jnp.max(jax.nn.softmax(logits), axis=-1)))

    # The smoothed target puts 1 − 0.3 + 0.3 / 3 = 0.8 on the label: training aims there.
    assert confidence(smoothed) < 0.9 < confidence(plain)


def test_a_batch_transform_must_be_a_function():
    with pytest.raises(ValueError, match="batch_transform must be a function"):
        make_train_step(MODEL, OPTIMIZER, batch_transform="mixup")
    with pytest.raises(ValueError, match="batch_transform must be a function"):
        fit(MODEL, OPTIMIZER, IMAGES, LABELS, epochs=1, batch_size=BATCH, progress=False,
            batch_transform=0.2)
