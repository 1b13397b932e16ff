"""jaxtricks optimizers drive a ``flax.nnx`` model with BatchNorm and Dropout.

The Linen models are jaxtricks' own; this shows the same optimizers (Optax transforms) work
through ``nnx.Optimizer`` too, with nnx's train/eval switch handling batch statistics and
dropout.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtricks as jt


class SmallNet(nnx.Module):
    """Dense → BatchNorm → ReLU → Dropout → Dense, the lesson's order."""

    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(16, 32, use_bias=False, kernel_init=jt.he_normal(), rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(32, 2, kernel_init=jt.glorot_normal(), rngs=rngs)

    def __call__(self, x):
        return self.head(self.dropout(nnx.relu(self.norm(self.dense(x)))))


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [lambda: jt.adam(1e-2), lambda: jt.momentum(0.05, 0.9, form="lesson"),
     lambda: optax.chain(jt.clip_by_global_norm(1.0), jt.adamw(1e-2, weight_decay=1e-4))],
    ids=["adam", "momentum_lesson", "clipped_adamw"],
)
def test_jaxtricks_optimizers_train_an_nnx_model_with_batch_norm_and_dropout(build):
    x, y = _data()
    model = SmallNet(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, build(), wrt=nnx.Param)

    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    mean_before = np.asarray(model.norm.mean[...]).copy()
    losses = [float(train_step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    # batch statistics moved during training
    assert not np.allclose(np.asarray(model.norm.mean[...]), mean_before)

    model.eval()
    stats = np.asarray(model.norm.mean[...]).copy()
    first, second = np.asarray(model(x)), np.asarray(model(x))
    np.testing.assert_array_equal(first, second)  # no dropout in eval
    np.testing.assert_array_equal(np.asarray(model.norm.mean[...]), stats)  # stats frozen
    accuracy = float(jnp.mean(jnp.argmax(model(x), -1) == y))
    assert accuracy > 0.9


def test_dropout_in_nnx_train_mode_changes_outputs_between_calls():
    x, _ = _data()
    model = SmallNet(nnx.Rngs(params=0, dropout=1))
    model.train()
    assert not np.allclose(np.asarray(model(x)), np.asarray(model(x)))
