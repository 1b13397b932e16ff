"""Label smoothing (lesson L5) through ``optax.losses``: ``fit``'s ``loss_fn`` is one call.

    python examples/label_smoothing.py [--quick]

The one-hot target of class c becomes ``(1 − α) e_c + α / 10`` (``jt.smoothed_cross_entropy``:
``optax.smooth_labels``, then ``optax.losses.softmax_cross_entropy``), so the network is never
pushed to infinite confidence. Accuracy stays the metric; the test set is only reported.
"""

import argparse

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load_splits
from jaxtricks.models import MLP
from jaxtricks.training import EvaluationHook, accuracy, fit

ALPHA = 0.1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, 2 epochs")
    args = parser.parse_args(argv)
    data = load_splits("mnist", train_examples=4000 if args.quick else None,
                       validation_examples=1000 if args.quick else 5000)
    _, history = fit(MLP(features=(512, 256)), jt.adam(1e-3), data.train_x, data.train_y,
                     validation_data=(data.val_x, data.val_y),
                     loss_fn=jt.smoothed_cross_entropy(ALPHA), metrics={"accuracy": accuracy},
                     epochs=2 if args.quick else 10, batch_size=128,
                     callbacks=[EvaluationHook("test", data.test_x, data.test_y)])
    print(f"label smoothing {ALPHA}: validation accuracy {history['val_accuracy'][-1]:.4f}, "
          f"test accuracy {history['test_accuracy'][-1]:.4f}")
    return {"val_accuracy": history["val_accuracy"], "loss": history["loss"]}


if __name__ == "__main__":
    configure_xla_cpu()
    configure_host_allocator()
    main()
