"""Tests for jaxtricks.training.state: initialization and the state as a checkpointable pytree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_toys import TinyNet

from jaxtricks.training.state import TrainState, as_optimizer, create_train_state
from jaxtricks.training.steps import make_train_step

OPTIMIZER = optax.sgd(0.1, momentum=0.9)
SAMPLE = jnp.zeros((4, 8, 8, 1), jnp.float32)


def test_fresh_state_fields(getkey, allclose):
    state = create_train_state(TinyNet(), OPTIMIZER, getkey(), SAMPLE)
    assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
    assert set(state.params) == {"Dense_0", "BatchNorm_0", "Dense_1"}
    assert set(state.model_state) == {"batch_stats"}
    assert set(state.model_state["batch_stats"]["BatchNorm_0"]) == {"mean", "var"}
    allclose(state.opt_state, OPTIMIZER.init(state.params))
    assert jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)


def test_no_batch_norm_gives_empty_model_state(getkey):
    state = create_train_state(TinyNet(batch_norm=False), OPTIMIZER, getkey(), SAMPLE)
    assert state.model_state == {}
    assert "BatchNorm_0" not in state.params


def test_same_key_same_state_other_key_other_params(getkey, allclose):
    key = getkey()
    first = create_train_state(TinyNet(), OPTIMIZER, key, SAMPLE)
    again = create_train_state(TinyNet(), OPTIMIZER, key, SAMPLE)
    other = create_train_state(TinyNet(), OPTIMIZER, getkey(), SAMPLE)
    allclose(first.params, again.params, rtol=0)
    assert jnp.array_equal(jax.random.key_data(first.rng), jax.random.key_data(again.rng))
    kernel = first.params["Dense_0"]["kernel"]
    assert not jnp.array_equal(kernel, other.params["Dense_0"]["kernel"])
    # The dropout base key is not the init key itself, nor the key of the parameters.
    assert not jnp.array_equal(jax.random.key_data(first.rng), jax.random.key_data(key))


def test_state_is_a_pytree_of_arrays_only(getkey):
    state = create_train_state(TinyNet(), OPTIMIZER, getkey(), SAMPLE)
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert isinstance(jax.tree.unflatten(treedef, leaves), TrainState)
    # Passing through jit intact is what donation and sharding rely on.
    passed = jax.jit(lambda s: s)(state)
    assert jax.tree.structure(passed) == treedef


def test_every_leaf_has_its_own_buffer(getkey):
    # An optimizer whose state is the parameters themselves must not alias their buffers,
    # or donating the state would donate one buffer twice.
    keep_params = optax.GradientTransformation(lambda params: params, lambda u, s, p=None: (u, s))
    state = create_train_state(TinyNet(), keep_params, getkey(), SAMPLE)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)
                if not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
    assert len(pointers) == len(set(pointers))
    train_step = make_train_step(TinyNet(), keep_params)
    state, _ = train_step(state, (SAMPLE, jnp.zeros((4,), jnp.int32)))
    assert int(state.step) == 1


def test_checkpoint_round_trip(getkey, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    state = create_train_state(TinyNet(), OPTIMIZER, getkey(), SAMPLE)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", state)
    assert isinstance(restored, TrainState)
    for saved, loaded in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        if jnp.issubdtype(saved.dtype, jax.dtypes.prng_key):
            saved, loaded = jax.random.key_data(saved), jax.random.key_data(loaded)
        assert saved.dtype == loaded.dtype
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))


class _Counting(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        calls = self.variable("counters", "calls", lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            calls.value += 1
        return nn.Dense(2)(x.reshape((x.shape[0], -1)))


def test_other_collections_are_model_state_and_train(getkey):
    state = create_train_state(_Counting(), OPTIMIZER, getkey(), SAMPLE)
    assert set(state.model_state) == {"counters"}
    train_step = make_train_step(_Counting(), OPTIMIZER)
    for _ in range(3):
        state, _ = train_step(state, (SAMPLE, jnp.zeros((4,), jnp.int32)))
    assert int(state.model_state["counters"]["calls"]) == 3


def test_nnx_model_state_is_a_copy(getkey):
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(64, 8, rngs=nnx.Rngs(0)), nnx.BatchNorm(8, rngs=nnx.Rngs(0)))
    state = create_train_state(model, OPTIMIZER, getkey(), SAMPLE.reshape(4, -1))
    assert set(state.params["layers"]) == {0, 1}
    assert "mean" in state.model_state["layers"][1]
    # Donating the state must leave the module's own arrays alive.
    jax.jit(lambda s: s, donate_argnums=0)(state)
    assert float(jnp.sum(model.layers[1].mean[...])) == 0.0


def test_as_optimizer_takes_multi_steps_and_refuses_others():
    multi = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2)
    assert isinstance(as_optimizer(multi), optax.GradientTransformation)
    with pytest.raises(ValueError, match=r"optimizer must be an optax\.GradientTransformation"):
        as_optimizer(optax.sgd)


def test_bad_model_and_optimizer_are_refused(getkey):
    with pytest.raises(ValueError, match="model"):
        create_train_state(lambda x: x, OPTIMIZER, getkey(), SAMPLE)
    with pytest.raises(ValueError, match="optimizer"):
        create_train_state(TinyNet(), optax.sgd, getkey(), SAMPLE)
