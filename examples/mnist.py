"""Train the CNN on real MNIST with the lesson's tricks, through the library's API.

    python examples/mnist.py            # about the same run as `./run train`

Each line is one trick: standardized inputs (L1), He initialization (L2), batch norm (L3),
dropout (L4), Adam on a one-cycle schedule (L6), the Flax MNIST example's CNN (L7).
"""

import numpy as np
import optax

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.data import load
from jaxtricks.models import CNN
from jaxtricks.training import EvaluationHook, MetricsFileHook, fit

configure_xla_cpu()  # XLA's fast CPU convolutions; must come before the first computation
configure_host_allocator()  # keep freed memory: no page faults on XLA's scratch buffer each step
EPOCHS, BATCH, VALIDATION = 4, 128, 5000

data = load("mnist")
images = jt.scale_to_unit(data.train_images[..., None])
labels = data.train_labels.astype(np.int32)
train, val = images[:-VALIDATION], images[-VALIDATION:]  # the last 5,000 for validation
test = jt.scale_to_unit(data.test_images[..., None])
stats = jt.fit_standardization(train)  # statistics of the training examples only
train, val, test = (jt.standardize(split, stats) for split in (train, val, test))

model = CNN(use_batch_norm=True, dropout_rate=0.1, kernel_init=jt.he_normal())
schedule = jt.one_cycle(EPOCHS * (train.shape[0] // BATCH), peak_value=2e-3)
optimizer = optax.inject_hyperparams(jt.adam)(learning_rate=schedule)  # records the rate
state, history = fit(
    model, optimizer, train, labels[:-VALIDATION],
    validation_data=(val, labels[-VALIDATION:]), epochs=EPOCHS, batch_size=BATCH,
    callbacks=[EvaluationHook("test", test, data.test_labels.astype(np.int32)),
               MetricsFileHook("runs/example/metrics.json")],
)
print(f"validation accuracy {history['val_accuracy'][-1]:.4f}, "
      f"test accuracy {history['test_accuracy'][-1]:.4f}")
