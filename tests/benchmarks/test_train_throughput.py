"""The MNIST throughput benchmark and its PyTorch twin run and report what they say (structure,
not speed)."""

import json

import jax
import numpy as np
import pytest
from benchmark_modules import import_benchmark

from jaxtricks.models import CNN


@pytest.fixture(scope="module")
def throughput():
    return import_benchmark("train_throughput")


@pytest.fixture(scope="module")
def torch_baseline():
    pytest.importorskip("torch")
    return import_benchmark("torch_baseline")


@pytest.mark.parametrize("use_batch_norm", [False, True])
@pytest.mark.slow
def test_torch_twin_has_the_jaxtricks_cnn_parameter_shapes(torch_baseline, use_batch_norm):
    """Layer for layer the same weights (transposed to PyTorch's layout), so the same model."""
    model = CNN(features=(8, 16), hidden=32, use_batch_norm=use_batch_norm)
    variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32), train=False)
    ours = sorted(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
    twin = torch_baseline.cnn((8, 16), 32, use_batch_norm=use_batch_norm)
    theirs = sorted(p.numel() for p in twin.parameters())
    assert theirs == ours
    buffers = [b for name, b in twin.named_buffers() if "running" in name]
    assert len(buffers) == (2 * 3 if use_batch_norm else 0)


def test_torch_twin_is_he_initialized_and_gives_logits(torch_baseline):
    import torch

    twin = torch_baseline.cnn(seed=3)
    conv2 = twin[3] if isinstance(twin[3], torch.nn.Conv2d) else None
    assert conv2 is not None and conv2.weight.shape == (64, 32, 3, 3)
    # He normal: std sqrt(2 / fan_in) with fan_in = 32 * 9.
    np.testing.assert_allclose(conv2.weight.std().item(), (2 / 288) ** 0.5, rtol=0.1)
    images = torch_baseline.to_nchw(np.zeros((5, 28, 28, 1), np.float32))
    assert images.shape == (5, 1, 28, 28)
    assert twin(images).shape == (5, 10)


def test_torch_training_rate_is_measured_and_the_loss_falls(torch_baseline):
    import torch

    torch_baseline.set_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 64)
    images = rng.standard_normal((64, 28, 28, 1)).astype(np.float32)
    images[np.arange(64), labels, labels] += 5.0  # a learnable signal
    model = torch_baseline.cnn((4, 8), 16, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch_baseline.to_nchw(images), torch.from_numpy(labels)
    first = torch.nn.functional.cross_entropy(model(x), y).item()
    rate, last = torch_baseline.train_images_per_s(model, optimizer, x, y, 16, 3, seed=0)
    for _ in range(5):
        rate, last = torch_baseline.train_images_per_s(model, optimizer, x, y, 16, 3, seed=0)
    assert rate > 0
    assert last < first


def test_bad_arguments_are_refused(throughput):
    with pytest.raises(ValueError, match="--steps"):
        throughput.main(["--steps", "0"])


@pytest.mark.slow
def test_quick_run_reports_every_baseline(throughput, capsys):
    records = throughput.main(["--quick", "--config", "flax_example"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == json.loads(json.dumps(records))
    (record,) = records
    assert record["config"] == "flax_example" and record["steps"] == 4
    for name in ("jaxtricks_images_per_s", "flax_optax_images_per_s", "ratio"):
        assert record[name]["n"] == 1 and record[name]["median"] > 0
    assert record["ratio"]["median"] == pytest.approx(
        record["jaxtricks_images_per_s"]["median"] / record["flax_optax_images_per_s"]["median"]
    )
    if record["torch"] is None:
        assert record["torch_images_per_s"] is None and record["ratio_vs_torch"] is None
    else:
        assert record["torch_images_per_s"]["median"] > 0
        assert record["ratio_vs_torch"]["median"] == pytest.approx(
            record["jaxtricks_images_per_s"]["median"] / record["torch_images_per_s"]["median"]
        )
    assert record["jaxtricks_compile_time_s"] > 0 and record["cpu_count"] >= 1


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_the_flax_baseline_trains_without_jaxtricks_speed_paths(throughput, use_batch_norm):
    """The plain-Flax loop's model: Flax's batch norm and XLA's convolution for every layer,
    where jaxtricks' CNN on the CPU convolves the one-channel input by shifted sums."""
    x = np.zeros((2, 28, 28, 1), np.float32)
    convolutions = {}
    for name, cls in (("jaxtricks", CNN), ("flax", throughput.FlaxCNN)):
        model = cls(features=(4, 8), hidden=16, use_batch_norm=use_batch_norm)
        variables = model.init(jax.random.key(0), x, train=False)
        text = str(jax.make_jaxpr(lambda v, model=model: model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}))(
                variables))
        convolutions[name] = text.count("conv_general_dilated[")
        assert ("custom_vjp_call" in text) == (name == "jaxtricks"), name
    assert convolutions == {"jaxtricks": 1, "flax": 2}
