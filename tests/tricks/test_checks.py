"""Tests for jaxtricks.tricks.checks, and the validation every public factory performs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtricks.tricks import adaptive, checks, clipping, optimizers, velocity
from jaxtricks.tricks import learning_rate as lr_module
from jaxtricks.tricks import normalized_gradient as ng
from jaxtricks.tricks import weight_decay as wd

# --- the helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "good", "bad"),
    [
        ({"low": 0.0, "high": 1.0}, [0.0, 0.5, 1.0], [-1e-9, 1.0 + 1e-9]),
        ({"low": 0.0, "high": 1.0, "high_open": True}, [0.0, 0.999], [1.0, -1e-9]),
        ({"low": 0.0, "high": 1.0, "low_open": True}, [1e-30, 1.0], [0.0, 1.5]),
        ({"low": None, "high": 2.0}, [-1e30, 2.0], [2.5]),
        ({"low": -1.0, "high": None}, [-1.0, 1e30, math.inf], [-1.5, -math.inf]),
    ],
)
def test_check_range_ends(kwargs, good, bad):
    for value in good:
        assert checks.check_range("x", value, **kwargs) == value
    for value in bad:
        with pytest.raises(ValueError, match=r"^x must be in "):
            checks.check_range("x", value, **kwargs)


def test_check_range_message_shows_the_interval_and_the_value():
    with pytest.raises(ValueError) as info:
        checks.check_range("b1", 1.0, 0.0, 1.0, high_open=True)
    assert str(info.value) == "b1 must be in [0.0, 1.0), got 1.0"
    with pytest.raises(ValueError) as info:
        checks.check_range("eps", -2, 0.0, None, low_open=True)
    assert str(info.value) == "eps must be in (0.0, inf], got -2"


def test_nan_is_refused_even_without_bounds():
    with pytest.raises(ValueError, match=r"^x must be in .*got nan$"):
        checks.check_range("x", math.nan)


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(1), jnp.asarray(0.5), np.array(2.0)])
def test_numpy_and_jax_scalars_are_checked_and_returned_as_is(value):
    assert checks.check_positive("x", value) is value
    with pytest.raises(ValueError, match=r"^x must be in"):
        checks.check_positive("x", -value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "x: expected a number, got the bool True"),
        (np.ones(2), "x: expected a scalar, got an array of shape (2,)"),
        (1 + 2j, "x: expected a real number, got dtype complex128"),
        ("0.1", "x: expected a real number, got dtype <U3"),
    ],
)
def test_non_real_scalars_are_refused_with_the_name(value, message):
    with pytest.raises(ValueError) as info:
        checks.check_range("x", value, 0.0, 1.0)
    assert str(info.value) == message


def test_positive_and_nonnegative_refuse_zero_and_infinity_as_documented():
    assert checks.check_positive("x", 1e-30) == 1e-30
    assert checks.check_nonnegative("x", 0.0) == 0.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^x must be in"):
            checks.check_positive("x", bad)
    for bad in (-1e-30, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^x must be in"):
            checks.check_nonnegative("x", bad)


def test_schedules_and_tracers_pass_unchecked():
    schedule = lambda count: -1.0  # a bad value, but only known when it runs
    assert checks.check_positive("x", schedule) is schedule
    # Under jit the value is a tracer: it cannot be checked and must not raise.
    out = jax.jit(lambda v: checks.check_range("x", v, 0.0, 1.0) * 2)(jnp.float32(5.0))
    assert float(out) == 10.0


def test_check_choice():
    assert checks.check_choice("form", "lesson", ("heavy_ball", "lesson")) == "lesson"
    with pytest.raises(ValueError) as info:
        checks.check_choice("form", "polyak", ("heavy_ball", "lesson"))
    assert str(info.value) == "form must be one of ('heavy_ball', 'lesson'), got 'polyak'"


def test_check_callable():
    assert checks.check_callable("fn", abs) is abs
    with pytest.raises(TypeError, match=r"^fn must be callable, got float 0\.5$"):
        checks.check_callable("fn", 0.5)


def test_resolve_and_is_schedule():
    count = jnp.asarray(3, jnp.int32)
    assert checks.resolve(0.25, count) == 0.25
    assert int(checks.resolve(lambda c: c * 2, count)) == 6
    assert checks.is_schedule(lambda c: c)
    assert not checks.is_schedule(0.1)
    assert not checks.is_schedule(jnp.asarray(0.1))


# --- every public factory validates its arguments at construction -------------------------

LEARNING_RATE = (-0.1, math.nan, math.inf)
CLOSED_UNIT = (-0.1, 1.5, math.nan)  # [0, 1]
OPEN_UNIT = (-0.1, 1.0, math.nan)  # [0, 1)
POSITIVE = (0.0, -1.0, math.nan)
NONNEGATIVE = (-0.1, math.nan)

# (factory, argument name, bad values, build: value -> transform with that argument set)
FACTORY_ARGUMENTS = [
    ("scale_by_momentum", "decay", CLOSED_UNIT, lambda v: velocity.scale_by_momentum(v)),
    ("trace", "decay", CLOSED_UNIT, lambda v: velocity.trace(v)),
    ("scale_by_velocity", "learning_rate", LEARNING_RATE, lambda v: velocity.scale_by_velocity(v)),
    ("scale_by_velocity", "momentum", CLOSED_UNIT, lambda v: velocity.scale_by_velocity(0.1, v)),
    (
        "scale_by_adagrad",
        "initial_accumulator_value",
        NONNEGATIVE,
        lambda v: adaptive.scale_by_adagrad(initial_accumulator_value=v),
    ),
    ("scale_by_adagrad", "eps", POSITIVE, lambda v: adaptive.scale_by_adagrad(eps=v)),
    (
        "scale_by_rss",
        "initial_accumulator_value",
        NONNEGATIVE,
        lambda v: adaptive.scale_by_rss(initial_accumulator_value=v),
    ),
    ("scale_by_rss", "eps", POSITIVE, lambda v: adaptive.scale_by_rss(eps=v)),
    ("scale_by_stddev", "decay", OPEN_UNIT, lambda v: adaptive.scale_by_stddev(decay=v)),
    ("scale_by_stddev", "eps", POSITIVE, lambda v: adaptive.scale_by_stddev(eps=v)),
    (
        "scale_by_stddev",
        "initial_scale",
        NONNEGATIVE,
        lambda v: adaptive.scale_by_stddev(initial_scale=v),
    ),
    ("scale_by_rms", "decay", OPEN_UNIT, lambda v: adaptive.scale_by_rms(decay=v)),
    ("scale_by_rms", "eps", POSITIVE, lambda v: adaptive.scale_by_rms(eps=v)),
    (
        "scale_by_rms",
        "initial_scale",
        NONNEGATIVE,
        lambda v: adaptive.scale_by_rms(initial_scale=v),
    ),
    ("scale_by_adam", "b1", OPEN_UNIT, lambda v: adaptive.scale_by_adam(b1=v)),
    ("scale_by_adam", "b2", OPEN_UNIT, lambda v: adaptive.scale_by_adam(b2=v)),
    ("scale_by_adam", "eps", POSITIVE, lambda v: adaptive.scale_by_adam(eps=v)),
    ("scale_by_adam", "eps_root", NONNEGATIVE, lambda v: adaptive.scale_by_adam(eps_root=v)),
    ("clip_by_value", "max_delta", POSITIVE, lambda v: clipping.clip_by_value(v)),
    ("clip", "max_delta", POSITIVE, lambda v: clipping.clip(v)),
    ("clip_by_norm", "max_norm", POSITIVE, lambda v: clipping.clip_by_norm(v)),
    ("clip_by_global_norm", "max_norm", POSITIVE, lambda v: clipping.clip_by_global_norm(v)),
    ("normalize_by_global_norm", "eps", POSITIVE, lambda v: ng.normalize_by_global_norm(v)),
    ("normalize_by_update_norm", "eps", POSITIVE, lambda v: ng.normalize_by_update_norm(1.0, v)),
    (
        "normalize_by_update_norm",
        "scale_factor",
        (0.0, math.nan, math.inf),
        lambda v: ng.normalize_by_update_norm(v),
    ),
    (
        "scale_by_learning_rate",
        "learning_rate",
        LEARNING_RATE,
        lambda v: lr_module.scale_by_learning_rate(v),
    ),
    ("add_decayed_weights", "weight_decay", NONNEGATIVE, lambda v: wd.add_decayed_weights(v)),
    ("add_l2_penalty", "coefficient", NONNEGATIVE, lambda v: wd.add_l2_penalty(v)),
    ("sgd", "learning_rate", LEARNING_RATE, lambda v: optimizers.sgd(v)),
    ("momentum", "learning_rate", LEARNING_RATE, lambda v: optimizers.momentum(v)),
    ("momentum", "momentum", CLOSED_UNIT, lambda v: optimizers.momentum(0.1, v)),
    (
        "momentum_lesson",
        "learning_rate",
        LEARNING_RATE,
        lambda v: optimizers.momentum(v, form="lesson"),
    ),
    (
        "momentum_lesson",
        "momentum",
        CLOSED_UNIT,
        lambda v: optimizers.momentum(0.1, v, form="lesson"),
    ),
    ("nesterov", "learning_rate", LEARNING_RATE, lambda v: optimizers.nesterov(v)),
    ("nesterov", "momentum", CLOSED_UNIT, lambda v: optimizers.nesterov(0.1, v)),
    ("adagrad", "learning_rate", LEARNING_RATE, lambda v: optimizers.adagrad(v)),
    (
        "adagrad",
        "initial_accumulator_value",
        NONNEGATIVE,
        lambda v: optimizers.adagrad(0.1, initial_accumulator_value=v),
    ),
    ("adagrad", "eps", POSITIVE, lambda v: optimizers.adagrad(0.1, eps=v)),
    ("rmsprop", "learning_rate", LEARNING_RATE, lambda v: optimizers.rmsprop(v)),
    ("rmsprop", "decay", OPEN_UNIT, lambda v: optimizers.rmsprop(0.1, decay=v)),
    ("rmsprop", "eps", POSITIVE, lambda v: optimizers.rmsprop(0.1, eps=v)),
    ("rmsprop", "initial_scale", NONNEGATIVE, lambda v: optimizers.rmsprop(0.1, initial_scale=v)),
    ("rmsprop", "momentum", CLOSED_UNIT, lambda v: optimizers.rmsprop(0.1, momentum=v)),
    ("sgd", "momentum", CLOSED_UNIT, lambda v: optimizers.sgd(0.1, momentum=v)),
    ("adam", "learning_rate", LEARNING_RATE, lambda v: optimizers.adam(v)),
    ("adam", "b1", OPEN_UNIT, lambda v: optimizers.adam(0.1, b1=v)),
    ("adam", "b2", OPEN_UNIT, lambda v: optimizers.adam(0.1, b2=v)),
    ("adam", "eps", POSITIVE, lambda v: optimizers.adam(0.1, eps=v)),
    ("adam", "eps_root", NONNEGATIVE, lambda v: optimizers.adam(0.1, eps_root=v)),
    ("adamw", "learning_rate", LEARNING_RATE, lambda v: optimizers.adamw(v)),
    ("adamw", "b1", OPEN_UNIT, lambda v: optimizers.adamw(0.1, b1=v)),
    ("adamw", "b2", OPEN_UNIT, lambda v: optimizers.adamw(0.1, b2=v)),
    ("adamw", "eps", POSITIVE, lambda v: optimizers.adamw(0.1, eps=v)),
    ("adamw", "eps_root", NONNEGATIVE, lambda v: optimizers.adamw(0.1, eps_root=v)),
    ("adamw", "weight_decay", NONNEGATIVE, lambda v: optimizers.adamw(0.1, weight_decay=v)),
    ("normalized_sgd", "learning_rate", LEARNING_RATE, lambda v: optimizers.normalized_sgd(v)),
    ("normalized_sgd", "eps", POSITIVE, lambda v: optimizers.normalized_sgd(0.1, eps=v)),
    ("get", "learning_rate", LEARNING_RATE, lambda v: optimizers.get("adam", v)),
    ("get", "b1", OPEN_UNIT, lambda v: optimizers.get("adam", 0.1, b1=v)),
]

BAD_VALUE_CASES = [
    pytest.param(build, name, value, id=f"{factory}-{name}={value}")
    for factory, name, values, build in FACTORY_ARGUMENTS
    for value in values
]
ARGUMENT_IDS = [f"{factory}-{name}" for factory, name, _, _ in FACTORY_ARGUMENTS]


@pytest.mark.parametrize(("build", "name", "value"), BAD_VALUE_CASES)
def test_factories_refuse_bad_hyperparameters_naming_argument_and_value(build, name, value):
    with pytest.raises(ValueError) as info:
        build(value)
    message = str(info.value)
    # The message starts with this argument's name (not another one's, e.g. "eps" for
    # "eps_root") and shows the value.
    assert message.startswith(f"{name} "), message
    assert message.endswith(f"got {value!r}"), message


def test_every_public_factory_is_in_the_validation_table():
    # A new factory added to a module must be added to FACTORY_ARGUMENTS as well.
    covered = {factory.removesuffix("_lesson") for factory, _, _, _ in FACTORY_ARGUMENTS}
    modules = [adaptive, clipping, velocity, ng, lr_module, wd]
    factories = {
        name
        for module in modules
        for name, value in vars(module).items()
        if callable(value)
        and not name.startswith("_")
        and getattr(value, "__module__", None) == module.__name__
        and not isinstance(value, type)
    }
    assert {"scale_by_velocity", "scale_by_rms", "clip_by_norm", "add_l2_penalty"} <= factories
    assert factories | set(optimizers.OPTIMIZERS) | {"get"} <= covered


def test_unknown_momentum_form_is_refused():
    with pytest.raises(ValueError) as info:
        optimizers.momentum(0.1, form="polyak")
    assert str(info.value).startswith("form ")
    assert "'polyak'" in str(info.value)


@pytest.mark.parametrize("build", [row[3] for row in FACTORY_ARGUMENTS], ids=ARGUMENT_IDS)
def test_schedules_pass_through_unchecked(build):
    # What a schedule returns is only known when it runs; construction accepts it.
    assert isinstance(build(lambda count: -1.0), optax.GradientTransformation)


@pytest.mark.parametrize(
    ("build", "bad"),
    [
        pytest.param(row[3], row[2][0], id=i)
        for row, i in zip(FACTORY_ARGUMENTS, ARGUMENT_IDS, strict=True)
    ],
)
def test_traced_values_pass_through_unchecked(build, bad):
    # Under jit (as with optax.inject_hyperparams) the value is a tracer: built, initialized
    # and applied without a check. eval_shape traces without compiling.
    params = {"w": jnp.ones(3)}

    def step(value):
        tx = build(value)
        return tx.update(params, tx.init(params), params)[0]

    shapes = jax.eval_shape(step, jnp.float32(bad))
    assert shapes["w"].shape == (3,)


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        (True, 0, None, "must be an integer, got True"),
        (3.0, 0, None, "must be an integer, got 3.0"),
        (np.ones(1, np.int32), 0, None, "must be an integer"),
        (0, 1, None, r"must be an integer >= 1, got 0"),
        (9, 1, 8, r"must be an integer in \[1, 8\], got 9"),
    ],
)
def test_check_int_refuses_non_integers_and_out_of_range(value, low, high, message):
    with pytest.raises(ValueError, match=f"n {message}"):
        checks.check_int("n", value, low, high)


def test_check_int_returns_a_python_int_and_adds_why():
    assert type(checks.check_int("n", np.int64(5), 0)) is int
    with pytest.raises(ValueError, match=r"n must be an integer >= 2 \(two at least\), got 1"):
        checks.check_int("n", 1, 2, why=" (two at least)")
