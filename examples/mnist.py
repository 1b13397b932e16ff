"""Train the CNN on real MNIST with the lesson's tricks, through the library's API.

    python examples/mnist.py            # about the same run as `./run train`

Each line is one trick: standardized inputs (L1), He initialization (L2), batch norm (L3),
dropout (L4), Adam on a one-cycle schedule (L6), the Flax MNIST example's CNN (L7).
"""

import numpy as np

import jaxtricks as jt
from jaxtricks.data import load
from jaxtricks.models import CNN
from jaxtricks.training import configure_host_allocator, configure_xla_cpu, fit

configure_xla_cpu()  # XLA's fast CPU convolutions; must come before the first computation
configure_host_allocator()  # keep freed memory: no page faults on XLA's scratch buffer each step
EPOCHS, BATCH = 4, 128

data = load("mnist")
train = jt.scale_to_unit(data.train_images[..., None])
test = jt.scale_to_unit(data.test_images[..., None])
stats = jt.fit_standardization(train)  # statistics of the training split only
train, test = jt.standardize(train, stats), jt.standardize(test, stats)

model = CNN(use_batch_norm=True, dropout_rate=0.1, kernel_init=jt.he_normal())
schedule = jt.one_cycle(EPOCHS * (train.shape[0] // BATCH), peak_value=2e-3)
state, history = fit(
    model, jt.adam(schedule), train, data.train_labels.astype(np.int32),
    test, data.test_labels.astype(np.int32),
    epochs=EPOCHS, batch_size=BATCH, learning_rate=schedule, out_dir="runs/example",
)
print(f"test accuracy {history['epochs'][-1]['test_accuracy']:.4f}")
