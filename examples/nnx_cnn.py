"""A Flax NNX CNN trained by ``fit``: batch norm and dropout live in the module.

    python examples/nnx_cnn.py [--quick]

``fit`` splits the NNX module into parameters and state (batch statistics, the dropout RNG
stream), trains them as one pure state, and writes the trained values back into the module.
"""

import argparse

import optax
from flax import nnx

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load_splits
from jaxtricks.training import EvaluationHook, fit


class CNN(nnx.Module):
    """conv → BN → ReLU → pool, twice, then a dense layer, dropout and the head."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.norm1(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.avg_pool(nnx.relu(self.norm2(self.conv2(x))), (2, 2), (2, 2))
        x = nnx.relu(self.dense(x.reshape((x.shape[0], -1))))
        return self.head(self.dropout(x))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, 1 epoch")
    args = parser.parse_args(argv)
    data = load_splits("mnist", train_examples=4000 if args.quick else None,
                       validation_examples=1000 if args.quick else 5000)
    model = CNN(nnx.Rngs(0))
    epochs = 1 if args.quick else 3
    schedule = jt.one_cycle(epochs * (len(data.train_x) // 128), peak_value=2e-3)
    optimizer = optax.inject_hyperparams(jt.adam)(learning_rate=schedule)
    _, history = fit(model, optimizer, data.train_x, data.train_y,
                     validation_data=(data.val_x, data.val_y), epochs=epochs, batch_size=128,
                     callbacks=[EvaluationHook("test", data.test_x, data.test_y)])
    logits = model(data.test_x[:8])  # the module holds the trained weights, in eval() mode
    print(f"test accuracy {history['test_accuracy'][-1]:.4f}; first test predictions "
          f"{logits.argmax(-1).tolist()}, labels {data.test_y[:8].tolist()}")
    return {"val_accuracy": history["val_accuracy"], "test_accuracy": history["test_accuracy"]}


if __name__ == "__main__":
    configure_xla_cpu()
    configure_host_allocator()
    main()
