"""Tests for jaxtricks.training.steps: the compiled train step, eval step and evaluate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import CLASSES, TinyNet, host, toy_problem

import jaxtricks as jt
from jaxtricks.models import MLP
from jaxtricks.training.state import create_train_state
from jaxtricks.training.steps import (
    check_labels,
    evaluate,
    make_eval_step,
    make_objective,
    make_train_step,
)

MODEL = TinyNet()
OPTIMIZER = optax.sgd(0.05, momentum=0.9)
IMAGES, LABELS = toy_problem(seed=0, num_examples=256)
BATCH = 32


@pytest.fixture(scope="module")
def train_step():
    return make_train_step(MODEL, OPTIMIZER)


@pytest.fixture(scope="module")
def eval_step():
    return make_eval_step(MODEL)


def fresh_state(seed=0):
    return create_train_state(MODEL, OPTIMIZER, jax.random.key(seed), jnp.asarray(IMAGES[:BATCH]))


def batch(i):
    """The i-th batch of the toy data, cycling."""
    start = (i * BATCH) % len(IMAGES)
    return jnp.asarray(IMAGES[start : start + BATCH]), jnp.asarray(LABELS[start : start + BATCH])


def copy(state):
    return jax.tree.map(lambda leaf: leaf.copy(), state)


# Compiled, because running the reference model op by op compiles every op on its own.
_eval_logits = jax.jit(lambda variables, images: MODEL.apply(variables, images, train=False))


def assert_trees_equal(actual, expected):
    actual_leaves, actual_def = jax.tree.flatten(actual)
    expected_leaves, expected_def = jax.tree.flatten(expected)
    assert actual_def == expected_def
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def numpy_loss_and_accuracy(state, images, labels):
    """Mean cross-entropy and accuracy from the model's eval logits, in float64 NumPy."""
    variables = {"params": state.params, **state.model_state}
    logits = np.asarray(_eval_logits(variables, jnp.asarray(images)), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    accuracy = (logits.argmax(axis=1) == labels).mean()
    return loss, accuracy


@pytest.mark.slow
def test_train_step_reduces_loss(train_step):
    state = fresh_state()
    losses, accuracies = [], []
    for i in range(40):
        state, metrics = train_step(state, batch(i))
        losses.append(metrics["loss"])
        accuracies.append(metrics["accuracy"])
    losses, accuracies = np.asarray(host(losses)), np.asarray(host(accuracies))
    assert int(state.step) == 40
    assert losses[-8:].mean() < 0.5 * losses[:8].mean()
    assert accuracies[-8:].mean() > 0.9


@pytest.mark.slow
def test_train_step_donates_the_state_when_asked():
    donating = make_train_step(MODEL, OPTIMIZER, donate=True)
    state = fresh_state()
    old_leaves = jax.tree.leaves((state.params, state.opt_state, state.model_state))
    new_state, _ = donating(state, batch(0))
    assert all(leaf.is_deleted() for leaf in old_leaves)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))
    keeping = make_train_step(MODEL, OPTIMIZER, donate=False)
    state = fresh_state()
    keeping(state, batch(0))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    # Both compute the same step.
    assert_trees_equal(host(keeping(fresh_state(), batch(0))), host(donating(fresh_state(),
                                                                             batch(0))))


def test_step_matches_a_manual_step_with_the_derived_dropout_key(train_step, allclose):
    state = fresh_state()
    state, _ = train_step(state, batch(0))  # step 1, so that the key depends on a nonzero step
    images, labels = batch(1)
    key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        variables = {"params": params, **state.model_state}
        logits, updates = MODEL.apply(
            variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates["batch_stats"])

    @jax.jit
    def manual_step(params, opt_state):
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        params = optax.apply_updates(params, updates)
        return params, opt_state, batch_stats, loss, accuracy, optax.tree.norm(grads)

    expected = host(manual_step(state.params, state.opt_state))

    new_state, metrics = train_step(state, (images, labels))
    assert int(new_state.step) == 2
    allclose(new_state.params, expected[0], rtol=1e-5, atol=1e-6)
    allclose(new_state.opt_state, expected[1], rtol=1e-5, atol=1e-6)
    allclose(new_state.model_state["batch_stats"], expected[2], rtol=1e-5, atol=1e-6)
    allclose(metrics["loss"], expected[3], rtol=1e-5)
    allclose(metrics["accuracy"], expected[4])
    allclose(metrics["grad_norm"], expected[5], rtol=1e-5)
    assert metrics["skipped"].dtype == jnp.int32 and int(metrics["skipped"]) == 0


def test_dropout_key_changes_with_step_and_is_reproducible(train_step):
    state = fresh_state()
    later = copy(state)._replace(step=jnp.array(7, jnp.int32))
    first = train_step(copy(state), batch(0))
    again = train_step(copy(state), batch(0))
    other = train_step(later, batch(0))
    assert_trees_equal(host(first), host(again))
    # Same parameters and batch, different step: only the dropout masks differ.
    assert float(first[1]["loss"]) != float(other[1]["loss"])
    assert not np.array_equal(
        host(first[0].params["Dense_0"]["kernel"]), host(other[0].params["Dense_0"]["kernel"])
    )


ALL = jnp.ones((BATCH,), jnp.bool_)


def test_batch_stats_move_in_train_step_only(train_step, eval_step):
    state = fresh_state()
    before = host(state.model_state["batch_stats"])
    images, labels = batch(0)
    sums = host(eval_step(state, (images, labels), ALL))
    assert_trees_equal(host(eval_step(state, (images, labels), ALL)), sums)
    assert_trees_equal(host(state.model_state["batch_stats"]), before)
    loss, accuracy = numpy_loss_and_accuracy(state, images, labels)
    np.testing.assert_allclose(sums["loss"], loss * BATCH, rtol=1e-5)
    assert int(sums["accuracy"]) == round(accuracy * BATCH) and int(sums["count"]) == BATCH

    new_state, _ = train_step(copy(state), (images, labels))
    after = host(new_state.model_state["batch_stats"])["BatchNorm_0"]
    assert not np.allclose(after["mean"], before["BatchNorm_0"]["mean"])
    assert not np.allclose(after["var"], before["BatchNorm_0"]["var"])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
@pytest.mark.slow
def test_nonfinite_batch_is_skipped_and_training_goes_on(train_step, bad_value):
    state = fresh_state()
    losses = []
    for i in range(12):
        state, metrics = train_step(state, batch(i))
        losses.append(metrics["loss"])
    kept = host((state.params, state.opt_state, state.model_state))
    images, labels = batch(12)
    images = images.at[3, 4, 4, 0].set(bad_value)
    state, metrics = train_step(state, (images, labels))
    assert int(metrics["skipped"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 13
    assert_trees_equal(host((state.params, state.opt_state, state.model_state)), kept)
    for i in range(13, 30):
        state, metrics = train_step(state, batch(i))
        assert int(metrics["skipped"]) == 0
        losses.append(metrics["loss"])
    losses = np.asarray(host(losses))
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[7:12].mean()


@pytest.mark.slow
def test_without_skipping_a_nan_batch_poisons_the_params():
    train_step = make_train_step(MODEL, OPTIMIZER, skip_nonfinite=False)
    images, labels = batch(0)
    state, metrics = train_step(fresh_state(), (images.at[0].set(np.nan), labels))
    assert int(metrics["skipped"]) == 0
    assert np.isnan(host(state.params["Dense_0"]["kernel"])).any()


@pytest.mark.parametrize("batch_size", [16, 64])
@pytest.mark.slow
def test_evaluate_counts_every_example_once(train_step, eval_step, batch_size):
    state = fresh_state()
    for i in range(5):
        state, _ = train_step(state, batch(i))
    images, labels = IMAGES[:37], LABELS[:37]
    loss, accuracy = numpy_loss_and_accuracy(state, images, labels)
    result = evaluate(eval_step, state, images, labels, batch_size=batch_size)
    assert list(result) == ["loss", "accuracy"]
    np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)
    assert result["accuracy"] == accuracy


def test_eval_step_counts_only_masked_rows(eval_step):
    state = fresh_state()
    images, labels = batch(0)
    mask = jnp.arange(BATCH) % 3 == 0
    sums = host(eval_step(state, (images, labels), mask))
    loss, accuracy = numpy_loss_and_accuracy(state, IMAGES[:BATCH:3], LABELS[:BATCH:3])
    count = int(mask.sum())
    assert int(sums["count"]) == count
    assert int(sums["accuracy"]) == round(accuracy * count)
    np.testing.assert_allclose(sums["loss"], loss * count, rtol=1e-5)


@pytest.mark.parametrize(
    ("images", "labels", "batch_size", "name"),
    [
        (IMAGES[:10], LABELS[:10], 0, "batch_size"),
        (IMAGES[:10], LABELS[:10], 2.5, "batch_size"),
        (IMAGES[:10], LABELS[:9], 4, "y has 9 examples but x has 10"),
        (IMAGES[:0], LABELS[:0], 4, "x must have a leading axis"),
        (IMAGES[:10], [1] * 10, 4, r"y\[0\] must be an array"),
    ],
)
def test_evaluate_refuses_bad_arguments(eval_step, images, labels, batch_size, name):
    with pytest.raises(ValueError, match=name):
        evaluate(eval_step, fresh_state(), images, labels, batch_size=batch_size)


def test_factories_refuse_bad_arguments():
    with pytest.raises(ValueError, match="model"):
        make_train_step(lambda x: x, OPTIMIZER)
    with pytest.raises(ValueError, match="optimizer"):
        make_train_step(MODEL, optax.sgd)
    with pytest.raises(ValueError, match="skip_nonfinite"):
        make_train_step(MODEL, OPTIMIZER, skip_nonfinite="yes")
    with pytest.raises(ValueError, match="model"):
        make_eval_step(object())
    with pytest.raises(ValueError, match="loss_fn"):
        make_train_step(MODEL, OPTIMIZER, loss_fn="mse")
    with pytest.raises(ValueError, match="reserved"):
        make_train_step(MODEL, OPTIMIZER, metrics={"grad_norm": lambda o, y: o[:, 0]})
    with pytest.raises(ValueError, match="reserved"):
        make_eval_step(MODEL, metrics={"val_accuracy": lambda o, y: o[:, 0]})
    with pytest.raises(ValueError, match="donate"):
        make_train_step(MODEL, OPTIMIZER, donate="yes")


class _ListNet(nn.Module):
    """A module with a list field, so it cannot be hashed."""

    features: list

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.features[0])(x.reshape((x.shape[0], -1)))


@pytest.mark.slow
def test_equal_arguments_share_one_compiled_step():
    assert make_train_step(TinyNet(), OPTIMIZER) is make_train_step(TinyNet(), OPTIMIZER)
    assert make_eval_step(TinyNet()) is make_eval_step(TinyNet())
    assert make_train_step(TinyNet(), OPTIMIZER) is not make_train_step(
        TinyNet(dropout_rate=0.5), OPTIMIZER
    )
    assert make_train_step(TinyNet(), OPTIMIZER) is not make_train_step(
        TinyNet(), optax.sgd(0.05, momentum=0.9)
    )
    # Unhashable modules still work, each call building its own step.
    model = _ListNet(features=[CLASSES])
    train_step = make_train_step(model, OPTIMIZER)
    assert train_step is not make_train_step(model, OPTIMIZER)
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), jnp.asarray(IMAGES[:4]))
    state, metrics = train_step(state, batch(0))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_default_objective_is_cross_entropy_and_accuracy_otherwise_none():
    default = make_objective()
    assert default.integer_labels and [name for name, _ in default.metrics] == ["accuracy"]
    mine = make_objective(lambda outputs, y: jnp.sum((outputs - y) ** 2, axis=-1))
    assert not mine.integer_labels and mine.metrics == ()


def test_check_labels_names_the_split():
    check_labels(np.array([0, 2]), 3)
    with pytest.raises(ValueError, match=r"validation y must hold integer labels in \[0, 2\]"):
        check_labels(np.array([0, 3]), 3, "validation y")
    with pytest.raises(ValueError, match="pass loss_fn for other targets"):
        check_labels(np.array([0.5]), 3)


class _Regressor(nn.Module):
    """Inputs and targets as pytrees: {"pixels", "bias"} in, {"mean", "scale"} out."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x["pixels"].reshape((x["pixels"].shape[0], -1))) + x["bias"][:, None]
        return {"mean": nn.Dense(1)(nn.relu(h))[:, 0], "scale": nn.Dense(1)(h)[:, 0]}


def _pytree_loss(outputs, y):
    return (outputs["mean"] - y["mean"]) ** 2 + (outputs["scale"] - y["scale"]) ** 2


@pytest.mark.slow
def test_pytree_inputs_and_targets_with_a_loss_and_metric_of_ones_own():
    model, tx = _Regressor(), jt.adam(1e-2)
    x = {"pixels": jnp.asarray(IMAGES[:BATCH]), "bias": jnp.linspace(-1, 1, BATCH)}
    y = {"mean": jnp.asarray(IMAGES[:BATCH].mean(axis=(1, 2, 3))), "scale": x["bias"] * 2}
    mae = {"mae": lambda outputs, y: jnp.abs(outputs["mean"] - y["mean"])}
    state = create_train_state(model, tx, jax.random.key(0), x)
    step = make_train_step(model, tx, loss_fn=_pytree_loss, metrics=mae)
    first = None
    for _ in range(60):
        state, metrics = step(state, (x, y))
        first = metrics if first is None else first
    assert sorted(metrics) == ["grad_norm", "loss", "mae", "skipped"]
    assert float(metrics["loss"]) < 0.2 * float(first["loss"])
    result = evaluate(make_eval_step(model, loss_fn=_pytree_loss, metrics=mae), state, x, y,
                      batch_size=5)
    assert list(result) == ["loss", "mae"]
    np.testing.assert_allclose(result["loss"], np.mean(_pytree_loss(
        model.apply({"params": state.params}, x), y)), rtol=1e-5)


def test_a_loss_without_one_value_per_example_is_refused():
    tx = optax.sgd(0.1)
    state = fresh_state()
    step = make_train_step(MODEL, tx, loss_fn=lambda outputs, y: jnp.mean(outputs))
    with pytest.raises(ValueError, match=r"loss_fn must return one value per example"):
        step(state, batch(0))
    step = make_train_step(MODEL, tx, metrics={"top": lambda outputs, y: outputs})
    with pytest.raises(ValueError, match=r"metrics\['top'\] must return one value"):
        step(state, batch(0))


class _Flagged(nn.Module):
    """Dropout switched by the flag its __call__ names."""

    flag: str

    def setup(self):
        self.dense = nn.Dense(CLASSES)

    def __call__(self, x, **flag):
        deterministic = not flag[self.flag] if self.flag != "deterministic" else flag[self.flag]
        x = nn.Dropout(0.5, deterministic=deterministic)(x.reshape((x.shape[0], -1)))
        return self.dense(x)


class _Training(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool = False):
        x = nn.Dropout(0.5, deterministic=not training)(x.reshape((x.shape[0], -1)))
        return nn.Dense(CLASSES)(x)


class _Deterministic(nn.Module):
    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        x = nn.Dropout(0.5, deterministic=deterministic)(x.reshape((x.shape[0], -1)))
        return nn.Dense(CLASSES)(x)


class _NoFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(CLASSES)(x.reshape((x.shape[0], -1)))


@pytest.mark.slow
@pytest.mark.parametrize("model", [_Training(), _Deterministic(), _NoFlag()],
                         ids=["training", "deterministic", "none"])
def test_every_train_flag_trains_with_dropout_and_evaluates_without(model):
    tx = optax.sgd(0.0)  # the parameters stay put: only the flag changes what is computed
    state = create_train_state(model, tx, jax.random.key(0), jnp.asarray(IMAGES[:BATCH]))
    step = make_train_step(model, tx, donate=False)
    images, labels = batch(0)
    _, first = step(state, (images, labels))
    _, second = step(state._replace(step=state.step + 1), (images, labels))
    sums = make_eval_step(model)(state, (images, labels), ALL)
    sums_again = make_eval_step(model)(state, (images, labels), ALL)
    assert float(sums["loss"]) == float(sums_again["loss"])
    if isinstance(model, _NoFlag):
        # Without a flag, training and evaluation compute the same thing.
        np.testing.assert_allclose(float(first["loss"]) * BATCH, float(sums["loss"]), rtol=1e-5)
        assert float(first["loss"]) == float(second["loss"])
    else:
        # Dropout in training: the loss depends on the step's key and differs from eval's.
        assert float(first["loss"]) != float(second["loss"])
        assert not np.isclose(float(first["loss"]) * BATCH, float(sums["loss"]), rtol=1e-5)


def test_nnx_model_trains_its_batch_stats_and_dropout_stream():
    from flax import nnx

    model = nnx.Sequential(
        lambda x: x.reshape((x.shape[0], -1)),
        nnx.Linear(64, 16, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(16, momentum=0.9, rngs=nnx.Rngs(0)),
        nnx.relu,
        nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=1)),
        nnx.Linear(16, CLASSES, rngs=nnx.Rngs(1)),
    )
    tx = jt.adam(1e-2)
    state = create_train_state(model, tx, jax.random.key(0), jnp.asarray(IMAGES[:4]))
    step = make_train_step(model, tx)
    counts = []
    for i in range(30):
        state, _ = step(state, batch(i))
        counts.append(int(state.model_state["layers"][4]["rngs"]["count"][...]))
    assert counts == list(range(counts[0], counts[0] + 30))  # one dropout draw per step
    assert float(jnp.abs(state.model_state["layers"][2]["mean"][...]).sum()) > 0
    result = evaluate(make_eval_step(model), state, IMAGES, LABELS, batch_size=64)
    assert result["accuracy"] > 0.9


def test_extreme_finite_input_is_skipped_with_all_state_kept():
    # One pixel at 3e38 gives a finite step whose squared gradients overflow Adam's second
    # moment: the step must be skipped even though the parameters would stay finite.
    model, tx = MLP(features=(16,), num_classes=CLASSES), jt.adam(1e-3)
    state = create_train_state(model, tx, jax.random.key(0), jnp.asarray(IMAGES[:BATCH]))
    step = make_train_step(model, tx, donate=False)
    kept = host(state)
    images, labels = batch(0)
    state, metrics = step(state, (images.at[0, 0, 0, 0].set(3e38), labels))
    assert np.isfinite(float(metrics["loss"]))  # finite, yet the step would poison the state
    assert int(metrics["skipped"]) == 1
    assert_trees_equal(host(state)._replace(step=None), kept._replace(step=None))
    assert int(state.step) == 1
    unguarded = make_train_step(model, tx, skip_nonfinite=False, donate=False)
    poisoned, _ = unguarded(create_train_state(model, tx, jax.random.key(0),
                                               jnp.asarray(IMAGES[:BATCH])),
                            (images.at[0, 0, 0, 0].set(3e38), labels))
    assert not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(host(poisoned.opt_state)))




def _step_jaxprs(model, paths_built, paths_traced, state, batch):
    """The jaxprs of a train and an eval step built under one set of speed paths and first
    traced under another. Each call builds new steps: a new optimizer makes another cache key,
    and a jitted function keeps its first trace."""
    from jaxtricks.backend import use_speed_paths

    optimizer = optax.sgd(0.05, momentum=0.9)
    with use_speed_paths(paths_built):
        train = make_train_step(model, optimizer)
        evaluate_ = make_eval_step(model, loss_fn=lambda logits, y: jnp.zeros(y.shape))
    mask = jnp.ones((batch[1].shape[0],), jnp.bool_)
    with use_speed_paths(paths_traced):
        return (str(jax.make_jaxpr(train)(state, batch)),
                str(jax.make_jaxpr(evaluate_)(state, batch, mask)))


def test_a_step_keeps_the_speed_paths_it_was_built_with_wherever_it_is_traced():
    # The batch-norm and first-convolution paths are read by the model while a step is traced;
    # the step enters its own paths then, so the block around its first call does not matter.
    from jaxtricks.backend import PLAIN, speed_paths
    from jaxtricks.models import CNN

    model = CNN(features=(3, 5), hidden=7, use_batch_norm=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 12, 1)), jnp.float32)
    batch = (x, jnp.arange(4, dtype=jnp.int32))
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), x)
    fast = speed_paths("cpu")
    assert fast.one_channel_conv_by_shifts and fast.batch_norm_custom_gradient
    own = [_step_jaxprs(model, paths, paths, state, batch) for paths in (PLAIN, fast)]
    crossed = [_step_jaxprs(model, PLAIN, fast, state, batch),
               _step_jaxprs(model, fast, PLAIN, state, batch)]
    # The two paths give two training programs (evaluation takes neither path); each step gives
    # the program of the paths it was built with.
    assert own[0][0] != own[1][0]
    assert crossed == own
