"""An MNIST autoencoder: ``fit`` with targets ``y = x`` and a mean-squared-error loss.

    python examples/autoencoder.py [--quick]

The encoder squeezes each 784-pixel image through 32 numbers; ``fit`` trains it with a loss of
our own (``loss_fn``), holds out validation images, and reports the reconstruction error.
"""

import argparse

import jax.numpy as jnp
import optax

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load_splits
from jaxtricks.models import MLP
from jaxtricks.training import fit


def mse(outputs, targets):
    """One mean squared error per image."""
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, 2 epochs")
    args = parser.parse_args(argv)
    data = load_splits("mnist", train_examples=4000 if args.quick else None,
                       validation_examples=1000 if args.quick else 5000)
    flat = data.train_x.reshape(len(data.train_x), -1)
    val = data.val_x.reshape(len(data.val_x), -1)
    model = MLP(features=(256, 32, 256), num_classes=784)  # its "logits" are the 784 pixels
    optimizer = optax.inject_hyperparams(jt.adam)(learning_rate=1e-3)
    _, history = fit(model, optimizer, flat, flat, validation_data=(val, val), loss_fn=mse,
                     metrics={"mae": lambda out, y: jnp.mean(jnp.abs(out - y), axis=-1)},
                     epochs=2 if args.quick else 10, batch_size=128)
    # Standardized pixels have unit variance: predicting their mean scores about 1.
    print(f"validation reconstruction MSE {history['val_loss'][-1]:.4f}")
    return {"val_loss": history["val_loss"], "val_mae": history["val_mae"]}


if __name__ == "__main__":
    configure_xla_cpu()
    configure_host_allocator()
    main()
