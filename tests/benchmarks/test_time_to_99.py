"""The time-to-99% benchmark runs on real MNIST and reports what it says (structure, not speed)."""

import json

import jax
import jax.numpy as jnp
import optax
import pytest
from benchmark_modules import import_benchmark


@pytest.fixture(scope="module")
def time_to_99():
    return import_benchmark("time_to_99")


def test_eval_batches_must_divide_the_split(time_to_99):
    with pytest.raises(ValueError, match="divide 10"):
        time_to_99._whole_split_correct(None, jnp.zeros((10, 2)), jnp.zeros(10, jnp.int32), 3)


@pytest.mark.parametrize("flags", [["--target", "1.5"], ["--steps", "0"],
                                   ["--label-smoothing", "1.5"], ["--b1", "-0.1"],
                                   ["--b2", "1.0"]], ids=lambda f: f[0])
def test_bad_flags_are_refused(time_to_99, flags):
    # --quick: should the check go, the run falls on the small subset, not all of MNIST.
    with pytest.raises(ValueError, match=flags[0]):
        time_to_99.main([*flags, "--quick"])


def test_a_run_that_misses_the_target_counts_as_infinitely_slow(time_to_99):
    runs = [{"wall_s": 5.0, "reached": True}, {"wall_s": 1.0, "reached": False},
            {"wall_s": 7.0, "reached": True}]
    assert time_to_99.median_wall_s(runs) == 7.0
    assert time_to_99.median_wall_s(runs[:2]) == float("inf")
    assert time_to_99.median_wall_s(runs[::2]) == 6.0


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_the_recipes_betas_reach_the_optimizer(time_to_99, name):
    optimizer = time_to_99._optimizer(name, 0.1, 0.8, 0.95)
    params = {"w": jnp.zeros(3)}
    _, state = optimizer.update({"w": jnp.full(3, 2.0)}, optimizer.init(params), params)
    (adam_state,) = [s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "nu"))
                     if hasattr(s, "nu")]
    # One step from zero moments: mu = (1 - b1) g, nu = (1 - b2) g².
    assert jnp.allclose(adam_state.mu["w"], 0.2 * 2.0)
    assert jnp.allclose(adam_state.nu["w"], 0.05 * 4.0)


def test_label_smoothing_picks_the_smoothed_loss(time_to_99):
    from jaxtricks.models import CNN
    from jaxtricks.training.steps import make_train_step
    from jaxtricks.tricks.soft_targets import smoothed_cross_entropy

    model, tx = CNN(features=(4,), hidden=8), optax.sgd(0.1)
    smoothed = time_to_99._train_step({"label_smoothing": 0.05}, model, tx)
    # make_train_step gives the same function for equal arguments.
    assert smoothed is make_train_step(model, tx, loss_fn=smoothed_cross_entropy(0.05))
    assert time_to_99._train_step({}, model, tx) is make_train_step(model, tx)
    assert time_to_99._train_step({"label_smoothing": 0.0}, model, tx) is not smoothed


@pytest.mark.slow
def test_quick_run_stops_at_the_target(time_to_99, capsys):
    records = time_to_99.main(["--quick", "--seeds", "3", "7", "--b2", "0.98"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == json.loads(json.dumps(records))
    (record,) = records  # --quick keeps one seed
    assert record["seed"] == 3 and record["target"] == 0.5 and record["config"]["b2"] == 0.98
    assert record["train_examples"] == 2048 and record["test_examples"] == 1000
    steps = [point[0] for point in record["curve"]]
    accuracies = [point[2] for point in record["curve"]]
    assert steps == list(range(4, 4 * len(steps) + 1, 4)) and steps[-1] == record["step"]
    assert record["test_accuracy"] == accuracies[-1]
    # Reached means the last check was the first at or above the target, and nothing before.
    if record["reached"]:
        assert accuracies[-1] >= 0.5 and all(a < 0.5 for a in accuracies[:-1])
    else:
        assert record["step"] == 16 and all(a < 0.5 for a in accuracies)
    parts = record["setup_s"] + record["compile_s"] + record["train_s"] + record["eval_s"]
    assert 0 < record["compile_train_s"] <= record["compile_s"]
    assert parts <= record["wall_s"] < parts + 5
    assert record["images_per_s"] == pytest.approx(128 * record["step"] / record["train_s"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cycle", "checks"),
    [
        # 16 steps an epoch, a cycle of 24: checks every 5 steps, at the epoch's end (16) and
        # where the cycle ends (24), which an unreachable target lets the run get to.
        (dict(epochs=1.5, runner="scan"), [5, 10, 15, 16, 20, 24]),
        # A cycle in steps overrides epochs: 20 steps end 4 into the second epoch, checked there.
        (dict(epochs=3, steps=20, label_smoothing=0.1), [5, 10, 15, 16, 20]),
    ],
    ids=["epochs", "steps"],
)
def test_a_fractional_cycle_ends_mid_epoch_and_checks_where_it_ends(
        time_to_99, monkeypatch, cycle, checks):
    train_x, train_y, test_x, test_y = time_to_99.mnist(train_examples=2048, test_examples=1000)
    recipe = dict(
        model=dict(features=(4, 8), hidden=16, use_batch_norm=True), optimizer="adam",
        peak_lr=4e-3, b1=0.8, b2=0.95, batch_size=128, eval_every=5, eval_from=0, **cycle,
    )
    built = []
    optimizer = time_to_99._optimizer
    monkeypatch.setattr(time_to_99, "_optimizer",
                        lambda *args: built.append(args[:1] + args[2:]) or optimizer(*args))
    record = time_to_99.run(recipe, 0, train_x, train_y, test_x, test_y, target=1.01)
    assert built == [("adam", 0.8, 0.95)]  # the recipe's betas, in their places
    assert not record["reached"]
    assert [point[0] for point in record["curve"]] == checks
    assert record["step"] == checks[-1] and record["epochs"] == checks[-1] / 16
