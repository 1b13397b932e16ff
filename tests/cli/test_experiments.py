"""``jaxtricks experiment``: the shared helpers, the command line and every ``--quick`` run.

The helpers are checked on small hand-made inputs and on real MNIST subsets; each experiment's
``--quick`` mode runs end to end on real data (slow: 20–60 s each) and its ``results.json`` is
checked for structure, finite numbers in sensible ranges and the figure.
"""

import itertools
import json
import math
import os
import types

import pytest

from jaxtricks.cli import experiment, experiments
from jaxtricks.cli.experiments import common
from jaxtricks.cli.experiments.provenance import code_fingerprint
from jaxtricks.cli.main import main
from jaxtricks.data import DatasetNotFoundError, load, splits

PNG = b"\x89PNG\r\n\x1a\n"


# ---- common.py ----------------------------------------------------------------------------


def test_mean_std_is_the_sample_statistics_and_skips_missing_values():
    stats = common.mean_std([1.0, 2.0, None, 6.0])
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 9) / 2))
    assert (stats["min"], stats["max"], stats["n"], stats["missing"]) == (1.0, 6.0, 3, 1)
    assert common.mean_std([0.5])["std"] == 0.0
    empty = common.mean_std([None, None])
    assert math.isnan(empty["mean"]) and empty["n"] == 0 and empty["missing"] == 2
    assert math.isnan(common.mean_std([1.0, math.nan])["mean"])


def test_curve_mean_std_is_pointwise_over_the_common_length():
    result = common.curve_mean_std([[1.0, 2.0, 3.0], [3.0, 4.0], [2.0, None]])
    assert result["mean"][0] == pytest.approx(2.0)
    assert result["std"][0] == pytest.approx(1.0)
    assert len(result["mean"]) == 2 and math.isnan(result["mean"][1])
    single = common.curve_mean_std([[0.1, 0.2]])
    assert single == {"mean": [0.1, 0.2], "std": [0.0, 0.0]}


def test_epochs_to_target_counts_from_one_and_says_never():
    assert common.epochs_to_target([0.5, 0.9, 0.95, 0.99], 0.95) == 3
    assert common.epochs_to_target([0.96], 0.95) == 1
    assert common.epochs_to_target([0.5, None, 0.7], 0.95) is None


def test_cumulative_and_seed_list():
    assert common.cumulative([1.0, 2.5, 0.5]) == [1.0, 3.5, 4.0]
    assert common.seed_list(3) == [0, 1, 2]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="seeds"):
            common.seed_list(bad)


def test_summarize_groups_runs_by_condition_in_order():
    def run(condition, seed, accuracy, curve):
        return {"condition": condition, "seed": seed, "final": {"acc": accuracy, "note": "x"},
                "curves": {"loss": curve, "labels": ["a", "b"]}}

    summary = common.summarize([
        run("b", 0, 0.5, [2.0, 1.0]), run("a", 0, 0.8, [1.0, 0.5]),
        run("b", 1, 0.7, [4.0, 3.0]),
    ])
    assert list(summary) == ["b", "a"]
    assert summary["b"]["seeds"] == [0, 1]
    assert summary["b"]["final"]["acc"]["mean"] == pytest.approx(0.6)
    assert "note" not in summary["b"]["final"] and "labels" not in summary["b"]["curves"]
    assert summary["b"]["curves"]["loss"]["mean"] == pytest.approx([3.0, 2.0])
    assert summary["a"]["final"]["acc"]["std"] == 0.0


def test_save_figure_writes_a_png_atomically(tmp_path):
    plt = common.pyplot()
    fig, ax = plt.subplots()
    summary = {"c": {"curves": {"acc": {"mean": [0.5, 0.7], "std": [0.1, 0.0]}}}}
    common.plot_curves(ax, summary, "acc", scale=100)
    path = common.save_figure(fig, tmp_path / "figure.png")
    assert open(path, "rb").read(8) == PNG
    assert os.listdir(tmp_path) == ["figure.png"]


def _fake_experiment(calls):
    def run(config, seeds, log):
        calls.append((config, seeds))
        log("ran")
        runs = [{"condition": "c", "seed": s, "final": {"acc": 0.5 + s / 10},
                 "curves": {"acc": [0.1, 0.5 + s / 10]}} for s in seeds]
        return {"runs": runs, "summary": common.summarize(runs), "headline": ["c: fine"]}

    def plot(results, path):
        plt = common.pyplot()
        fig, ax = plt.subplots()
        common.plot_curves(ax, results["summary"], "acc")
        return common.save_figure(fig, path)

    # A real experiment is a module; its name is what provenance fingerprints.
    return types.SimpleNamespace(__name__="jaxtricks.cli.experiments.common", NAME="fake",
                                 CLAIM="L0: a claim", FULL={"seeds": 3, "n": 10},
                                 QUICK={"seeds": 1, "n": 2}, run=run, plot=plot)


def test_run_experiment_records_config_seeds_times_and_machine(tmp_path):
    calls, lines = [], []
    module = _fake_experiment(calls)
    results = common.run_experiment(module, quick=True, seeds=2, out_dir=tmp_path,
                                    log=lines.append, command="cmd")
    assert calls == [({"seeds": 2, "n": 2}, [0, 1])]
    saved = json.loads((tmp_path / common.RESULTS_FILE).read_text())
    assert (tmp_path / common.FIGURE_FILE).read_bytes()[:8] == PNG
    assert saved["experiment"] == "fake" and saved["mode"] == "quick"
    assert saved["config"] == {"seeds": 2, "n": 2} and saved["seeds"] == [0, 1]
    assert saved["summary"]["c"]["final"]["acc"]["mean"] == pytest.approx(0.55)
    assert saved["wall_time_s"] > 0 and saved["cpu_time_s"] >= 0
    assert saved["machine"]["cpu_count"] >= 1 and saved["machine"]["jax"]
    assert saved["command"] == "cmd" and results["headline"] == ["c: fine"]
    assert saved["provenance"]["module"] == "jaxtricks.cli.experiments.common"
    assert saved["provenance"]["code_fingerprint"] == code_fingerprint(
        "jaxtricks.cli.experiments.common")
    assert lines[0] == "ran" and "fake:" in lines[1] and lines[-1] == "  c: fine"
    common.run_experiment(module, out_dir=tmp_path / "full", log=lines.append)
    assert calls[-1] == ({"seeds": 3, "n": 10}, [0, 1, 2])


# ---- the command line ---------------------------------------------------------------------


def test_all_runs_every_experiment_into_its_own_folder(tmp_path, monkeypatch):
    calls = []
    module = _fake_experiment(calls)
    monkeypatch.setattr(experiments, "NAMES", ("one", "two"))
    monkeypatch.setattr(experiments, "get", lambda name: module)
    parser = experiment.build_parser()
    args = parser.parse_args(["one", "--quick", "--seeds", "2", "--out", str(tmp_path)])
    args.name = "all"
    assert experiment.run(args, parser) == 0
    for name in ("one", "two"):
        saved = json.loads((tmp_path / name / common.RESULTS_FILE).read_text())
        assert saved["seeds"] == [0, 1]
        assert saved["command"].endswith(f"experiment all --quick --seeds 2 --out {tmp_path}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "invalid choice: 'nope'"),
        ([], "the following arguments are required: NAME"),
        (["scaling", "--seeds", "0"], "must be an integer >= 1, got 0"),
        (["scaling", "--seeds", "two"], "must be an integer >= 1, got 'two'"),
        (["scaling", "--fast"], "unrecognized arguments: --fast"),
    ],
)
@pytest.mark.parametrize("entry", ["subcommand", "module"])
def test_bad_name_or_flags_exit_with_a_message(argv, message, entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        if entry == "subcommand":
            main(["experiment", *argv])
        else:
            experiment.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_dataset_exits_with_a_message(tmp_path, monkeypatch, capsys):
    def missing(name, *args, **kwargs):
        raise DatasetNotFoundError(f"{name}: no verified copy anywhere")

    monkeypatch.setattr(splits, "load", missing)
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["lr_decay", "--quick", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    message = "experiment lr_decay: fashion_mnist: no verified copy anywhere"
    assert message in capsys.readouterr().err
    assert not (tmp_path / common.RESULTS_FILE).exists()


def test_get_names_every_experiment_and_refuses_others():
    assert set(experiments.NAMES) == {"scaling", "initialization", "batch_norm", "dropout",
                                      "overfitting", "optimizers", "clipping", "lr_decay",
                                      "lr_find", "precision"}
    for name in experiments.NAMES:
        module = experiments.get(name)
        # A lesson point (L1-L7), or a trick the lesson does not cover.
        assert module.NAME == name and module.CLAIM.startswith(("L", "beyond the lesson: "))
        assert module.QUICK["seeds"] >= 1 and module.FULL["seeds"] >= 2
        assert "Full config" in module.__doc__ and "Quick config" in module.__doc__
    with pytest.raises(ValueError, match="experiment name must be one of"):
        experiments.get("nope")


# ---- every experiment, --quick, on real data ----------------------------------------------


def _finite_numbers(value):
    """Every number in a nested JSON value (``None`` stands for a non-finite one)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _finite_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _finite_numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def _check_common_structure(name, saved, out):
    module = experiments.get(name)
    assert (out / common.FIGURE_FILE).read_bytes()[:8] == PNG
    assert saved["experiment"] == name and saved["mode"] == "quick"
    assert saved["config"] == json.loads(json.dumps(module.QUICK))
    assert saved["seeds"] == list(range(module.QUICK["seeds"]))
    assert saved["command"] == f"python -m jaxtricks experiment {name} --quick --out {out}"
    assert 0 < saved["wall_time_s"] < 600 and 0 < saved["cpu_time_s"]
    assert {"backend", "device", "cpu_count", "jax", "flax", "optax"} <= set(saved["machine"])
    assert saved["headline"] and all(isinstance(line, str) for line in saved["headline"])
    conditions = list(dict.fromkeys(r["condition"] for r in saved["runs"]))
    assert list(saved["summary"]) == conditions
    assert len(saved["runs"]) == len(conditions) * len(saved["seeds"])
    for run in saved["runs"]:
        assert run["seed"] in saved["seeds"]
        for key in ("test_accuracy", "train_accuracy"):
            if key in run["final"]:
                assert 0.0 <= run["final"][key] <= 1.0
        for key, curve in run["curves"].items():
            if key.endswith("accuracy"):
                assert all(0.0 <= v <= 1.0 for v in curve), key
    for condition, s in saved["summary"].items():
        assert s["seeds"] == saved["seeds"], condition
        if name == "lr_find":  # measures learning rates, trains to no accuracy
            continue
        accuracy = s["final"]["test_accuracy"]
        assert 0.0 <= accuracy["mean"] <= 1.0 and accuracy["std"] >= 0.0
        assert accuracy["n"] == len(saved["seeds"])
    assert all(math.isfinite(v) for v in _finite_numbers(saved))
    return conditions


def _check_scaling(saved, conditions):
    config = saved["config"]
    assert conditions == [f"{o}/{s}" for s in config["scalings"] for o in config["optimizers"]]
    for run in saved["runs"]:
        assert len(run["curves"]["train_loss"]) == config["epochs"]
        if run["condition"].endswith("/standardize"):
            assert run["final"]["diverged"] == 0
            assert run["curves"]["train_loss"][-1] < math.log(10)  # better than chance


def _check_initialization(saved, conditions):
    config = saved["config"]
    assert conditions == [f"{a}/{i}" for a in config["activations"]
                          for i in config["initializers"]]
    for run in saved["runs"]:
        for key in ("activation_std", "preactivation_std", "grad_std"):
            assert len(run["curves"][key]) == config["depth"], key
    final = {c: s["final"] for c, s in saved["summary"].items()}
    # N(0, 1) through ReLUs explodes; He keeps the last layer's activations in range.
    assert final["relu/normal"]["last_activation_std"]["mean"] > 1e3
    assert 0.1 < final["relu/he_normal"]["last_activation_std"]["mean"] < 10


def _check_batch_norm(saved, conditions):
    rates = saved["config"]["learning_rates"]
    assert set(conditions) == {f"{m}/lr={r:g}" for m in ("plain", "bn") for r in rates}
    for run in saved["runs"]:
        reach = run["final"]["epochs_to_target"]
        assert reach is None or 1 <= reach <= saved["config"]["epochs"]


def _check_dropout(saved, conditions):
    assert conditions == [f"dropout={r:g}" for r in saved["config"]["rates"]]


def _check_overfitting(saved, conditions):
    assert conditions == saved["config"]["variants"]
    for run in saved["runs"]:
        final = run["final"]
        assert final["gap"] == pytest.approx(final["train_accuracy"] - final["test_accuracy"])
        assert 1 <= final["epochs_trained"] <= saved["config"]["epochs"]
        assert len(run["curves"]["val_accuracy"]) == final["epochs_trained"]


def _check_optimizers(saved, conditions):
    assert conditions == list(saved["config"]["learning_rates"])
    for run in saved["runs"]:
        times = run["curves"]["train_time_s"]
        assert all(b > a for a, b in itertools.pairwise(times)) and times[0] > 0
    by_name = {r["condition"]: r for r in saved["runs"] if r["seed"] == 0}
    # The two forms of momentum are the same method at a constant learning rate.
    assert by_name["momentum"]["final"]["train_loss"] == pytest.approx(
        by_name["momentum_lesson"]["final"]["train_loss"], rel=1e-3)


def _check_clipping(saved, conditions):
    assert len(conditions) == len(saved["config"]["learning_rates"]) * 3
    for run in saved["runs"]:
        assert run["final"]["diverged"] in (0, 1)
        if run["condition"].endswith("/θ=1"):
            assert run["final"]["diverged"] == 0  # a step of at most η·θ cannot blow up


def _check_lr_decay(saved, conditions):
    config = saved["config"]
    assert conditions == config["schedules"]
    rates = {r["condition"]: r["curves"]["learning_rate"] for r in saved["runs"]}
    assert rates["constant"] == pytest.approx([config["learning_rate"]] * config["epochs"])
    assert rates["per_epoch_0.98"] == pytest.approx(
        [config["learning_rate"] * 0.98**e for e in range(config["epochs"])], rel=1e-5)
    assert rates["cosine"][-1] < rates["cosine"][0]


def _check_lr_find(saved, conditions):
    config = saved["config"]
    module = experiments.get("lr_find")
    assert conditions == [*config["optimizers"], module.MAIN_JOB]
    grid = experiments.get("optimizers").FULL["learning_rates"]
    for run in saved["runs"]:
        curves, final = run["range_test"], run["final"]
        steps = len(curves["learning_rates"])
        assert final["steps"] == steps <= config["num_steps"]
        assert len(curves["losses"]) == len(curves["smoothed_losses"]) == steps
        assert curves["learning_rates"][0] == pytest.approx(config["min_lr"])
        assert all(b > a for a, b in itertools.pairwise(curves["learning_rates"]))
        assert final["diverged"] == int(curves["stop_reason"] != "completed")
        reference = (config["main_job_learning_rate"] if run["condition"] == module.MAIN_JOB
                     else grid[run["condition"]])
        assert final["reference_lr"] == pytest.approx(reference)
        for name in module.SUGGESTIONS:
            value, ratio = final[f"suggestion_{name}"], final[f"ratio_{name}"]
            if value is None:
                continue
            assert ratio == pytest.approx(value / reference)
            assert final[f"within_3x_{name}"] == int(1 / 3 <= ratio <= 3)
            assert config["min_lr"] / 10 <= value <= curves["learning_rates"][-1]
    assert list(saved["grids"]) == config["optimizers"]
    for grid in saved["grids"].values():
        low, middle, high = grid["grid"]
        assert low * 3 == pytest.approx(middle) and middle * 3 == pytest.approx(high)
        matches = [rate == pytest.approx(grid["chosen"]) for rate in grid["grid"]]
        assert sum(matches) == 1 and grid["at_edge"] == (not matches[1])


def _check_precision(saved, conditions):
    assert conditions == saved["config"]["precisions"] == ["fp32", "bf16", "fp16"]
    memory = saved["memory"]
    assert memory["fp32"]["param_bytes"] == memory["bf16"]["param_bytes"] == (
        memory["fp16"]["param_bytes"])
    for name in ("bf16", "fp16"):
        # Half-precision copies of the parameters; float32 batch norm keeps some activations
        # in float32, so they shrink, but by less than half.
        assert 2 * memory[name]["compute_param_bytes"] == memory["fp32"]["param_bytes"]
        assert memory[name]["activation_bytes"] < memory["fp32"]["activation_bytes"]
        assert memory[name]["activation_bytes_by_dtype"][
            {"bf16": "bfloat16", "fp16": "float16"}[name]] > 0
    assert set(memory["fp32"]["activation_bytes_by_dtype"]) <= {"float32", "bool", "int32"}
    for run in saved["runs"]:
        assert run["final"]["skipped_steps"] == 0
        assert (run["final"]["final_loss_scale"] is None) == (run["condition"] != "fp16")
        assert run["final"]["test_accuracy"] > 0.5


CHECKS = {
    "scaling": _check_scaling,
    "initialization": _check_initialization,
    "batch_norm": _check_batch_norm,
    "dropout": _check_dropout,
    "overfitting": _check_overfitting,
    "optimizers": _check_optimizers,
    "clipping": _check_clipping,
    "lr_decay": _check_lr_decay,
    "lr_find": _check_lr_find,


    "precision": _check_precision,
}


def test_every_experiment_has_a_check():
    assert set(CHECKS) == set(experiments.NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", experiments.NAMES)
def test_quick_experiment_writes_sensible_results(name, tmp_path):
    dataset = experiments.get(name).QUICK["dataset"]
    try:
        load(dataset, download=False)
    except DatasetNotFoundError as err:  # Fashion-MNIST has no mirror reachable everywhere
        pytest.skip(f"{dataset} is not on this machine: {err}")
    out = tmp_path / name
    assert experiment.main([name, "--quick", "--out", str(out)]) == 0
    saved = json.loads((out / common.RESULTS_FILE).read_text())
    conditions = _check_common_structure(name, saved, out)
    CHECKS[name](saved, conditions)
