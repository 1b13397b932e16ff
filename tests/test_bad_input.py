"""Bad input across the public API: each gives a clear error, never a silent wrong result.

One table of (id, call, exception type, message regex). Every call must raise that type (or a
subclass) from jaxtricks' own checks or the standard library, not from deep inside JAX, Flax or
Optax, with a message matching the regex (the argument and what was expected); a command-line
call must exit with status 2 and say why on stderr. Each call runs in an empty working
directory, which must still hold no file afterwards: a failed call writes nothing half-done.
Rows marked as known gaps are strict xfails: they fail today and must be turned into plain rows
when fixed.
"""

import gzip
import hashlib
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtricks as jt
from jaxtricks.cli.main import main as cli_main
from jaxtricks.data import IdxFormatError, check_images_labels, datasets, read_idx, write_idx
from jaxtricks.data.datasets import DatasetNotFoundError
from jaxtricks.data.idx import encode_idx
from jaxtricks.files import write_json
from jaxtricks.models import CNN, MLP, ResNet
from jaxtricks.training import (
    CheckpointHook,
    EarlyStoppingHook,
    History,
    MetricsFileHook,
    create_train_state,
    evaluate,
    fit,
    make_eval_step,
    make_train_step,
)

# Packages whose internals must never be where a bad input is first noticed.
_THIRD_PARTY = ("jax", "jaxlib", "flax", "optax")


class Env(NamedTuple):
    """What a case may use: an empty working directory (the cwd) and a place for inputs."""

    work: Path  # must hold no file after the failed call
    inputs: Path  # data folders and other files the call reads


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cwd, and no way for the data loader to reach the user's files or the network."""
    work, inputs, bin_dir = tmp_path / "work", tmp_path / "inputs", tmp_path / "bin"
    for folder in (work, inputs, bin_dir):
        folder.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(work / "xdg"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": (), "fashion_mnist": ()})
    monkeypatch.setattr(datasets, "SYSTEM_PATHS", {"mnist": (), "fashion_mnist": ()})
    monkeypatch.setitem(datasets.SHA256, "mnist", _FAKE_TABLE)
    return Env(work, inputs)


# A small MNIST-shaped dataset whose checksums are patched into the loader's table.
_rng = np.random.default_rng(0)
_FAKE_ARRAYS = {
    "train-images-idx3-ubyte": _rng.integers(0, 256, (32, 28, 28), dtype=np.uint8),
    "train-labels-idx1-ubyte": _rng.integers(0, 10, 32, dtype=np.uint8),
    "t10k-images-idx3-ubyte": _rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": _rng.integers(0, 10, 8, dtype=np.uint8),
}
_FAKE_CONTENT = {file: encode_idx(array) for file, array in _FAKE_ARRAYS.items()}
_FAKE_TABLE = {file: hashlib.sha256(data).hexdigest() for file, data in _FAKE_CONTENT.items()}


def _data_dir(env, *, skip=(), replace=None):
    """Writes the fake dataset into ``env.inputs/data``, ``replace`` mapping files to bytes."""
    folder = env.inputs / "data"
    folder.mkdir(exist_ok=True)
    for file, data in _FAKE_CONTENT.items():
        if file not in skip:
            (folder / file).write_bytes((replace or {}).get(file, data))
    return folder


def _load(env, **kwargs):
    """``data.load`` on the fake data folder, offline, with the cache in the working dir."""
    with warnings.catch_warnings():
        # The loader also warns that the data folder is unusable; the error is what is checked.
        warnings.simplefilter("ignore", UserWarning)
        return jt.data.load(
            "mnist", _data_dir(env, **kwargs), mirrors=(), npm=None, cache_dir=env.work / "cache"
        )


def _load_from_a_file(env):
    """``data.load`` given a file where a data folder belongs."""
    (env.inputs / "not-a-folder").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return jt.data.load("mnist", env.inputs / "not-a-folder", mirrors=(), npm=None,
                            cache_dir=env.work / "cache")


def _cli(env, *flags, data=False):
    """``jaxtricks train`` with ``flags``, output under the working dir; ``data``: a valid
    data folder of 32 training images, 8 of them held out, so the flags checked after loading
    are reached. A failure exits (``SystemExit``) with the command's status."""
    data_flags = ["--data-dir", str(_data_dir(env)), "--validation-examples", "8"] if data else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        status = cli_main(["train", *data_flags, "--out", str(env.work / "run"), "--no-progress",
                           "--no-plot", "--runner", "loop", *flags])
    if status:
        raise SystemExit(status)
    return status


PARAMS = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
GRADS_MISSING_LEAF = {"w": jnp.ones((3, 2))}
GRADS_WRONG_SHAPE = {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}
INT_PARAMS = {"w": jnp.zeros((3, 2), jnp.int32)}


def _update(tx, grads, params=PARAMS):
    """One optimizer update of ``params`` by ``grads``."""
    return tx.update(grads, tx.init(params), params)


def _update_with_int_grads(tx):
    return _update(tx, {"w": jnp.ones((3, 2), jnp.int32)}, {"w": jnp.zeros((3, 2))})


def _images(n=8, shape=(28, 28, 1)):
    return np.ones((n, *shape), np.float32)


def _labels(n=8, value=0):
    return np.full(n, value, np.int32)


TINY_MLP = MLP(features=(4,))
TINY_CNN = CNN(features=(2,), hidden=4, use_batch_norm=True)


def _fit(images=None, labels=None, val_images=None, val_labels=None, *, model=TINY_MLP,
         callbacks=None, **kwargs):
    """``fit`` with a small valid set-up in which the given pieces are replaced; a metrics file
    is written into the working directory after each epoch, so a failure must prevent it."""
    images = _images() if images is None else images
    labels = _labels() if labels is None else labels
    arguments = {"epochs": 1, "batch_size": 4, "progress": False, "runner": "loop",
                 "validation_data": (images if val_images is None else val_images,
                                     labels if val_labels is None else val_labels), **kwargs}
    if callbacks is None:
        callbacks = [MetricsFileHook(Path("run") / "metrics.json")]
    return fit(model, jt.sgd(0.1), images, labels, callbacks=callbacks, **arguments)


def _evaluate(images=None, labels=None, batch_size=4):
    images = _images() if images is None else images
    labels = _labels() if labels is None else labels
    state = create_train_state(TINY_MLP, jt.sgd(0.1), jax.random.key(0), _images(1))
    return evaluate(make_eval_step(TINY_MLP), state, images, labels, batch_size=batch_size)


def _fit_from_mid_epoch(env):
    """``fit`` continuing a state one step into an epoch of 2 steps."""
    del env
    state = create_train_state(TINY_MLP, jt.sgd(0.1), jax.random.key(0), _images(1))
    return _fit(initial_state=state._replace(step=state.step + 1))


def _corrupt_magic(data):
    return b"\x08\x03" + data[2:]


def _one_bit_flipped(data):
    return data[:-1] + bytes([data[-1] ^ 1])


NONFINITE = float("nan"), float("inf")
INT_PARAMS_MESSAGE = r"params must hold floating-point \(real or complex\) arrays, got dtype int32"
STRUCTURE = "different pytree structures"
SHAPE = r"differ in shape at \['w'\]: \(2, 3\) vs \(3, 2\)"
SCALAR_SCHEDULE = r"schedule must return a scalar, got shape \(3,\)"
IMAGE_SHAPE = r"expects a floating batch of shape \(N, H, W, C\).*got shape"
MISSING = "t10k-labels-idx1-ubyte\\[\\.gz\\] missing"

# (id, call(env), exception type, regex the message must match)
CASES = [
    # Gradients that do not match the parameters.
    ("sgd-grads-missing-leaf", lambda _: _update(jt.sgd(0.1), GRADS_MISSING_LEAF),
     ValueError, f"updates and params have {STRUCTURE}"),
    ("sgd-grads-wrong-shape", lambda _: _update(jt.sgd(0.1), GRADS_WRONG_SHAPE),
     ValueError, f"updates and params {SHAPE}"),
    ("momentum-grads-missing-leaf", lambda _: _update(jt.momentum(0.1), GRADS_MISSING_LEAF),
     ValueError, f"updates and the momentum trace have {STRUCTURE}"),
    ("momentum-lesson-grads-wrong-shape",
     lambda _: _update(jt.momentum(0.1, form="lesson"), GRADS_WRONG_SHAPE),
     ValueError, f"updates and the velocity {SHAPE}"),
    ("nesterov-grads-wrong-shape", lambda _: _update(jt.nesterov(0.1), GRADS_WRONG_SHAPE),
     ValueError, f"updates and the momentum trace {SHAPE}"),
    ("adagrad-grads-missing-leaf", lambda _: _update(jt.adagrad(0.1), GRADS_MISSING_LEAF),
     ValueError, f"updates and the Adagrad accumulator have {STRUCTURE}"),
    ("rmsprop-grads-wrong-shape", lambda _: _update(jt.rmsprop(0.1), GRADS_WRONG_SHAPE),
     ValueError, f"updates and the RMSProp accumulator {SHAPE}"),
    ("adam-grads-missing-leaf", lambda _: _update(jt.adam(0.1), GRADS_MISSING_LEAF),
     ValueError, f"updates and the Adam moments have {STRUCTURE}"),
    ("adam-grads-wrong-shape", lambda _: _update(jt.adam(0.1), GRADS_WRONG_SHAPE),
     ValueError, f"updates and the Adam moments {SHAPE}"),
    ("adamw-grads-wrong-shape-jit",
     lambda _: jax.jit(_update, static_argnums=0)(jt.adamw(0.1), GRADS_WRONG_SHAPE),
     ValueError, f"updates and the Adam moments {SHAPE}"),
    ("skip-nonfinite-adam-grads-missing-leaf",
     lambda _: _update(jt.skip_nonfinite(jt.adam(0.1)), GRADS_MISSING_LEAF),
     ValueError, f"updates and the Adam moments have {STRUCTURE}"),
    # Integer parameters or gradients.
    ("sgd-int-params", lambda _: jt.sgd(0.1).init(INT_PARAMS),
     TypeError, INT_PARAMS_MESSAGE + r" at \['w'\]"),
    ("momentum-int-params", lambda _: jt.momentum(0.1).init(INT_PARAMS),
     TypeError, INT_PARAMS_MESSAGE),
    ("adam-int-params", lambda _: jt.adam(0.1).init(INT_PARAMS),
     TypeError, INT_PARAMS_MESSAGE),
    ("rmsprop-int-params", lambda _: jt.rmsprop(0.1).init(INT_PARAMS),
     TypeError, INT_PARAMS_MESSAGE),
    ("sgd-int-grads", lambda _: _update_with_int_grads(jt.sgd(0.1)),
     TypeError, "updates" + INT_PARAMS_MESSAGE.removeprefix("params") + r" at \['w'\]"),
    ("adam-int-grads", lambda _: _update_with_int_grads(jt.adam(0.1)),
     TypeError, "updates" + INT_PARAMS_MESSAGE.removeprefix("params")),
    ("momentum-lesson-int-grads",
     lambda _: _update_with_int_grads(jt.momentum(0.1, form="lesson")),
     TypeError, "updates" + INT_PARAMS_MESSAGE.removeprefix("params")),
    # Learning rates.
    ("sgd-negative-lr", lambda _: jt.sgd(-0.1),
     ValueError, r"learning_rate must be in \[0\.0, inf\), got -0\.1"),
    ("adam-nan-lr", lambda _: jt.adam(NONFINITE[0]),
     ValueError, r"learning_rate must be in \[0\.0, inf\), got nan"),
    ("momentum-inf-lr", lambda _: jt.momentum(NONFINITE[1]),
     ValueError, r"learning_rate must be in \[0\.0, inf\), got inf"),
    ("rmsprop-string-lr", lambda _: jt.rmsprop("0.1"),
     ValueError, r"learning_rate: expected a real number, got dtype <U3"),
    ("adagrad-array-lr", lambda _: jt.adagrad(np.array([0.1, 0.2])),
     ValueError, r"learning_rate: expected a scalar, got an array of shape \(2,\)"),
    ("sgd-bool-lr", lambda _: jt.sgd(True),
     ValueError, r"learning_rate: expected a number, got the bool True"),
    # Momentum and betas.
    ("momentum-above-1", lambda _: jt.momentum(0.1, 1.5),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got 1\.5"),
    ("nesterov-negative-momentum", lambda _: jt.nesterov(0.1, -0.1),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got -0\.1"),
    ("rmsprop-momentum-above-1", lambda _: jt.rmsprop(0.1, momentum=2.0),
     ValueError, r"momentum must be in \[0\.0, 1\.0\], got 2\.0"),
    ("rmsprop-decay-1", lambda _: jt.rmsprop(0.1, decay=1.0),
     ValueError, r"decay must be in \[0\.0, 1\.0\), got 1\.0"),
    ("adam-b1-1", lambda _: jt.adam(0.1, b1=1.0),
     ValueError, r"b1 must be in \[0\.0, 1\.0\), got 1\.0"),
    ("adamw-b2-nan", lambda _: jt.adamw(0.1, b2=NONFINITE[0]),
     ValueError, r"b2 must be in \[0\.0, 1\.0\), got nan"),
    ("adam-negative-eps", lambda _: jt.adam(0.1, eps=-1e-8),
     ValueError, r"eps must be in \(0\.0, inf\), got -1e-08"),
    # Dropout rates, one per model.
    ("mlp-dropout-negative", lambda _: MLP(dropout_rate=-0.1),
     ValueError, r"dropout_rate must be in \[0\.0, 1\.0\), got -0\.1"),
    ("cnn-dropout-1", lambda _: CNN(dropout_rate=1.0),
     ValueError, r"dropout_rate must be in \[0\.0, 1\.0\), got 1\.0"),
    ("resnet-dropout-nan", lambda _: ResNet(dropout_rate=NONFINITE[0]),
     ValueError, r"dropout_rate must be in \[0\.0, 1\.0\), got nan"),
    # Unknown names and mode strings.
    ("unknown-optimizer", lambda _: jt.get_optimizer("adamm", 0.1),
     ValueError, r"name must be one of \('sgd', .*'adam'.*\), got 'adamm'"),
    ("optimizer-unknown-option", lambda _: jt.get_optimizer("sgd", 0.1, beta=0.9),
     TypeError, r"unexpected keyword argument 'beta'"),
    ("unknown-initializer", lambda _: jt.get_initializer("glorrot"),
     ValueError, r"name must be one of \('gaussian', .*'glorot_normal'.*\).*got 'glorrot'"),
    ("initializer-name-not-string", lambda _: jt.get_initializer(None),
     ValueError, r"name must be a string, one of .*got None"),
    ("variance-scaling-unknown-mode", lambda _: jt.variance_scaling(1.0, "fan_sideways", "normal"),
     ValueError,
     r"mode must be one of \('fan_in', 'fan_out', 'fan_avg', 'fan_geo_avg'\), got 'fan_sideways'"),
    ("variance-scaling-unknown-distribution",
     lambda _: jt.variance_scaling(1.0, "fan_in", "cauchy"),
     ValueError, r"distribution must be one of \(.*'uniform'\), got 'cauchy'"),
    ("momentum-unknown-form", lambda _: jt.momentum(0.1, form="nesterov"),
     ValueError, r"form must be one of \('heavy_ball', 'lesson'\), got 'nesterov'"),
    ("fit-unknown-runner", lambda _: _fit(runner="fast"),
     ValueError, r"runner must be one of \('auto', 'loop', 'scan'\) or None, got 'fast'"),
    ("load-unknown-dataset", lambda _: jt.data.load("cifar10"),
     ValueError, r"name must be one of \('mnist', 'fashion_mnist'\), got 'cifar10'"),
    # Empty batches and splits, counts and label ranges.
    ("fit-batch-size-0", lambda _: _fit(batch_size=0),
     ValueError, r"batch_size must be an int in \[1, 8\], got 0"),
    ("fit-batch-size-above-examples", lambda _: _fit(batch_size=9),
     ValueError, r"batch_size must be an int in \[1, 8\], got 9"),
    ("fit-empty-training-set", lambda _: _fit(_images(0), _labels(0), _images(), _labels()),
     ValueError, r"x must have a leading axis of N >= 1 examples, got shape \(0, 28, 28, 1\)"),
    ("fit-empty-validation-set",
     lambda _: _fit(val_images=_images(0), val_labels=_labels(0)),
     ValueError, r"validation_data\[0\] must have a leading axis of N >= 1 examples"),
    ("fit-zero-epochs", lambda _: _fit(epochs=0),
     ValueError, r"epochs must be an int >= 1, got 0"),
    ("evaluate-batch-size-0", lambda _: _evaluate(batch_size=0),
     ValueError, r"batch_size must be an int >= 1, got 0"),
    ("evaluate-empty-split", lambda _: _evaluate(_images(0), _labels(0)),
     ValueError, r"x must have a leading axis of N >= 1 examples"),
    ("fit-images-labels-count-mismatch", lambda _: _fit(labels=_labels(5), val_labels=_labels()),
     ValueError, r"y has 5 examples but x has 8"),
    ("evaluate-images-labels-count-mismatch", lambda _: _evaluate(labels=_labels(3)),
     ValueError, r"y has 3 examples but x has 8"),
    ("idx-images-labels-count-mismatch",
     lambda _: check_images_labels(np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8)),
     IdxFormatError, r"images \(4 images\) and labels \(3 labels\) differ in count"),
    ("fit-train-labels-out-of-range", lambda _: _fit(labels=_labels(value=10)),
     ValueError, r"^y must hold integer labels in \[0, 9\] for outputs of 10 classes, got values "
                 r"in \[10, 10\]"),
    ("fit-validation-labels-negative", lambda _: _fit(val_labels=_labels(value=-1)),
     ValueError, r"validation y must hold integer labels in \[0, 9\] .* got values in \[-1, -1\]"),
    ("fit-float-labels", lambda _: _fit(labels=_labels().astype(np.float32)),
     ValueError, r"y must hold integer labels for the default loss .* got dtype float32; pass "
                 r"loss_fn"),
    ("idx-labels-out-of-range",
     lambda _: check_images_labels(np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8)),
     IdxFormatError, r"labels: 1 labels are not in \[0, 10\), e\.g\. label 10 at index 1"),
    ("evaluate-labels-out-of-range", lambda _: _evaluate(labels=_labels(value=10)),
     ValueError, r"y must hold integer labels in \[0, 9\]"),
    ("fit-integer-images", lambda _: _fit(_images().astype(np.uint8)),
     ValueError, r"model: fit initializes it .* MLP expects a floating batch .* dtype uint8"),
    # Image shapes the convolutional models cannot take.
    ("cnn-images-without-channel-axis",
     lambda _: TINY_CNN.init(jax.random.key(0), jnp.ones((2, 28, 28)), train=False),
     ValueError, f"CNN {IMAGE_SHAPE} \\(2, 28, 28\\)"),
    ("resnet-flat-images",
     lambda _: ResNet(width=4).init(jax.random.key(0), jnp.ones((2, 784)), train=False),
     ValueError, f"ResNet {IMAGE_SHAPE} \\(2, 784\\)"),
    ("cnn-uint8-images",
     lambda _: TINY_CNN.init(jax.random.key(0), jnp.ones((2, 28, 28, 1), jnp.uint8),
                             train=False),
     ValueError, f"CNN {IMAGE_SHAPE} .* dtype uint8"),
    ("fit-cnn-images-without-channel-axis",
     lambda _: _fit(_images(shape=(28, 28)), model=TINY_CNN),
     ValueError, f"CNN {IMAGE_SHAPE} \\(1, 28, 28\\)"),
    # Data folders with missing, corrupt or truncated files; the cache must stay empty.
    ("load-missing-file", lambda env: _load(env, skip=("t10k-labels-idx1-ubyte",)),
     DatasetNotFoundError, f"could not find a verified copy of mnist.*{MISSING}"),
    ("load-corrupt-file",
     lambda env: _load(env, replace={"train-images-idx3-ubyte": _corrupt_magic(
         _FAKE_CONTENT["train-images-idx3-ubyte"])}),
     DatasetNotFoundError, r"rejected .*train-images-idx3-ubyte: SHA-256 \w+ does not match"),
    ("load-file-with-one-bit-flipped",
     lambda env: _load(env, replace={"train-labels-idx1-ubyte": _one_bit_flipped(
         _FAKE_CONTENT["train-labels-idx1-ubyte"])}),
     DatasetNotFoundError, r"train-labels-idx1-ubyte: SHA-256 \w+ does not match"),
    ("load-truncated-gzip",
     lambda env: _load(env, replace={"t10k-images-idx3-ubyte": gzip.compress(
         _FAKE_CONTENT["t10k-images-idx3-ubyte"])[:-20]}),
     DatasetNotFoundError, r"t10k-images-idx3-ubyte: corrupt gzip stream"),
    ("load-data-dir-is-a-file", _load_from_a_file,
     DatasetNotFoundError, r"data_dir .*not-a-folder: is not a directory"),
    ("read-idx-truncated",
     lambda env: read_idx(_data_dir(env, replace={"train-images-idx3-ubyte": _FAKE_CONTENT[
         "train-images-idx3-ubyte"][:1000]}) / "train-images-idx3-ubyte"),
     IdxFormatError, r"truncated data: the header declares shape \(32, 28, 28\) of uint8"),
    ("read-idx-bad-magic",
     lambda env: read_idx(_data_dir(env, replace={"train-labels-idx1-ubyte": _corrupt_magic(
         _FAKE_CONTENT["train-labels-idx1-ubyte"])}) / "train-labels-idx1-ubyte"),
     IdxFormatError, r"train-labels-idx1-ubyte: bad magic 0x0803"),
    ("read-idx-missing-file", lambda env: read_idx(env.inputs / "absent-idx1-ubyte"),
     FileNotFoundError, r"absent-idx1-ubyte"),
    # Writing: a refused array or history leaves no file behind.
    ("write-idx-unsupported-dtype",
     lambda env: write_idx(env.work / "x-idx1-ubyte", np.zeros(3, np.float16)),
     ValueError, r"array dtype must be one of .*, got float16"),
    ("write-history-not-json",
     lambda env: write_json(env.work / "run" / "metrics.json", History({"seed": {0}}).to_dict()),
     TypeError, r"Object of type set is not JSON serializable"),
    # Schedules returning an array, and things that are not callable.
    ("sgd-non-scalar-schedule", lambda _: _update(jt.sgd(lambda c: jnp.ones(3)), PARAMS),
     ValueError, SCALAR_SCHEDULE),
    ("adam-non-scalar-schedule-under-jit",
     lambda _: jax.jit(_update, static_argnums=0)(jt.adam(lambda c: jnp.ones(3)), PARAMS),
     ValueError, SCALAR_SCHEDULE),
    ("momentum-non-scalar-momentum-schedule",
     lambda _: _update(jt.momentum(0.1, lambda c: jnp.full(3, 0.9), form="lesson"), PARAMS),
     ValueError, SCALAR_SCHEDULE),
    ("join-non-callable-schedule", lambda _: jt.join([0.1, jt.constant(0.1)], [5]),
     TypeError, r"schedules\[0\] must be callable, got float 0\.1"),
    ("cnn-non-callable-activation", lambda _: CNN(activation="relu"),
     TypeError, r"activation must be callable, got str 'relu'"),
    ("mlp-non-callable-initializer", lambda _: MLP(kernel_init="he_normal"),
     TypeError, r"kernel_init must be callable, got str 'he_normal'"),
    ("fit-non-callable-callback", lambda _: _fit(callbacks=["save"]),
     ValueError, r"callbacks must be hooks or functions \(state, record\) -> bool, got 'save'"),
    ("skip-nonfinite-of-a-factory", lambda _: jt.skip_nonfinite(jt.adam),
     TypeError, r"inner must be an optax\.GradientTransformation, got function"),
    ("skip-nonfinite-of-a-string", lambda _: jt.skip_nonfinite("adam"),
     TypeError, r"inner must be an optax\.GradientTransformation, got str"),
    ("skip-nonfinite-of-a-plain-tuple",
     lambda _: jt.skip_nonfinite((jt.sgd(0.1).init, jt.sgd(0.1).update)),
     TypeError, r"inner must be an optax\.GradientTransformation, got tuple"),
    ("train-step-with-an-optimizer-name", lambda _: make_train_step(TINY_MLP, "adam"),
     ValueError, r"optimizer must be an optax\.GradientTransformation .*got str"),
    ("fit-skip-nonfinite-not-bool", lambda _: _fit(skip_nonfinite="yes"),
     ValueError, r"skip_nonfinite must be True, False or 'strict', got 'yes'"),
    ("train-step-skip-nonfinite-an-array",
     lambda _: make_train_step(TINY_MLP, jt.sgd(0.1), skip_nonfinite=np.array([1, 2])),
     ValueError, r"skip_nonfinite must be True, False or 'strict', got array"),
    # fit's other arguments: validation, models, losses, states, hooks.
    ("fit-model-not-flax", lambda _: _fit(model="mlp"),
     ValueError, r"model must be a flax\.linen\.Module or a flax\.nnx\.Module, got builtins\.str"),
    ("fit-validation-split-1", lambda _: _fit(validation_data=None, validation_split=1.0),
     ValueError, r"validation_split must be in \[0, 1\), got 1\.0"),
    ("fit-validation-split-leaves-nothing",
     lambda _: _fit(validation_data=None, validation_split=0.05),
     ValueError, r"validation_split=0\.05 of 8 examples holds out 0"),
    ("fit-validation-data-and-split", lambda _: _fit(validation_split=0.5),
     ValueError, r"give validation_data or validation_split, not both"),
    ("fit-validation-data-not-a-pair", lambda _: _fit(validation_data=_images()),
     ValueError, r"validation_data must be a pair \(x_val, y_val\), got ndarray"),
    ("fit-loss-fn-not-callable", lambda _: _fit(loss_fn="mse"),
     ValueError, r"loss_fn must be a function \(outputs, y\) -> losses, got 'mse'"),
    ("fit-loss-fn-not-per-example",
     lambda _: _fit(loss_fn=lambda outputs, y: jnp.mean(outputs), labels=_images()),
     ValueError, r"loss_fn must return one value per example, shape \(4,\), got shape \(\)"),
    ("fit-metric-named-loss", lambda _: _fit(metrics={"loss": lambda outputs, y: y}),
     ValueError, r"metrics: 'loss' is reserved"),
    ("fit-initial-state-not-a-state", lambda _: _fit(initial_state={"params": {}}),
     ValueError, r"initial_state must be a TrainState, got dict"),
    ("fit-initial-state-mid-epoch", _fit_from_mid_epoch,
     ValueError, r"initial_state: its step 1 is not a whole number of epochs of 2 steps"),
    ("fit-early-stopping-on-test", lambda _: _fit(callbacks=[EarlyStoppingHook("test_loss")]),
     ValueError, r"monitor must be a training or validation metric, got 'test_loss'"),
    ("fit-early-stopping-without-validation",
     lambda _: _fit(validation_data=None, callbacks=[EarlyStoppingHook()]),
     ValueError, r"monitor: the run records no 'val_loss' \(fit has no validation data"),
    ("checkpoint-hook-keep-0", lambda env: CheckpointHook(env.work / "ckpt", keep=0),
     ValueError, r"max_to_keep must be an int >= 1, got 0"),
    # The command line: exit status 2 and the reason on stderr, before any training.
    ("cli-unknown-command", lambda _: cli_main(["frobnicate"]),
     SystemExit, r"invalid choice: 'frobnicate'"),
    ("cli-unknown-model", lambda env: _cli(env, "--model", "vgg"),
     SystemExit, r"argument --model: invalid choice: 'vgg'"),
    ("cli-unknown-schedule", lambda env: _cli(env, "--schedule", "linear"),
     SystemExit, r"argument --schedule: invalid choice: 'linear'"),
    ("cli-epochs-not-int", lambda env: _cli(env, "--epochs", "two"),
     SystemExit, r"argument --epochs: invalid int value: 'two'"),
    ("cli-zero-epochs", lambda env: _cli(env, "--epochs", "0"),
     SystemExit, r"--epochs must be an integer >= 1, got 0"),
    ("cli-zero-batch-size", lambda env: _cli(env, "--batch-size", "0"),
     SystemExit, r"--batch-size must be an integer >= 1, got 0"),
    ("cli-nan-learning-rate", lambda env: _cli(env, "--learning-rate", "nan"),
     SystemExit, r"--learning-rate must be a finite number >= 0, got nan"),
    ("cli-infinite-learning-rate", lambda env: _cli(env, "--learning-rate", "inf"),
     SystemExit, r"--learning-rate must be a finite number >= 0, got inf"),
    ("cli-negative-weight-decay", lambda env: _cli(env, "--weight-decay", "-0.1"),
     SystemExit, r"--weight-decay must be a finite number >= 0, got -0\.1"),
    ("cli-negative-warmup", lambda env: _cli(env, "--warmup-epochs", "-1"),
     SystemExit, r"--warmup-epochs must be a finite number >= 0, got -1"),
    ("cli-dropout-1", lambda env: _cli(env, "--dropout", "1"),
     SystemExit, r"--dropout must be a number in \[0, 1\), got 1\.0"),
    ("cli-unknown-initializer", lambda env: _cli(env, "--initializer", "glorrot"),
     SystemExit, r"--initializer must be one of .* got 'glorrot'"),
    ("cli-missing-data", lambda env: _cli(env, "--data-dir", str(env.inputs / "absent")),
     SystemExit, r"--data-dir .*absent: could not find a verified copy of mnist"),
    ("cli-momentum-above-1",
     lambda env: _cli(env, "--optimizer", "momentum", "--momentum", "1.5", "--batch-size", "8",
                      data=True),
     SystemExit, r"--momentum must be a number in \[0, 1\], got 1\.5"),
    ("cli-zero-clip-threshold",
     lambda env: _cli(env, "--clip", "value", "--clip-threshold", "0", "--batch-size", "8",
                      data=True),
     SystemExit, r"--clip-threshold must be a finite number > 0, got 0\.0"),
    ("cli-decay-factor-above-1",
     lambda env: _cli(env, "--schedule", "per_epoch", "--decay-factor", "1.5", "--batch-size",
                      "8", data=True),
     SystemExit, r"--decay-factor must be a number in \(0, 1\], got 1\.5"),
    ("cli-zero-train-examples", lambda env: _cli(env, "--train-examples", "0", data=True),
     SystemExit, r"--train-examples must be an integer >= 1, got 0"),
    ("cli-too-many-train-examples", lambda env: _cli(env, "--train-examples", "25", data=True),
     SystemExit, r"--train-examples must be an integer in \[1, 24\], got 25"),
    ("cli-batch-size-above-train-examples",
     lambda env: _cli(env, "--batch-size", "64", data=True),
     SystemExit, r"--batch-size must be at most the 24 training images, got 64"),
]

def _params():
    return [pytest.param(call, error, pattern, id=case) for case, call, error, pattern in CASES]


def test_table_is_large_with_unique_ids():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


@pytest.mark.slow
@pytest.mark.parametrize(("call", "error", "pattern"), _params())
def test_bad_input_gives_a_clear_error(env, capsys, call, error, pattern):
    with pytest.raises(error) as info:
        call(env)
    if error is SystemExit:
        assert info.value.code == 2
        message = capsys.readouterr().err
    else:
        message = str(info.value)
    assert re.search(pattern, message, re.DOTALL), message
    parts = Path(str(info.traceback[-1].path)).parts
    package = parts[parts.index("site-packages") + 1] if "site-packages" in parts else ""
    assert package not in _THIRD_PARTY, f"raised inside {package}: {message}"
    assert [path for path in env.work.rglob("*") if not path.is_dir()] == []
