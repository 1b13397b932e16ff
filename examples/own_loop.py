"""Your own training loop from jaxtricks' public pieces, without ``fit``.

    python examples/own_loop.py [--quick]

The loop between the marks is the whole of it: a state, a compiled train step and eval step
for any model and loss, an epoch's batch order, and a line per epoch.
"""

import argparse

import jax

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load_splits
from jaxtricks.models import CNN
from jaxtricks.training import (
    create_train_state,
    epoch_indices,
    evaluate,
    make_eval_step,
    make_train_step,
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, 1 epoch")
    args = parser.parse_args(argv)
    data = load_splits("mnist", train_examples=4000 if args.quick else None,
                       validation_examples=1000 if args.quick else 5000)
    epochs, batch_size, accuracies = (1 if args.quick else 3), 128, []
    # --- the loop ---
    model, optimizer = CNN(use_batch_norm=True, dropout_rate=0.1), jt.adam(1e-3)
    init_key, data_key = jax.random.split(jax.random.key(0))
    state = create_train_state(model, optimizer, init_key, data.train_x[:1])
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    x, y = jax.device_put((data.train_x, data.train_y))
    for epoch in range(1, epochs + 1):
        for rows in epoch_indices(data_key, epoch, len(x), batch_size):
            state, metrics = train_step(state, (x[rows], y[rows]))
        scores = evaluate(eval_step, state, data.val_x, data.val_y, batch_size=1000)
        accuracies.append(scores["accuracy"])
        print(f"epoch {epoch}: last batch loss {float(metrics['loss']):.4f}, "
              f"validation accuracy {scores['accuracy']:.4f}")
    # --- end of the loop ---
    return {"val_accuracy": accuracies, "steps": int(state.step)}


if __name__ == "__main__":
    configure_xla_cpu()
    configure_host_allocator()
    main()
