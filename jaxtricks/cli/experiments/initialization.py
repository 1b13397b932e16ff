"""L2, weight initialization: the vanishing/exploding picture through a deep MLP, and accuracy.

For a deep MLP of ``depth`` hidden layers of ``width`` units (no batch norm), each initializer
and each activation φ ∈ {tanh, ReLU}, on one batch of real standardized MNIST images,
:func:`jaxtricks.models.signal.signal_propagation` measures per hidden layer l

    activation std   std(h_l),  h_l = φ(W_l h_{l−1} + b_l)     (forward)
    gradient std     std(∂L/∂z_l),  z_l = W_l h_{l−1} + b_l    (backward)

With Var(W) = 1 (``normal``, N(0, 1)) and n inputs per unit, std(z_l) grows like
sqrt(n/2)^l through ReLUs; with Var(W) = 1/n (LeCun) or 2/(n_in + n_out) (Glorot) tanh keeps
it in range, and with 2/n (He) ReLU does. Then the same network is trained briefly (SGD with
momentum) and its test accuracy recorded.

Initializers (:mod:`jaxtricks.tricks.initializers`, the lesson's variants, each run under
the label in brackets): ``unscaled_normal`` N(0, 1) [normal], ``symmetric_uniform``
U[−0.05, 0.05) [uniform], ``gaussian`` N(0, 1/n_in) (the lesson's; LeCun's variance untruncated,
so LeCun is represented by ``lecun_uniform``, U with variance 1/n_in), the untruncated
``glorot_normal_untruncated`` [glorot_normal] and ``he_normal_untruncated`` [he_normal], and
``orthogonal`` (scale 1). Steps whose loss or gradient is not finite are skipped (the library's
default) and counted.

Full config: MNIST, depth 30, width 256, signals on 512 training images, training on 10000
train images for 2 epochs (batch 128, momentum SGD η = 0.01, γ = 0.9), 10000 test images,
2 seeds: 7 initializers × 2 activations × 2 seeds = 28 runs.
Quick config: depth 10, width 32, 3 initializers, 512 train / 1000 test images, 1 epoch,
1 seed.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtricks.cli.experiments import common
from jaxtricks.models import MLP, signal_propagation
from jaxtricks.training import TrainState, create_train_state
from jaxtricks.tricks import initializers, optimizers

NAME = "initialization"
CLAIM = (
    "L2: N(0,1) initialization blows signals up through a deep network; variance-scaled "
    "initializations (Glorot for tanh, He for ReLU) keep them in range"
)

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}
# label -> (initializer name, options); the labels are the lesson's names for the variants.
INITIALIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "normal": ("unscaled_normal", {"stddev": 1.0}),
    "uniform": ("symmetric_uniform", {"scale": 0.05}),
    "gaussian": ("gaussian", {}),
    "lecun_uniform": ("lecun_uniform", {}),
    "glorot_normal": ("glorot_normal_untruncated", {}),
    "he_normal": ("he_normal_untruncated", {}),
    "orthogonal": ("orthogonal", {"scale": 1.0}),
}

FULL: dict[str, Any] = {
    "dataset": "mnist",
    "depth": 30,
    "width": 256,
    "signal_examples": 512,
    "train_examples": 10000,
    "test_examples": None,
    "initializers": list(INITIALIZERS),
    "activations": list(ACTIVATIONS),
    "optimizer": {"name": "momentum", "learning_rate": 0.01, "momentum": 0.9},
    "epochs": 2,
    "batch_size": 128,
    "seeds": 2,
}
QUICK: dict[str, Any] = {
    **FULL,
    "depth": 10,
    "width": 32,
    "signal_examples": 256,
    "train_examples": 512,
    "test_examples": 1000,
    "initializers": ["normal", "glorot_normal", "he_normal"],
    "epochs": 1,
    "seeds": 1,
}


def _signals(model: MLP, state: TrainState, images: np.ndarray, labels: np.ndarray) -> dict:
    """Per hidden layer: activation std, pre-activation std and gradient std of ``state``."""
    variables = {"params": state.params}
    signals = list(signal_propagation(
        model, variables, (jnp.asarray(images), jnp.asarray(labels))
    ).values())
    # Layer l's activation is the input of layer l + 1 (the last hidden one's is the head's).
    return {
        "activation_std": [float(s.input_std) for s in signals[1:]],
        "preactivation_std": [float(s.output_std) for s in signals[:-1]],
        "grad_std": [float(s.grad_std) for s in signals[:-1]],
    }


def run(config: dict[str, Any], seeds: list[int], log: common.Log) -> dict[str, Any]:
    """Signals at initialization and a short training run for every (activation, init, seed)."""
    data = common.load_data(
        config["dataset"],
        train_examples=config["train_examples"],
        test_examples=config["test_examples"],
    )
    signal_x = data.train_x[: config["signal_examples"]]
    signal_y = data.train_y[: config["signal_examples"]]
    settings = dict(config["optimizer"])
    optimizer = optimizers.get(settings.pop("name"), settings.pop("learning_rate"), **settings)
    runs = []
    features = (config["width"],) * config["depth"]
    for activation in config["activations"]:
        # One model to train them all: the initializer only decides the starting state, so
        # fit compiles once per activation instead of once per initializer.
        model = MLP(features=features, activation=ACTIVATIONS[activation])
        for init_name in config["initializers"]:
            factory, kwargs = INITIALIZERS[init_name]
            init_model = MLP(
                features=features,
                activation=ACTIVATIONS[activation],
                kernel_init=initializers.get(factory, **kwargs),
            )
            for seed in seeds:
                # The key fit(seed=seed) would initialize with.
                init_key = jax.random.split(jax.random.key(seed))[0]
                state = create_train_state(init_model, optimizer, init_key, signal_x[:1])
                signals = _signals(model, state, signal_x, signal_y)
                result = common.fit_run(
                    model,
                    optimizer,
                    data,
                    condition=f"{activation}/{init_name}",
                    seed=seed,
                    epochs=config["epochs"],
                    batch_size=config["batch_size"],
                    initial_state=state,
                    log=log,
                )
                result["curves"].update(signals)
                result["final"].update(
                    {
                        "first_activation_std": signals["activation_std"][0],
                        "last_activation_std": signals["activation_std"][-1],
                        "first_grad_std": signals["grad_std"][0],
                        "last_grad_std": signals["grad_std"][-1],
                    }
                )
                runs.append(result)
    summary = common.summarize(runs)
    headline = []
    for condition, s in summary.items():
        final = s["final"]
        headline.append(
            f"{condition}: activation std layer 1 -> {config['depth']}: "
            f"{_g(final['first_activation_std'])} -> {_g(final['last_activation_std'])}, "
            f"grad std layer 1/{config['depth']}: {_g(final['first_grad_std'])}"
            f"/{_g(final['last_grad_std'])}, test accuracy "
            f"{common.pm(final['test_accuracy'], 100)} %, "
            f"skipped steps {final['skipped_steps']['mean']:.0f}"
        )
    return {"runs": runs, "summary": summary, "headline": headline}


def _g(stats: dict[str, Any]) -> str:
    value = stats["mean"]
    return f"{value:.3g}" if math.isfinite(value) else "non-finite"


def plot(results: dict[str, Any], path: str) -> str:
    """Per activation: activation std and gradient std by layer (log scale), test accuracy."""
    plt = common.pyplot()
    summary = results["summary"]
    activations = results["config"]["activations"]
    fig, axes = plt.subplots(len(activations), 3, figsize=(16, 4.5 * len(activations)),
                             squeeze=False)
    for row, activation in enumerate(activations):
        conditions = [c for c in summary if c.startswith(f"{activation}/")]
        for column, (key, title) in enumerate(
            (("activation_std", "activation std"), ("grad_std", "gradient std ∂L/∂z"))
        ):
            ax = axes[row, column]
            common.plot_curves(ax, summary, key, conditions=conditions)
            ax.set(title=f"{activation}: {title} at init", xlabel="hidden layer",
                   ylabel="std", yscale="log")
        axes[row, 0].legend(fontsize=8)
        ax = axes[row, 2]
        names = [c.split("/", 1)[1] for c in conditions]
        means = [100 * summary[c]["final"]["test_accuracy"]["mean"] for c in conditions]
        stds = [100 * summary[c]["final"]["test_accuracy"]["std"] for c in conditions]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{activation}: test accuracy after {results['config']['epochs']} "
                     "epoch(s)", ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"L2 initialization: {results['config']['depth']}-layer MLP of width "
                 f"{results['config']['width']} ({len(results['seeds'])} seeds, mean ± std)")
    fig.tight_layout()
    return common.save_figure(fig, path)
