"""jaxtricks as a drop-in for Optax: the same optimizer, the same state, the same trajectory.

For every optimizer both libraries name, with the settings Optax's own tests use and more:
the state has Optax's layout (the same pytree, NamedTuples and field names, one ``count``
where Optax has one); a state saved from Optax with orbax restores into the jaxtricks
optimizer, which then continues Optax's trajectory; complex parameters, bfloat16
hyperparameters and Optax's extra ``update`` arguments work; and a snippet written with Optax
habits runs unchanged with ``jt.`` in place of ``optax.``.

Optax's arithmetic mixes weakly and strongly typed values, which the suite's strict dtype
promotion refuses: wherever Optax runs, the test enters ``jax.numpy_dtype_promotion
("standard")``.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxtricks as jt

PARAMS = {"w": jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]), "b": jnp.array([0.1, 0.2, 0.3])}

# (id, jaxtricks optimizer, Optax optimizer, same-class state): every shared optimizer, with
# the options Optax's signature adds. With a private Optax state class (rmsprop's
# bias_correction) jaxtricks has one of the same name and fields, not the same class.
PAIRS = [
    ("sgd", lambda m: m.sgd(0.1), True),
    ("sgd_momentum", lambda m: m.sgd(0.1, momentum=0.9), True),
    ("sgd_nesterov", lambda m: m.sgd(0.1, 0.9, True), True),
    ("sgd_schedule", lambda m: m.sgd(m.exponential_decay(0.1, 2, 0.5), 0.5), True),
    ("adam", lambda m: m.adam(1e-2), True),
    ("adam_nesterov_eps_root", lambda m: m.adam(1e-2, 0.8, 0.95, 1e-6, 1e-8, nesterov=True), True),
    ("adam_schedule", lambda m: m.adam(m.cosine_decay_schedule(1e-2, 10)), True),
    ("adamw", lambda m: m.adamw(1e-2), True),
    ("adamw_mask", lambda m: m.adamw(1e-2, weight_decay=0.1, mask={"w": True, "b": False}), True),
    (
        "adamw_scheduled_decay",
        lambda m: m.adamw(1e-2, weight_decay=m.piecewise_constant_schedule(0.1, {2: 0.5})),
        False,
    ),
    ("rmsprop", lambda m: m.rmsprop(1e-2), True),
    ("rmsprop_momentum_nesterov", lambda m: m.rmsprop(1e-2, momentum=0.9, nesterov=True), True),
    ("rmsprop_centered", lambda m: m.rmsprop(1e-2, centered=True, eps_in_sqrt=False), True),
    ("rmsprop_bias_correction", lambda m: m.rmsprop(1e-2, bias_correction=True), False),
    ("adagrad", lambda m: m.adagrad(0.5), True),
    ("clip_then_adam", lambda m: m.chain(m.clip_by_global_norm(1.0), m.adam(1e-2)), True),
    (
        "apply_if_finite_adam",
        lambda m: m.apply_if_finite(m.chain(m.clip(0.5), m.adam(1e-2)), 3),
        True,
    ),
]
IDS = [pair[0] for pair in PAIRS]


def _jt_namespace():
    """``jt`` where Optax has a name jaxtricks lacks (``chain``), so one builder serves both."""

    class Namespace:
        def __getattr__(self, name):
            return getattr(jt, name) if name in jt.__all__ else getattr(optax, name)

    return Namespace()


JT = _jt_namespace()


def _grads(steps, dtype=jnp.float32):
    rng = np.random.default_rng(7)

    def draw(p):
        g = rng.standard_normal(p.shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            g = g + 1j * rng.standard_normal(p.shape)
        return jnp.asarray(g, dtype)

    return [jax.tree.map(draw, PARAMS) for _ in range(steps)]


def _trajectory(tx, params, state, grads):
    """The params after each step, and the final state; Optax's arithmetic needs standard
    promotion, and one jit compiles the whole run."""

    @jax.jit
    def run(params, state, grads):
        seen = []
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            seen.append(params)
        return seen, state

    with jax.numpy_dtype_promotion("standard"):
        return run(params, state, grads)


def _assert_close(ours, theirs, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _paths(tree):
    """Each leaf's path as field names and keys: what orbax and optax.tree.get go by."""
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize(("name", "build", "same_class"), PAIRS, ids=IDS)
def test_state_is_laid_out_as_optaxs(name, build, same_class):
    ours, theirs = build(JT).init(PARAMS), build(optax).init(PARAMS)
    assert _paths(ours) == _paths(theirs)
    if same_class:
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_adam_has_one_count_as_optax():
    state = jt.adam(1e-3).init(PARAMS)
    assert int(optax.tree.get(state, "count")) == 0
    assert int(optax.tree.get(jt.adamw(1e-3).init(PARAMS), "count")) == 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "build", "same_class"), PAIRS, ids=IDS)
def test_same_trajectory_as_optax(name, build, same_class):
    grads = _grads(6)
    ours, theirs = build(JT), build(optax)
    ours_path, ours_state = _trajectory(ours, PARAMS, ours.init(PARAMS), grads)
    theirs_path, theirs_state = _trajectory(theirs, PARAMS, theirs.init(PARAMS), grads)
    _assert_close(ours_path, theirs_path)
    assert _paths(ours_state) == _paths(theirs_state)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "build", "same_class"), PAIRS, ids=IDS)
def test_an_optax_state_saved_with_orbax_restores_and_continues(name, build, same_class, tmp_path):
    grads = _grads(6)
    ours, theirs = build(JT), build(optax)
    # Three steps with Optax, saved; the rest with jaxtricks from the restored state.
    _, saved = _trajectory(theirs, PARAMS, theirs.init(PARAMS), grads[:3])
    params = _trajectory(theirs, PARAMS, theirs.init(PARAMS), grads[:3])[0][-1]
    directory = pathlib.Path(tmp_path) / "optax_state"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, saved)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory, ours.init(PARAMS))
    assert jax.tree.structure(restored) == jax.tree.structure(ours.init(PARAMS))
    continued, _ = _trajectory(ours, params, restored, grads[3:])
    expected, _ = _trajectory(theirs, params, saved, grads[3:])
    _assert_close(continued, expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "build"),
    [(n, b) for n, b, _ in PAIRS if n not in ("clip_then_adam", "apply_if_finite_adam")],
    ids=[n for n in IDS if n not in ("clip_then_adam", "apply_if_finite_adam")],
)
def test_complex_parameters_follow_optax(name, build):
    params = jax.tree.map(lambda p: p.astype(jnp.complex64) * (1 - 0.5j), PARAMS)
    grads = _grads(4, jnp.complex64)
    ours, theirs = build(JT), build(optax)
    ours_path, _ = _trajectory(ours, params, ours.init(params), grads)
    theirs_path, _ = _trajectory(theirs, params, theirs.init(params), grads)
    _assert_close(ours_path, theirs_path, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_scalar_hyperparameters_of_any_float_dtype(dtype):
    # Optax takes Adam's β^t in the hyperparameter's dtype, jaxtricks in float32: with a
    # bfloat16 β the two agree to bfloat16's precision, not float32's.
    rtol = 1e-2 if dtype == jnp.bfloat16 else 1e-3
    lr = jnp.asarray(1e-2, dtype)
    beta = jnp.asarray(0.9, dtype)
    grads = _grads(3)
    for build in (
        lambda m: m.adam(lr, b1=beta),
        lambda m: m.sgd(lr, momentum=beta),
        lambda m: m.rmsprop(lr, decay=beta),
        lambda m: m.adamw(lr, weight_decay=jnp.asarray(0.1, dtype)),
        lambda m: m.clip_by_global_norm(jnp.asarray(1.0, dtype)),
    ):
        ours, theirs = build(JT), build(optax)
        ours_path, _ = _trajectory(ours, PARAMS, ours.init(PARAMS), grads)
        theirs_path, _ = _trajectory(theirs, PARAMS, theirs.init(PARAMS), grads)
        _assert_close(ours_path, theirs_path, rtol=rtol, atol=1e-5)


# Every jaxtricks transform and optimizer, each built with arguments it accepts.
TRANSFORMS = {
    "sgd": lambda: jt.sgd(0.1, 0.9), "momentum": lambda: jt.momentum(0.1),
    "momentum_lesson": lambda: jt.momentum(0.1, form="lesson"),
    "nesterov": lambda: jt.nesterov(0.1), "adagrad": lambda: jt.adagrad(0.1),
    "rmsprop": lambda: jt.rmsprop(0.1), "adam": lambda: jt.adam(0.1),
    "adamw": lambda: jt.adamw(0.1), "normalized_sgd": lambda: jt.normalized_sgd(0.1),
    "scale_by_adam": jt.scale_by_adam, "scale_by_rms": jt.scale_by_rms,
    "scale_by_stddev": jt.scale_by_stddev, "scale_by_rss": jt.scale_by_rss,
    "trace": lambda: jt.trace(0.9), "scale_by_velocity": lambda: jt.scale_by_velocity(0.1),
    "scale_by_learning_rate": lambda: jt.scale_by_learning_rate(0.1),
    "scale_by_learning_rate_none": jt.scale_by_learning_rate,
    "add_decayed_weights": lambda: jt.add_decayed_weights(0.1),
    "add_l2_penalty": lambda: jt.add_l2_penalty(0.1),
    "clip": lambda: jt.clip(1.0), "clip_by_norm": lambda: jt.clip_by_norm(1.0),
    "clip_by_global_norm": lambda: jt.clip_by_global_norm(1.0),
    "normalize_by_update_norm": jt.normalize_by_update_norm,
    "apply_if_finite": lambda: jt.apply_if_finite(jt.adam(0.1), 2),
    "skip_nonfinite": lambda: jt.skip_nonfinite(jt.adam(0.1)),
    "scale_by_plateau": lambda: jt.scale_by_plateau(jt.epoch_plateau()),
    "reduce_on_plateau": jt.reduce_on_plateau,
    "gradient_health": jt.gradient_health, "update_health": jt.update_health,
    "flatten_by_dtype": lambda: jt.flatten_by_dtype(jt.adam(0.1)),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_transform_accepts_optax_extra_arguments(name):
    tx = TRANSFORMS[name]()
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    extra = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
    if name == "reduce_on_plateau":
        extra["value"] = jnp.asarray(1.0)
    updates, _ = tx.update(_grads(1)[0], tx.init(PARAMS), PARAMS, **extra)
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


def test_every_exported_transform_factory_is_covered():
    factories = {
        name for name in jt.__all__
        if callable(getattr(jt, name)) and not isinstance(getattr(jt, name), type)
        and getattr(getattr(jt, name), "__module__", "").startswith("jaxtricks.tricks.")
        and getattr(jt, name).__module__.rsplit(".", 1)[1] in {
            "adaptive", "clipping", "learning_rate", "nonfinite", "normalized_gradient",
            "optimizers", "velocity", "weight_decay",
        }
    }
    aliases = {"clip_by_value", "scale_by_adagrad", "scale_by_momentum", "normalize_by_global_norm"}
    assert factories - aliases - {"get_optimizer"} <= set(TRANSFORMS)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: m.clip_by_global_norm(1.0),
        lambda m: m.clip(0.5),
        lambda m: m.add_decayed_weights(0.1),
        lambda m: m.scale_by_learning_rate(0.1),
        lambda m: m.normalize_by_update_norm(),
    ],
    ids=["clip_by_global_norm", "clip", "add_decayed_weights", "scale_by_learning_rate",
         "normalize_by_update_norm"],
)
def test_stateless_transforms_update_with_no_state(build):
    grads = _grads(1)[0]
    ours, _ = build(JT).update(grads, None, PARAMS)
    with jax.numpy_dtype_promotion("standard"):
        theirs, _ = build(optax).update(grads, None, PARAMS)
    _assert_close(ours, theirs)


OPTAX_HABITS = """
opt = optax.sgd(optax.exponential_decay(0.1, 100, 0.5), momentum=0.9, nesterov=True)
decayed = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2, b1=0.8))
params = {"w": jnp.ones(3)}
states = [tx.init(params) for tx in (opt, decayed)]
for step in range(3):
    grads = {"w": jnp.array([1.0, -2.0, 0.5]) * (step + 1)}
    for i, tx in enumerate((opt, decayed)):
        updates, states[i] = tx.update(grads, states[i], params)
        params = optax.apply_updates(params, updates)
counts = [int(optax.tree.get(state, "count")) for state in states]
rate = float(optax.exponential_decay(1.0, 100, 0.5)(200))
"""


def test_optax_habits_run_unchanged_with_jt_in_place_of_optax():
    # Only the names jaxtricks exports are swapped: optax.chain, apply_updates and tree stay.
    shared = sorted((n for n in jt.__all__ if hasattr(optax, n)), key=len, reverse=True)
    ours_code = OPTAX_HABITS
    for name in shared:
        ours_code = ours_code.replace(f"optax.{name}(", f"jt.{name}(")
    assert ours_code.count("jt.") == 5
    results = []
    for code in (OPTAX_HABITS, ours_code):
        namespace = {"optax": optax, "jt": jt, "jnp": jnp}
        with jax.numpy_dtype_promotion("standard"):
            exec(code, namespace)
        results.append(namespace)
    theirs, ours = results
    assert ours["counts"] == theirs["counts"] == [3, 3]
    assert ours["rate"] == theirs["rate"] == 0.25
    _assert_close(ours["params"], theirs["params"])
