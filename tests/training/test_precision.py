"""Mixed precision: the policy, dtypes inside the steps, float32 master state, loss scaling.

The step is checked from inside: a probe model records, while it is traced, the dtypes of its
input, its kernel and its output, and a probe loss the dtype of the outputs it is given. The
loss scale is driven by hand: a small growth interval shows the scale doubling; an initial
scale of 2^30 makes the float16 backward pass overflow (the logits' cotangent reaches
2^30 / B, far above float16's 65504), so the step must be skipped bit for bit, the scale halved
and the step counted as an overflow, not as a poisoned (skipped) step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.dynamic_scale import DynamicScale
from training_toys import CLASSES, TinyNet, assert_trees_equal, host, toy_problem

import jaxtricks as jt
from jaxtricks.models import CNN, MLP
from jaxtricks.training import (
    LossScaleState,
    Precision,
    as_precision,
    create_train_state,
    evaluate,
    fit,
    make_eval_step,
    make_train_step,
    precision_policy,
)

IMAGES, LABELS = toy_problem(seed=0, num_examples=256)
VAL_IMAGES, VAL_LABELS = toy_problem(seed=1, num_examples=64)
BATCH = 32
OPTIMIZER = jt.adam(3e-3)
NET = TinyNet(batch_norm=False)  # Flax's BatchNorm mixes dtypes: see the test of a user's model
SEEN = []  # (where, input dtype, kernel dtype, output dtype), appended while tracing


class Probe(nn.Module):
    """One Dense layer that records the dtypes it sees each time it is traced."""

    @nn.compact
    def __call__(self, x, train):
        del train
        h = x.reshape((x.shape[0], -1))
        dense = nn.Dense(CLASSES)
        out = dense(h)
        SEEN.append(("model", h.dtype, dense.variables["params"]["kernel"].dtype, out.dtype))
        return out


def probe_loss(outputs, labels):
    SEEN.append(("loss", outputs.dtype, None, None))
    return jt.training.softmax_cross_entropy(outputs, labels)


def batch(i=0):
    start = (i * BATCH) % len(IMAGES)
    return jnp.asarray(IMAGES[start:start + BATCH]), jnp.asarray(LABELS[start:start + BATCH])


def float_dtypes(tree):
    leaves = jax.tree.leaves(tree)
    return {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}


# ---- the policy ------------------------------------------------------------------------------


def test_named_policies():
    assert precision_policy("fp32") == Precision()
    bf16, fp16 = precision_policy("bf16"), precision_policy("fp16")
    assert bf16.compute_dtype == jnp.bfloat16 and bf16.loss_scale is None
    assert fp16.compute_dtype == jnp.float16 and isinstance(fp16.loss_scale, DynamicScale)
    for policy in (bf16, fp16):
        assert policy.param_dtype == jnp.float32 and policy.output_dtype == jnp.float32
    assert as_precision("bf16") == bf16 and as_precision(bf16) is bf16
    assert as_precision(None) is None
    assert hash(precision_policy("fp16")) == hash(fp16)
    assert str(bf16) == "params=float32,compute=bfloat16,output=float32"


def test_casts_touch_floating_leaves_only(getkey):
    policy = precision_policy("fp16")
    tree = {"w": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16), "n": jnp.arange(3),
            "flag": jnp.array([True]), "key": getkey()}
    cast = policy.cast_to_compute(tree)
    assert cast["w"].dtype == cast["b"].dtype == jnp.float16
    assert cast["n"].dtype == jnp.int32 and cast["flag"].dtype == jnp.bool_
    assert cast["key"] is tree["key"]
    back = policy.cast_to_param(cast)
    assert back["w"].dtype == jnp.float32 and policy.cast_to_output(cast)["b"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Precision(compute_dtype=jnp.int32), "compute_dtype must be a floating dtype"),
        (lambda: Precision(param_dtype="nonsense"), "param_dtype must be a floating dtype"),
        (lambda: Precision(loss_scale=2.0**15), "loss_scale must be a flax"),
        (lambda: Precision(loss_scale=DynamicScale(scale=jnp.ones(()))), "loss_scale.scale"),
        (lambda: Precision(loss_scale=DynamicScale(scale=-1.0)), "loss_scale.scale"),
        (lambda: Precision(loss_scale=DynamicScale(fin_steps=0.5)), "loss_scale.fin_steps"),
        (lambda: precision_policy("fp8"), "precision must be one of"),
        (lambda: as_precision(16), "precision must be a Precision"),
    ],
)
def test_bad_policies_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---- inside the steps ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.slow
def test_the_step_computes_in_the_compute_dtype_and_keeps_float32_state(name):
    policy = precision_policy(name)
    state = create_train_state(Probe(), OPTIMIZER, jax.random.key(0), batch()[0],
                               precision=policy)
    assert float_dtypes(state.params) == float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    SEEN.clear()
    train_step = make_train_step(Probe(), OPTIMIZER, loss_fn=probe_loss, precision=policy)
    state, metrics = train_step(state, batch())
    compute = policy.compute_dtype
    assert ("model", compute, compute, compute) in SEEN
    assert ("loss", jnp.dtype(jnp.float32), None, None) in SEEN
    assert float_dtypes(state.params) == float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["grad_norm"]))
    assert isinstance(state.opt_state, LossScaleState) == (name == "fp16")
    SEEN.clear()
    eval_step = make_eval_step(Probe(), loss_fn=probe_loss, precision=policy)
    eval_step(state, batch(), jnp.ones(BATCH, bool))
    assert ("model", compute, compute, compute) in SEEN
    assert ("loss", jnp.dtype(jnp.float32), None, None) in SEEN


def test_without_a_policy_nothing_is_cast():
    state = create_train_state(Probe(), OPTIMIZER, jax.random.key(0), batch()[0])
    SEEN.clear()
    make_train_step(Probe(), OPTIMIZER, loss_fn=probe_loss)(state, batch())
    f32 = jnp.dtype(jnp.float32)
    assert ("model", f32, f32, f32) in SEEN and not any(jnp.bfloat16 in entry for entry in SEEN)


@pytest.mark.parametrize("model", [
    pytest.param(CNN(features=(4, 8), hidden=16, num_classes=CLASSES, use_batch_norm=True,
                     dropout_rate=0.1), marks=pytest.mark.slow, id="cnn"),
    pytest.param(MLP(features=(16,), num_classes=CLASSES, use_batch_norm=True), id="mlp"),
])
def test_jaxtricks_models_follow_the_policy_and_keep_batch_norm_in_float32(model, getkey):
    policy = precision_policy("bf16")
    x = jnp.asarray(IMAGES[:8])
    variables = model.init(getkey(), x, train=False)
    params = policy.cast_to_compute(variables["params"])

    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, policy.cast_to_compute(x),
            train=True, rngs={"dropout": getkey()}, mutable=["batch_stats", "intermediates"])
        return logits.mean(), (logits, updates)

    grads, (logits, updates) = jax.grad(loss, has_aux=True)(params)
    assert logits.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(updates["intermediates"])} == {jnp.dtype(jnp.bfloat16)}
    assert float_dtypes(updates["batch_stats"]) == {jnp.dtype(jnp.float32)}
    assert float_dtypes(grads) == {jnp.dtype(jnp.bfloat16)}  # the policy's cast takes them back
    evaluation = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             policy.cast_to_compute(x), train=False)
    assert evaluation.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(evaluation)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_half_precision_training_tracks_float32(name):
    model = CNN(features=(8, 16), hidden=32, num_classes=CLASSES, use_batch_norm=True)
    arguments = {"epochs": 2, "batch_size": BATCH, "validation_data": (VAL_IMAGES, VAL_LABELS),
                 "progress": False, "runner": "loop"}
    reference, expected = fit(model, OPTIMIZER, IMAGES, LABELS, **arguments)
    state, history = fit(model, OPTIMIZER, IMAGES, LABELS, precision=name, **arguments)
    assert history.header["precision"] == str(precision_policy(name))
    assert float_dtypes(state.params) == {jnp.dtype(jnp.float32)}
    assert history["val_accuracy"][-1] >= expected["val_accuracy"][-1] - 0.05
    assert history["val_loss"][-1] == pytest.approx(expected["val_loss"][-1], rel=0.2)
    assert not np.array_equal(host(state.params)["Conv_0"]["kernel"],
                              host(reference.params)["Conv_0"]["kernel"])
    assert all(record.skipped_steps == 0 for record in history.epochs)
    test = evaluate(make_eval_step(model, precision=name), state, VAL_IMAGES, VAL_LABELS,
                    batch_size=64)
    assert test["accuracy"] == pytest.approx(history["val_accuracy"][-1])


# ---- the dynamic loss scale ------------------------------------------------------------------


def scaled(initial, interval=2000):
    return Precision(compute_dtype=jnp.float16,
                     loss_scale=DynamicScale(scale=initial, growth_interval=interval))


def test_the_scale_doubles_after_growth_interval_finite_steps():
    policy = scaled(4.0, interval=2)
    state = create_train_state(NET, OPTIMIZER, jax.random.key(0), batch()[0],
                               precision=policy)
    train_step = make_train_step(NET, OPTIMIZER, precision=policy)
    used = []
    for i in range(7):
        state, metrics = train_step(state, batch(i))
        used.append(float(metrics["loss_scale"]))
        assert int(metrics["overflow"]) == 0 and int(metrics["skipped"]) == 0
    assert used == [4.0, 4.0, 4.0, 8.0, 8.0, 8.0, 16.0]
    assert float(state.opt_state.loss_scale.scale) == 16.0
    assert state.opt_state.loss_scale.scale.dtype == jnp.float32
    assert state.opt_state.loss_scale.fin_steps.dtype == jnp.int32


@pytest.mark.parametrize("skip_nonfinite", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_float16_overflow_is_skipped_and_halves_the_scale(skip_nonfinite):
    policy = scaled(2.0**30)
    model = CNN(features=(4,), hidden=16, num_classes=CLASSES, use_batch_norm=True)
    state = create_train_state(model, OPTIMIZER, jax.random.key(0), batch()[0], precision=policy)
    train_step = make_train_step(model, OPTIMIZER, precision=policy, skip_nonfinite=skip_nonfinite,
                                 donate=False)
    new, metrics = train_step(state, batch())
    assert (int(metrics["overflow"]), int(metrics["skipped"])) == (1, 0)
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert int(new.step) == 1
    assert_trees_equal((new.params, new.model_state, new.opt_state.inner_state),
                       (state.params, state.model_state, state.opt_state.inner_state))
    assert float(new.opt_state.loss_scale.scale) == 2.0**29
    # It halves on each overflow until the scaled gradients fit, then trains.
    for i in range(1, 30):
        new, metrics = train_step(new, batch(i))
        if not int(metrics["overflow"]):
            break
    assert int(metrics["skipped"]) == 0 and float(metrics["loss_scale"]) < 2.0**20
    assert not np.array_equal(host(new.params)["head"]["kernel"],
                              host(state.params)["head"]["kernel"])


def test_a_poisoned_step_is_skipped_and_keeps_the_scale():
    policy = scaled(2.0**10)
    state = create_train_state(NET, OPTIMIZER, jax.random.key(0), batch()[0],
                               precision=policy)
    train_step = make_train_step(NET, OPTIMIZER, precision=policy, donate=False)
    x, y = batch()
    new, metrics = train_step(state, (x.at[0, 0, 0, 0].set(jnp.nan), y))
    assert (int(metrics["overflow"]), int(metrics["skipped"])) == (0, 1)
    assert_trees_equal((new.params, new.model_state, new.opt_state),
                       (state.params, state.model_state, state.opt_state))


@pytest.mark.slow
def test_fit_counts_overflows_apart_from_skipped_steps_and_still_learns():
    _, history = fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=3, batch_size=BATCH,
                     validation_data=(VAL_IMAGES, VAL_LABELS), progress=False,
                     precision=scaled(2.0**24), runner="loop")
    overflows = history["overflow_steps"]
    assert overflows[0] >= 2 and overflows[-1] == 0
    assert all(record.skipped_steps == 0 for record in history.epochs)
    assert history["loss_scale"][-1] < 2.0**24
    assert history["val_accuracy"][-1] > 0.9
    assert np.isfinite(history["grad_norm"]).all()  # the overflowed steps are not averaged


@pytest.mark.slow
def test_a_loss_scaled_run_continues_bit_identically():
    arguments = {"batch_size": BATCH, "progress": False, "precision": scaled(2.0**20, 3),
                 "runner": "loop"}
    expected, _ = fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=2, **arguments)
    state, _ = fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=1, **arguments)
    state, _ = fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=1, initial_state=state,
                   **arguments)
    assert_trees_equal(state, expected)


def test_a_state_without_its_loss_scale_is_refused():
    plain = create_train_state(NET, OPTIMIZER, jax.random.key(0), batch()[0])
    with pytest.raises(ValueError, match="LossScaleState"):
        make_train_step(NET, OPTIMIZER, precision="fp16")(plain, batch())
    with pytest.raises(ValueError, match="initial_state: its opt_state lacks a loss scale"):
        fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=1, batch_size=BATCH, progress=False,
            precision="fp16", initial_state=plain)
    scaled_state = create_train_state(NET, OPTIMIZER, jax.random.key(0), batch()[0],
                                      precision="fp16")
    with pytest.raises(ValueError, match="initial_state: its opt_state holds a loss scale"):
        fit(NET, OPTIMIZER, IMAGES, LABELS, epochs=1, batch_size=BATCH, progress=False,
            initial_state=scaled_state)


def test_a_loss_scaled_state_checkpoints_and_restores(tmp_path):
    state = create_train_state(NET, optax.sgd(0.1), jax.random.key(0), batch()[0],
                               precision=scaled(2.0**12))
    manager = jt.training.CheckpointManager(tmp_path)
    manager.save(0, state)
    like = create_train_state(NET, optax.sgd(0.1), jax.random.key(1), batch()[0],
                              precision=scaled(2.0**12))
    restored = manager.restore(like).tree
    assert isinstance(restored.opt_state, LossScaleState)
    assert_trees_equal(restored, state)


@pytest.mark.slow
def test_a_users_model_with_flax_batch_norm_trains_in_bfloat16():
    # Flax's BatchNorm subtracts its float32 mean from the bfloat16 input: a promotion that
    # JAX's default (standard) mode allows and these tests' strict mode refuses.
    with jax.numpy_dtype_promotion("standard"):
        state, history = fit(TinyNet(), OPTIMIZER, IMAGES, LABELS, epochs=2, batch_size=BATCH,
                             validation_data=(VAL_IMAGES, VAL_LABELS), progress=False,
                             precision="bf16", runner="loop")
    assert float_dtypes(state.params) == float_dtypes(state.model_state) == {
        jnp.dtype(jnp.float32)}
    assert history["val_accuracy"][-1] > 0.9
