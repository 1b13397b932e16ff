"""Model averaging on real MNIST (lesson L5): an ensemble against its members, averaged weights
against the raw ones.

    ./run python examples/model_averaging.py [--quick] [--out results/model_averaging]

1. **Ensemble.** K = 5 MLPs (784-256-10, ReLU, no dropout) trained side by side in one compiled
   program (:func:`~jaxtricks.training.ensemble.fit_ensemble`, member k from seed s + k, every
   member seeing the same batches), Adam 1e-3, batch 128, 5 epochs on the 60,000 training
   images, for two base seeds s. After the last epoch: each member's test accuracy, the best
   member's, and the ensemble's, whose prediction is the mean of the members' probabilities.
2. **Averaged weights.** One MLP (784-512-256-10 with batch norm) trained by
   :func:`~jaxtricks.training.fit.fit` with SGD + momentum 0.9 at a constant 0.05 for 12 epochs,
   where averaging has noise to remove, for three seeds. ``averaging`` evaluates, after every
   epoch, an EMA of the per-epoch weights (decay 0.5, debiased) in one run and SWA (the uniform
   mean of the weights of epochs ≥ 6) in another, each with batch statistics measured again for
   the averaged weights on the training images; the raw weights are evaluated beside them.

Writes ``results.json`` (every number, the seeds, wall and CPU time, the machine) and
``figure.png`` into ``--out``. ``--quick`` trains on 2,000 images for 2 epochs (seconds; for the
tests, not for conclusions).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import numpy as np

import jaxtricks as jt
from jaxtricks.backend import configure_host_allocator, configure_xla_cpu
from jaxtricks.cli.experiments.common import machine
from jaxtricks.cli.experiments.provenance import provenance
from jaxtricks.cli.plots import pyplot, save_figure
from jaxtricks.data import load
from jaxtricks.files import write_json
from jaxtricks.models import MLP
from jaxtricks.training import AveragingHook, EvaluationHook, fit, fit_ensemble


def mnist(train_examples: int | None):
    """Standardized real MNIST, flattened rows as the MLP takes them, int32 labels."""
    data = load("mnist")
    train = jt.scale_to_unit(data.train_images[:train_examples].reshape(-1, 784))
    test = jt.scale_to_unit(data.test_images.reshape(-1, 784))
    stats = jt.fit_standardization(train)
    return (
        jt.standardize(train, stats),
        data.train_labels[:train_examples].astype(np.int32),
        jt.standardize(test, stats),
        data.test_labels.astype(np.int32),
    )


def ensembles(data, *, epochs: int, base_seeds: list[int], members: int) -> list[dict]:
    train_x, train_y, test_x, test_y = data
    results = []
    for seed in base_seeds:
        model = MLP(features=(256,), dropout_rate=0.0)
        _, history = fit_ensemble(
            model, jt.adam(1e-3), train_x, train_y, num_members=members, epochs=epochs,
            batch_size=128, seed=seed, progress=False,
            callbacks=[EvaluationHook("test", test_x, test_y)],
        )
        last = history.epochs[-1]
        results.append({
            "base_seed": seed,
            "member_seeds": history.header["member_seeds"],
            "member_test_accuracy": last.info["test_member_accuracy"],
            "best_member_test_accuracy": max(last.info["test_member_accuracy"]),
            "mean_member_test_accuracy": statistics.fmean(last.info["test_member_accuracy"]),
            "ensemble_test_accuracy": last["test_accuracy"],
            "ensemble_test_loss": last["test_loss"],
            "member_test_loss": last.info["test_member_loss"],
            "per_epoch_ensemble_test_accuracy": history["test_accuracy"],
            "per_epoch_best_member_test_accuracy": [
                max(r.info["test_member_accuracy"]) for r in history.epochs
            ],
            "compile_time_s": history.header["compile_time_s"],
        })
    return results


def averaged_runs(data, *, epochs: int, seeds: list[int], swa_start: int) -> dict[str, list]:
    train_x, train_y, test_x, test_y = data
    model = MLP(features=(512, 256), use_batch_norm=True, dropout_rate=0.0)
    runs: dict[str, list] = {"ema": [], "swa": []}
    for name, averaging in (
        ("ema", jt.ema_params(0.5)),
        ("swa", jt.swa_params(start=swa_start)),
    ):
        for seed in seeds:
            _, history = fit(
                model, jt.momentum(0.05, momentum=0.9), train_x, train_y, epochs=epochs,
                batch_size=128, seed=seed, progress=False,
                callbacks=[EvaluationHook("test", test_x, test_y), AveragingHook(averaging)],
            )
            runs[name].append({
                "seed": seed,
                "raw_test_accuracy": history["test_accuracy"],
                "averaged_test_accuracy": history["test_accuracy_averaged"],
                "raw_test_loss": history["test_loss"],
                "averaged_test_loss": history["test_loss_averaged"],
            })
    return runs


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def plot(results: dict, path: str) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in results["ensemble"]:
        accuracies = run["member_test_accuracy"]
        seeds = run["member_seeds"]
        left.scatter([f"s={run['base_seed']}"] * len(accuracies), accuracies, color="gray",
                     label="members" if run is results["ensemble"][0] else None)
        left.scatter([f"s={run['base_seed']}"], [run["ensemble_test_accuracy"]], color="red",
                     marker="*", s=150,
                     label="ensemble (mean of probabilities)"
                     if run is results["ensemble"][0] else None)
        left.annotate(f"seeds {seeds[0]}–{seeds[-1]}", (f"s={run['base_seed']}",
                      min(accuracies)), textcoords="offset points", xytext=(8, -4), fontsize=8)
    left.set(title=f"K={len(results['ensemble'][0]['member_seeds'])} MLPs: members vs ensemble",
             ylabel="test accuracy after the last epoch")
    left.legend(fontsize="small")
    left.grid(alpha=0.3)
    for name, color in (("ema", "tab:blue"), ("swa", "tab:green")):
        for index, run in enumerate(results["averaging"][name]):
            epochs = np.arange(1, len(run["raw_test_accuracy"]) + 1)
            right.plot(epochs, run["averaged_test_accuracy"], color=color, alpha=0.8,
                       label=f"{name.upper()} weights" if index == 0 else None)
            if name == "ema":
                right.plot(epochs, run["raw_test_accuracy"], color="black", alpha=0.6,
                           linestyle="--", label="raw weights" if index == 0 else None)
    right.set(title="averaged vs raw weights, one line per seed",
              xlabel="epoch", ylabel="test accuracy")
    right.legend(fontsize="small")
    right.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 training images, 2 epochs: seconds, for the tests")
    parser.add_argument("--out", default=os.path.join("results", "model_averaging"),
                        help="folder for results.json and figure.png")
    args = parser.parse_args(argv)
    began, cpu_began = time.perf_counter(), time.process_time()
    train_examples, epochs, averaging_epochs = (2000, 2, 2) if args.quick else (None, 5, 12)
    data = mnist(train_examples)
    ensemble = ensembles(data, epochs=epochs, base_seeds=[0, 100], members=5)
    seeds = [0, 1] if args.quick else [0, 1, 2]
    averaging = averaged_runs(data, epochs=averaging_epochs, seeds=seeds,
                              swa_start=1 if args.quick else 6)
    gains = [r["ensemble_test_accuracy"] - r["best_member_test_accuracy"] for r in ensemble]
    averaging_final = {
        name: {
            "raw_test_accuracy": summary([r["raw_test_accuracy"][-1] for r in runs]),
            "averaged_test_accuracy": summary([r["averaged_test_accuracy"][-1] for r in runs]),
            "gain_accuracy": summary([r["averaged_test_accuracy"][-1]
                                      - r["raw_test_accuracy"][-1] for r in runs]),
        }
        for name, runs in averaging.items()
    }
    ensemble_final = {
        "ensemble_test_accuracy": summary([r["ensemble_test_accuracy"] for r in ensemble]),
        "best_member_test_accuracy": summary([r["best_member_test_accuracy"]
                                              for r in ensemble]),
        "mean_member_test_accuracy": summary([r["mean_member_test_accuracy"]
                                              for r in ensemble]),
        "gain_accuracy": summary(gains),
    }
    results = {
        "experiment": "model_averaging",
        "claim": "L5: model averaging — an ensemble beats its members, averaged weights (EMA, "
                 "SWA) beat the raw ones",
        "mode": "quick" if args.quick else "full",
        "command": shlex.join(["python", "examples/model_averaging.py", *sys.argv[1:]]),
        "config": {"train_examples": train_examples, "ensemble_epochs": epochs, "members": 5,
                   "ensemble_base_seeds": [0, 100], "averaging_epochs": averaging_epochs,
                   "ema_decay_per_epoch": 0.5, "swa_start": 1 if args.quick else 6},
        "seeds": seeds,
        "summary": {
            "ensemble (base seeds 0 and 100)": {"final": ensemble_final},
            **{f"{name} (seeds {', '.join(map(str, seeds))})": {"final": final}
               for name, final in averaging_final.items()},
        },
        "headline": [
            f"ensemble, base seed {r['base_seed']}: {r['ensemble_test_accuracy']:.4f} against "
            f"members {', '.join(f'{a:.4f}' for a in r['member_test_accuracy'])}"
            for r in ensemble
        ],
        "quick": args.quick,
        "ensemble": ensemble,
        "ensemble_gain": gains,
        "averaging": averaging,
        "averaging_final": averaging_final,
        "wall_time_s": time.perf_counter() - began,
        "cpu_time_s": time.process_time() - cpu_began,
        "machine": machine(),
        "provenance": provenance("examples.model_averaging"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(os.path.join(args.out, "results.json"), results, indent=2)
    plot(results, os.path.join(args.out, "figure.png"))
    for run, gain in zip(ensemble, results["ensemble_gain"], strict=True):
        print(f"ensemble s={run['base_seed']}: members {run['member_test_accuracy']}, "
              f"ensemble {run['ensemble_test_accuracy']:.4f} ({gain:+.4f} over the best)")
    for name, final in results["averaging_final"].items():
        raw, averaged = final["raw_test_accuracy"], final["averaged_test_accuracy"]
        print(f"{name}: raw {raw['mean']:.4f} ± {raw['std']:.4f}, averaged "
              f"{averaged['mean']:.4f} ± {averaged['std']:.4f}")
    return results


if __name__ == "__main__":
    configure_xla_cpu()  # before JAX starts: the same XLA setting as the command line
    configure_host_allocator()  # and the same malloc setting
    main()
