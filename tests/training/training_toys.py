"""A tiny Linen classifier, a separable toy problem and bit-exact tree comparison, shared by the
training tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CLASSES = 3


class TinyNet(nn.Module):
    """Dense → optional BatchNorm → ReLU → optional Dropout → Dense, on (N, 8, 8, 1) inputs."""

    batch_norm: bool = True
    dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(CLASSES)(x)


def toy_problem(seed: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 images (N, 8, 8, 1) whose class is a fixed random pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).normal(size=(CLASSES, 8, 8, 1))
    labels = rng.integers(0, CLASSES, num_examples).astype(np.int32)
    images = patterns[labels] + 0.5 * rng.normal(size=(num_examples, 8, 8, 1))
    return images.astype(np.float32), labels


def host(tree):
    """The tree as NumPy arrays, PRNG keys as their key data: comparable bit for bit."""
    def to_host(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return jax.tree.map(to_host, tree)


def assert_trees_equal(actual, expected):
    """The two trees have one structure and bit-identical leaves."""
    actual_leaves, actual_def = jax.tree.flatten(host(actual))
    expected_leaves, expected_def = jax.tree.flatten(host(expected))
    assert actual_def == expected_def
    for a, e in zip(actual_leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(a, e)
