"""Gradient accumulation with ``optax.MultiSteps``: four batches of 32 make one step of 128.

    python examples/gradient_accumulation.py [--quick]

``MultiSteps`` averages the gradients of ``every_k_schedule`` calls and applies the inner
optimizer once per k; ``fit`` takes the ``MultiSteps`` object as it is.
"""

import argparse

import optax

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load_splits
from jaxtricks.models import CNN
from jaxtricks.training import fit

ACCUMULATE = 4


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, 1 epoch")
    args = parser.parse_args(argv)
    data = load_splits("mnist", train_examples=4000 if args.quick else None,
                       validation_examples=1000 if args.quick else 5000)
    optimizer = optax.MultiSteps(jt.adam(1e-3), every_k_schedule=ACCUMULATE)
    state, history = fit(CNN(use_batch_norm=False), optimizer, data.train_x, data.train_y,
                         validation_data=(data.val_x, data.val_y),
                         epochs=1 if args.quick else 3, batch_size=128 // ACCUMULATE)
    updates = int(state.opt_state.gradient_step)
    print(f"{int(state.step)} batches of {128 // ACCUMULATE}, {updates} optimizer updates; "
          f"validation accuracy {history['val_accuracy'][-1]:.4f}")
    return {"steps": int(state.step), "updates": updates,
            "val_accuracy": history["val_accuracy"]}


if __name__ == "__main__":
    configure_xla_cpu()
    configure_host_allocator()
    main()
