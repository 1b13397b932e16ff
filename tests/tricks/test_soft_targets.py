"""Tests for jaxtricks.tricks.soft_targets: mixup's convex combinations and label smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtricks as jt
from jaxtricks.tricks.soft_targets import mixup, smoothed_cross_entropy

BATCH, CLASSES = 16, 5


def identity_batch(getkey):
    """x = the identity (row i is e_i), so a mixed row shows which rows it mixes and how much."""
    labels = jax.random.randint(getkey(), (BATCH,), 0, CLASSES)
    return jnp.eye(BATCH), labels


def test_mixup_is_one_convex_combination_of_a_permutation(getkey):
    x, y = identity_batch(getkey)
    mixed, targets = mixup(0.4, CLASSES)(getkey(), (x, y))
    assert mixed.dtype == targets.dtype == jnp.float32 and targets.shape == (BATCH, CLASSES)
    mixed, targets, y = np.asarray(mixed), np.asarray(targets), np.asarray(y)
    # Row i is λ e_i + (1 − λ) e_π(i): its partner is its largest off-diagonal entry.
    partner = np.argmax(mixed - np.diag(np.diag(mixed)), axis=1)
    moved = partner != np.arange(BATCH)
    weight = np.diag(mixed)[moved]
    assert moved.any() and np.allclose(weight, weight[0])  # one λ for the whole batch
    weight = weight[0]
    assert 0.0 <= weight <= 1.0
    order = np.where(moved, partner, np.arange(BATCH))
    assert sorted(order) == list(range(BATCH))  # π is a permutation
    expected_x = weight * np.eye(BATCH) + (1 - weight) * np.eye(BATCH)[order]
    np.testing.assert_allclose(mixed, expected_x, atol=1e-6)
    one_hot = np.eye(CLASSES)[y]
    np.testing.assert_allclose(targets, weight * one_hot + (1 - weight) * one_hot[order],
                               atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert (targets >= 0).all()


@pytest.mark.slow
def test_mixup_weights_follow_beta_alpha_alpha(getkey):
    x, y = identity_batch(getkey)

    def weight(alpha, key):
        mixed, _ = mixup(alpha, CLASSES)(key, (x, y))
        diagonal = jnp.diag(mixed)
        return jnp.max(jnp.where(diagonal < 1.0, diagonal, 0.0))  # λ where a row moved

    keys = jax.random.split(getkey(), 2000)
    for alpha in (0.2, 1.0):
        weights = np.asarray(jax.vmap(lambda k, a=alpha: weight(a, k))(keys))
        # Beta(α, α) has mean 1/2 and variance 1 / (4 (2α + 1)); λ and 1 − λ look alike here.
        spread = np.minimum(weights, 1 - weights)
        expected = np.random.default_rng(0).beta(alpha, alpha, 200_000)
        expected = np.minimum(expected, 1 - expected)
        assert spread.mean() == pytest.approx(expected.mean(), abs=0.02), alpha


def test_mixup_mixes_soft_targets_as_given_and_every_input_leaf(getkey):
    x = {"a": jnp.ones((4, 3)), "b": jnp.arange(8.0).reshape(4, 2)}
    y = jnp.full((4, 3), 1 / 3)
    mixed, targets = mixup(1.0, 3)(getkey(), (x, y))
    np.testing.assert_allclose(targets, y, rtol=1e-6)
    np.testing.assert_allclose(mixed["a"], 1.0, rtol=1e-6)
    assert mixed["b"].shape == (4, 2) and not np.allclose(mixed["b"], x["b"])


def test_mixup_works_under_jit_and_keeps_the_input_dtype(getkey):
    x = jnp.ones((8, 4), jnp.bfloat16)
    mixed, targets = jax.jit(mixup(0.3, 3))(getkey(), (x, jnp.zeros(8, jnp.int32)))
    assert mixed.dtype == jnp.bfloat16 and targets.dtype == jnp.float32


def test_same_hyperparameters_give_the_same_function():
    assert mixup(0.2, 10) is mixup(0.2, 10) and mixup(0.2, 10) is not mixup(0.3, 10)
    assert smoothed_cross_entropy(0.1) is smoothed_cross_entropy(0.1)
    assert mixup(0.2, 10).__name__ == "mixup(alpha=0.2, num_classes=10)"
    assert jt.mixup is mixup and jt.smoothed_cross_entropy is smoothed_cross_entropy


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: mixup(0.0, 10), r"alpha must be in \(0.0, inf\]"),
        (lambda: mixup(-1.0, 10), "alpha"),
        (lambda: mixup(float("nan"), 10), "alpha"),
        (lambda: mixup(lambda count: 0.2, 10), "alpha must be a number"),
        (lambda: mixup(0.2, 0), "num_classes"),
        (lambda: mixup(0.2, 2.5), "num_classes"),
        (lambda: smoothed_cross_entropy(1.5), r"alpha must be in \[0.0, 1.0\]"),
        (lambda: smoothed_cross_entropy(-0.1), "alpha"),
        (lambda: smoothed_cross_entropy("0.1"), "alpha must be a number"),
    ],
)
def test_bad_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mixup_refuses_integer_inputs(getkey):
    with pytest.raises(ValueError, match="floating inputs"):
        mixup(0.2, 3)(getkey(), (jnp.ones((4, 2), jnp.int32), jnp.zeros(4, jnp.int32)))


def test_smoothed_cross_entropy_is_the_cross_entropy_of_smoothed_targets(getkey):
    logits = jax.random.normal(getkey(), (BATCH, CLASSES))
    labels = jax.random.randint(getkey(), (BATCH,), 0, CLASSES)
    alpha = 0.2
    targets = (1 - alpha) * jax.nn.one_hot(labels, CLASSES) + alpha / CLASSES
    expected = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    np.testing.assert_allclose(smoothed_cross_entropy(alpha)(logits, labels), expected, rtol=1e-5)
    # Soft targets are smoothed as given; α = 0 is the plain cross-entropy.
    np.testing.assert_allclose(
        smoothed_cross_entropy(alpha)(logits, jax.nn.one_hot(labels, CLASSES)), expected,
        rtol=1e-5)
    np.testing.assert_allclose(
        smoothed_cross_entropy(0.0)(logits, labels),
        optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-5)


def test_smoothed_cross_entropy_upcasts_half_precision_logits(getkey):
    logits = jax.random.normal(getkey(), (4, CLASSES)).astype(jnp.bfloat16)
    loss = smoothed_cross_entropy(0.1)(logits, jnp.zeros(4, jnp.int32))
    assert loss.dtype == jnp.float32 and loss.shape == (4,)
