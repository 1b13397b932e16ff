"""Checks a user runs on a gradient transformation, initializer or schedule of their own.

Each check runs the object on the inputs it is given and raises ``AssertionError`` naming the
property that failed and, where it is about one array, the leaf's path in the pytree (chex's
assertions, and ours, put it in the message). The properties:

- a transformation (:func:`check_transform`): ``"dtypes"`` (updates have the gradients'
  structure, shapes and dtypes), ``"state"`` (the state keeps its structure, shapes and dtypes
  from step to step), ``"finite"`` (finite inputs give finite updates and states; an infinity
  in ``init``'s state, such as a best-so-far metric, may stay), ``"jit"``
  (``jit(init)`` and ``jit(update)`` equal eager calls), ``"retrace"`` (the jitted update is
  not compiled again on the second call, fed the state the first returned), ``"vmap"``
  (``jit(vmap(init))`` and ``jit(vmap(update))`` over a batch equal a loop over it),
  ``"empty_leaves"`` (``None`` and zero-size leaves pass through and change nothing else) and
  ``"reference"`` (the updates equal another transformation's);
- an initializer (:func:`check_initializer`): ``"shape"``, ``"dtype"``, ``"finite"``,
  ``"deterministic"`` (a function of the key), ``"random"`` (another key, other values) and
  ``"jit"``;
- a schedule (:func:`check_schedule`): ``"scalar"`` (a scalar of the expected dtype),
  ``"finite"``, ``"nonnegative"``, ``"jit"`` and ``"vmap"``.

**Tolerances.** The same formula evaluated twice (jitted, where XLA fuses and may contract
``a·b + c`` into one rounding, and op by op; batched and not) can round differently, so the
comparisons allow, for each leaf, ``|actual − expected| ≤ ulps · (eps · S + tiny)``: ``eps``
and ``tiny`` are the leaf dtype's machine epsilon and smallest normal number, and ``S`` is the
largest magnitude among the expected leaf and the inputs it was computed from (the gradient,
the parameter, the previous state), because cancellation (``g + γv``, ``g + λw``) makes a result
far smaller than the terms its rounding came from. ``tiny`` is there because XLA:CPU flushes
subnormal intermediates to zero in some programs and not in others. By default ``ulps`` is
:func:`default_ulps` of the leaf's dtype: 16 for 32- and 64-bit floats (and complex64/128,
per component), since vectorized transcendental functions in jitted code differed from the
eager ones by up to 8 float32 epsilons of the value's scale on an AVX-512 Xeon
(tests/properties/test_schedule_properties.py), and 2 for 16-bit floats (bfloat16, float16),
which round a float32 computation once at the end: a float32 difference of a few epsilons
flips that rounding by at most one unit (seen for bfloat16 in tests/tricks/test_averaging.py).

Inputs may be NumPy or JAX pytrees; they are put on the device with ``jax.device_put`` before
use, so the transformation sees JAX arrays, as in training. Compiled functions are cached per
function object (the transformation's ``init`` and ``update``), so a check run on many inputs
with one transformation compiles once per structure of the inputs: build the transformation
once, outside a Hypothesis test's body, where you can.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NamedTuple, cast

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

TRANSFORM_CHECKS = (
    "dtypes", "state", "finite", "jit", "retrace", "vmap", "empty_leaves", "reference",
)
INITIALIZER_CHECKS = ("shape", "dtype", "finite", "deterministic", "random", "jit")
SCHEDULE_CHECKS = ("scalar", "finite", "nonnegative", "jit", "vmap")

# The problems of the batch check_transform builds for "vmap" from one problem: parameters and
# gradients times these factors (exact in binary floating point), gradients rotated by one
# step per problem, so that no two problems of the batch are the same.
_BATCH_FACTORS = (1.0, -1.0, 2.0)


class Trajectory(NamedTuple):
    """What a transformation did over a few steps (see :func:`run_transform`).

    ``params[k]`` and ``states[k]`` are what step ``k`` was given, ``updates[k]`` what it
    returned; ``params`` and ``states`` end with the values after the last step.
    """

    params: list[Any]
    updates: list[Any]
    states: list[Any]


def run_transform(
    transform: optax.GradientTransformation,
    params: Any,
    grads: Sequence[Any],
    *,
    update: Callable[..., Any] | None = None,
    extra_args: dict[str, Any] | None = None,
) -> Trajectory:
    """Runs a transformation from ``init(params)`` through one step per gradient, as training.

    Math: ``s₀ = init(p₀)``; ``(u_k, s_{k+1}) = update(g_k, s_k, p_k)``;
    ``p_{k+1} = apply_updates(p_k, u_k)``, so that weight decay sees the parameters move.

    Args:
      transform: an ``optax.GradientTransformation``.
      params: the initial parameters, a pytree of NumPy or JAX arrays.
      grads: one gradient pytree (the structure of ``params``) for each step.
      update: the function called in place of ``transform.update`` (a jitted one, say).
      extra_args: keyword arguments for every ``update`` call (``value=loss``, say).

    Returns:
      A :class:`Trajectory` of ``len(grads)`` steps.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxtricks as jt
      >>> run = run_transform(jt.sgd(0.5), jnp.ones(2), [jnp.array([1.0, -1.0])] * 2)
      >>> run.params[-1].tolist()
      [0.0, 2.0]
    """
    update = transform.update if update is None else update
    extra_args = {} if extra_args is None else extra_args
    params = jax.device_put(params)
    trajectory = Trajectory([params], [], [transform.init(params)])
    for g in grads:
        updates, state = update(jax.device_put(g), trajectory.states[-1], params, **extra_args)
        trajectory.updates.append(updates)
        trajectory.states.append(state)
        params = _apply(params, updates)
        trajectory.params.append(params)
    return trajectory


def _apply(params: Any, updates: Any) -> Any:
    """``optax.apply_updates`` under standard promotion.

    Updates of the wrong dtype are the "dtypes" check's to report, with the leaf's path; under
    strict promotion they would fail here first, with a message about promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        return optax.apply_updates(params, updates)


def default_ulps(dtype: Any) -> int:
    """The default tolerance of the comparisons, in units of ``dtype``'s machine epsilon.

    Math: 2 for 16-bit floats (bfloat16, float16), 16 for wider ones and for complex dtypes
    (whose parts are float32 or float64); why is in this module's docstring.

    Args:
      dtype: a real or complex floating-point dtype.

    Returns:
      An int.

    Examples:
      >>> import jax.numpy as jnp
      >>> default_ulps(jnp.bfloat16), default_ulps(jnp.float32), default_ulps(jnp.complex64)
      (2, 16, 16)
    """
    return 2 if jnp.finfo(dtype).bits <= 16 else 16


def tolerance(dtype: Any, scale: float, *, ulps: float | None = None) -> float:
    """The absolute tolerance of a comparison of ``dtype`` values computed from terms of size S.

    Math: ``ulps · (eps · S + tiny)``, with ``eps`` and ``tiny`` the dtype's machine epsilon
    and smallest normal number, and ``ulps`` by default :func:`default_ulps` of the dtype.

    Args:
      dtype: a real or complex floating-point dtype.
      scale: S ≥ 0, the largest magnitude among the value and the terms it was computed from.
      ulps: the number of epsilons allowed; ``None`` for the dtype's default.

    Returns:
      A float.

    Examples:
      >>> import jax.numpy as jnp
      >>> tolerance(jnp.bfloat16, 4.0) == 2 * (2**-7 * 4.0 + 2**-126)
      True
    """
    info = jnp.finfo(dtype)
    ulps = default_ulps(dtype) if ulps is None else ulps
    return ulps * (float(info.eps) * scale + float(info.tiny))


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _is_inexact(x: Any) -> bool:
    # jnp.issubdtype, not NumPy's: NumPy does not count bfloat16 as a floating type.
    return not _is_key(x) and jnp.issubdtype(np.asarray(x).dtype, jnp.inexact)


def _wide(x: Any) -> np.ndarray:
    """The array in float64, or complex128 for a complex one, for exact comparisons."""
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _magnitude(tree: Any) -> float:
    """The largest finite absolute value among the tree's floating-point leaves (0 for none).

    Infinities (a best-so-far metric starting at +inf) are left out: they have no rounding
    error to scale, and compare equal only to themselves.
    """
    sizes = (np.abs(_wide(x)) for x in jax.tree.leaves(tree) if _is_inexact(x))
    return max((float(np.max(s, where=np.isfinite(s), initial=0.0)) for s in sizes),
               default=0.0)


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    ulps: float | None = None,
    inputs: Sequence[Any] = (),
    floor: float = 0.0,
) -> None:
    """Asserts two pytrees equal up to rounding: structure, shapes and dtypes, then values.

    Math: for every floating-point leaf, ``|a − e| ≤ tolerance(dtype, S, ulps=ulps)`` elementwise
    with ``S = max(floor, max|e|, max|x| for the same leaf x of each tree of inputs)``; other
    leaves (counters, flags, PRNG keys) must be equal.

    Args:
      actual: a pytree of arrays.
      expected: a pytree of arrays.
      ulps: the number of epsilons allowed; ``None`` for each leaf dtype's
        :func:`default_ulps`.
      inputs: pytrees with the structure of ``expected`` whose leaves the expected leaf was
        computed from, and so whose magnitudes its rounding errors scale with.
      floor: a lower bound on S for every leaf (the size of a term that is not a leaf of
        ``inputs``, such as the gradient for a state).

    Returns:
      None; raises ``AssertionError`` naming the first leaf that differs.

    Examples:
      >>> import jax.numpy as jnp
      >>> assert_trees_close({"w": jnp.float32(1.0 + 2**-22)}, {"w": jnp.float32(1.0)})
      >>> assert_trees_close({"w": jnp.float32(1.01)}, {"w": jnp.float32(1.0)})
      Traceback (most recent call last):
      AssertionError: ...
    """
    chex.assert_trees_all_equal_structs(actual, expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    with_paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    columns = [jax.tree.leaves(actual), *(jax.tree.leaves(tree) for tree in inputs)]
    for (path, e), a, *others in zip(with_paths, *columns, strict=True):
        where = f"leaf {jax.tree_util.keystr(path) or '(root)'}"
        if _is_key(e):
            np.testing.assert_array_equal(
                jax.random.key_data(a), jax.random.key_data(e), err_msg=where
            )
        elif not _is_inexact(e):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=where)
        else:
            scale = max(floor, _magnitude(e), *(_magnitude(x) for x in others))
            atol = tolerance(np.asarray(e).dtype, scale, ulps=ulps)
            np.testing.assert_allclose(
                _wide(a), _wide(e), rtol=0, atol=atol, err_msg=f"{where} (atol {atol:.3g})"
            )


def _assert_finite(
    tree: Any, *, allow_infinite: bool = False, where_finite: Any = None
) -> None:
    """Asserts the tree's floating-point leaves are finite, naming the first that is not.

    With ``allow_infinite`` only NaN fails; with ``where_finite`` (a tree of the same
    structure) only the leaves that are finite there are checked.
    """
    with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    masks: list[bool | np.bool_]
    if where_finite is None:
        masks = [True] * len(with_paths)
    else:
        masks = [not _is_inexact(x) or np.all(np.isfinite(_wide(x)))
                 for x in jax.tree.leaves(where_finite)]
    for (path, x), check in zip(with_paths, masks, strict=True):
        if not (check and _is_inexact(x)):
            continue
        bad = np.isnan(_wide(x)) if allow_infinite else ~np.isfinite(_wide(x))
        if np.any(bad):
            what = "holds NaN" if allow_infinite else "is not finite"
            raise AssertionError(
                f"leaf {jax.tree_util.keystr(path) or '(root)'} {what}: {np.asarray(x)}"
            )


@contextlib.contextmanager
def _property(name: str, where: str = "") -> Iterator[None]:
    """Prefixes an ``AssertionError`` raised inside with the property's name."""
    try:
        yield
    except AssertionError as error:
        place = f" ({where})" if where else ""
        raise AssertionError(f"property {name!r} failed{place}: {error}") from error


def _select(checks: Collection[str] | None, known: Sequence[str], name: str) -> set[str]:
    if checks is None:
        return set(known)
    if isinstance(checks, str):
        raise ValueError(f"{name}: expected a collection of check names, got the string "
                         f"{checks!r}; write [{checks!r}]")
    unknown = sorted(set(checks) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown checks {unknown}; expected some of {list(known)}")
    return set(checks)


@functools.lru_cache(maxsize=256)
def _compiled(fn: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """``fn`` under ``jit`` (``kind`` "jit") or ``jit(vmap)`` ("vmap"), cached per function.

    For an update ("jit_update", "vmap_update") the extra keyword arguments come as a fourth
    argument, a dict, which ``vmap`` does not map over.
    """
    if kind in ("jit", "vmap"):
        return jax.jit(fn if kind == "jit" else jax.vmap(fn))

    def update(updates, state, params, extra_args):
        return fn(updates, state, params, **extra_args)

    return jax.jit(update if kind == "jit_update" else jax.vmap(update, (0, 0, 0, None)))


class _Calls(NamedTuple):
    """A transformation's functions, eager, jitted and batched, with its extra arguments bound."""

    init: Callable[..., Any]
    update: Callable[..., Any]
    jit_init: Callable[..., Any]
    jit_update: Callable[..., Any]
    vmap_init: Callable[..., Any]
    vmap_update: Callable[..., Any]


def _calls(transform: optax.GradientTransformation, extra_args: dict[str, Any]) -> _Calls:
    # As optax.chain does: a transformation without extra arguments ignores them.
    transform = optax.with_extra_args_support(transform)
    jit_update = _compiled(transform.update, "jit_update")
    vmap_update = _compiled(transform.update, "vmap_update")
    return _Calls(
        init=transform.init,
        update=lambda g, s, p: transform.update(g, s, p, **extra_args),
        jit_init=_compiled(transform.init, "jit"),
        jit_update=lambda g, s, p: jit_update(g, s, p, extra_args),
        vmap_init=_compiled(transform.init, "vmap"),
        vmap_update=lambda g, s, p: vmap_update(g, s, p, extra_args),
    )


def _signature(tree: Any) -> tuple[Any, list[Any]]:
    """What ``jit`` compiles a function for: the tree's structure and its leaves' abstract
    values (shape, dtype and weak type)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [jax.typeof(leaf) for leaf in leaves]


def check_transform(
    transform: optax.GradientTransformation,
    params: Any,
    grads: Sequence[Any],
    *,
    reference: optax.GradientTransformation | None = None,
    checks: Collection[str] | None = None,
    ulps: float | None = None,
    batched: bool = False,
    extra_args: dict[str, Any] | None = None,
) -> None:
    """Checks that a gradient transformation keeps the contract users and Optax rely on.

    Runs ``transform`` from ``init(params)`` through one step per gradient
    (:func:`run_transform`) and checks, for the names in ``checks`` (all by default):

    - ``"dtypes"``: each step's updates have the gradients' structure, shapes and dtypes;
    - ``"state"``: every state has the structure, shapes and dtypes of ``init``'s;
    - ``"finite"``: every update is finite; ``init``'s state holds no NaN (an infinity may be a
      sentinel, such as a best-so-far metric), and its leaves that are finite stay finite;
    - ``"jit"``: ``jit(init)`` equals ``init``, and at every step ``jit(update)`` equals
      ``update`` from the same inputs (the run continues with the jitted results);
    - ``"retrace"``: fed the states it returned, ``jit(update)`` is not compiled again: they
      have the structure, shapes, dtypes and weak types of ``init``'s (a state whose weak
      types drift compiles the update a second time);
    - ``"vmap"``: over a batch of problems, ``jit(vmap(init))`` and ``jit(vmap(update))`` equal
      ``jit(init)`` and ``jit(update)`` on each problem (trees without arrays are skipped);
    - ``"empty_leaves"``: with the trees extended by a ``None`` leaf and zero-size leaves of
      every dtype they hold (``{"tree": t, "none": None, "empty": [...]}``), updates keep
      ``None`` and the zero-size shapes, and the updates of ``t`` are those without them;
    - ``"reference"`` (when ``reference`` is given): at every step ``transform``'s updates
      equal ``reference``'s, both fed the same gradients and the parameters that follow the
      reference's updates (each keeps its own state). The reference runs under standard dtype
      promotion: it is the trusted side, and Optax's own arithmetic needs it.

    Comparisons are within the module's dtype-aware tolerance (``ulps`` epsilons of the
    scale of the terms; see :func:`assert_trees_close`).

    Args:
      transform: an ``optax.GradientTransformation`` (or ``...ExtraArgs``).
      params: the initial parameters, a pytree of NumPy or JAX arrays (``None`` leaves allowed).
      grads: one gradient pytree with the structure of ``params`` for each step; "state" and
        "retrace" need two or more.
      reference: a transformation whose updates ``transform``'s must equal.
      checks: the names of the properties to check (a subset of ``TRANSFORM_CHECKS``);
        ``None`` for all (``"reference"`` only with a ``reference``).
      ulps: the tolerance in epsilons of each leaf's dtype; ``None`` for
        :func:`default_ulps`.
      batched: ``params`` and every gradient carry a leading axis of independent problems:
        "vmap" maps over it, the other checks run on each problem. Without it, "vmap" maps over
        three problems made from the one given (parameters and gradients times 1, −1 and 2,
        the gradients rotated by a step per problem).
      extra_args: keyword arguments for every ``update`` call (Optax's
        ``GradientTransformationExtraArgs``: ``value=loss`` for ``reduce_on_plateau``), the
        reference's included; a transformation that takes none ignores them, as in
        ``optax.chain``. ``vmap`` does not map over them.

    Returns:
      None; raises ``AssertionError`` naming the property, the step and the leaf that failed,
      or ``ValueError`` for an unknown check name.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jaxtricks as jt
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
      >>> grads = [jax.tree.map(lambda p: jnp.full_like(p, s), params) for s in (1.0, -0.5)]
      >>> check_transform(jt.sgd(0.1, momentum=0.9), params, grads,
      ...                 reference=optax.sgd(0.1, momentum=0.9))
      >>> in_half = optax.GradientTransformation(
      ...     lambda p: optax.EmptyState(),
      ...     lambda u, s, p=None: (jax.tree.map(lambda g: g.astype(jnp.float16), u), s))
      >>> check_transform(in_half, params, grads, checks=["dtypes"])
      Traceback (most recent call last):
      AssertionError: property 'dtypes' failed (step 0): ...
    """
    selected = _select(checks, TRANSFORM_CHECKS, "checks")
    if reference is None:
        if checks is not None and "reference" in selected:
            raise ValueError("checks: 'reference' needs a reference transformation")
        selected.discard("reference")
    grads = list(grads)
    if not grads:
        raise ValueError("grads: expected a gradient for one step or more, got none")
    calls = _calls(transform, {} if extra_args is None else dict(extra_args))
    if reference is not None:
        reference = _calls(reference, {} if extra_args is None else dict(extra_args))
    if batched:
        if "vmap" in selected:
            _check_vmap(calls, params, grads, ulps)
        for i in range(_batch_size(params, grads)):
            try:
                _check_one(calls, _take(params, i), [_take(g, i) for g in grads],
                           reference, selected - {"vmap"}, ulps)
            except AssertionError as error:
                raise AssertionError(f"problem {i} of the batch: {error}") from error
        return
    # A tree without arrays (``[None]``, ``{}``) has nothing for vmap to map over.
    if "vmap" in selected and jax.tree.leaves((params, grads)):
        batch_params, batch_grads = _batch_of_problems(params, grads)
        _check_vmap(calls, batch_params, batch_grads, ulps)
    _check_one(calls, params, grads, reference, selected - {"vmap"}, ulps)


def _run(calls: _Calls, params: Any, grads: list[Any]) -> Trajectory:
    return run_transform(
        optax.GradientTransformation(calls.init, calls.update), params, grads
    )


def _check_one(calls, params, grads, reference, selected, ulps):
    run = None
    if selected & {"dtypes", "state", "finite", "empty_leaves"}:
        run = _run(calls, params, grads)
        _check_contract(run, grads, selected)
    if selected & {"jit", "retrace"}:
        _check_jit(calls, params, grads, selected, ulps)
    if "empty_leaves" in selected:
        _check_empty_leaves(calls, params, grads, run, ulps)
    if "reference" in selected:
        _check_reference(calls, reference, params, grads, ulps)


def _check_contract(run: Trajectory, grads: list[Any], selected: set[str]) -> None:
    for step, (g, updates) in enumerate(zip(grads, run.updates, strict=True)):
        if "dtypes" in selected:
            with _property("dtypes", f"step {step}"):
                g = jax.device_put(g)
                chex.assert_trees_all_equal_structs(updates, g)
                chex.assert_trees_all_equal_shapes_and_dtypes(updates, g)
        if "finite" in selected:
            with _property("finite", f"step {step}, updates"):
                _assert_finite(updates)
    if "finite" in selected:
        with _property("finite", "init's state"):
            _assert_finite(run.states[0], allow_infinite=True)
    for step, state in enumerate(run.states[1:]):
        if "state" in selected:
            with _property("state", f"after step {step}, against init's"):
                chex.assert_trees_all_equal_structs(state, run.states[0])
                chex.assert_trees_all_equal_shapes_and_dtypes(state, run.states[0])
        if "finite" in selected:
            with _property("finite", f"state after step {step}"):
                _assert_finite(state, where_finite=run.states[0])


def _check_jit(calls, params, grads, selected, ulps):
    params = jax.device_put(params)
    state = calls.init(params)
    first = _signature(state)
    if "jit" in selected:
        with _property("jit", "init"):
            assert_trees_close(calls.jit_init(params), state, ulps=ulps, floor=_magnitude(params))
    for step, g in enumerate(grads):
        g = jax.device_put(g)
        updates, new_state = calls.jit_update(g, state, params)
        if "retrace" in selected and step > 0 and _signature(state) != first:
            with _property("retrace", f"step {step}"):
                raise AssertionError(
                    "jit(update) compiles again when fed the state it returned: its "
                    f"structure or abstract values changed from {first} to "
                    f"{_signature(state)}"
                )
        if "jit" in selected:
            expected, expected_state = calls.update(g, state, params)
            with _property("jit", f"step {step}, updates"):
                assert_trees_close(updates, expected, ulps=ulps, inputs=(g, params))
            with _property("jit", f"step {step}, state"):
                assert_trees_close(
                    new_state, expected_state, ulps=ulps, inputs=(state,), floor=_magnitude(g)
                )
        state = new_state
        params = _apply(params, updates)


def _take(tree: Any, i: int) -> Any:
    """Problem ``i`` of a batch: entry ``i`` of every leaf, as a NumPy array."""
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def _batch_size(params: Any, grads: list[Any]) -> int:
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves((params, grads))}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"params, grads: with batched=True every leaf needs the same leading batch axis, "
            f"found leading sizes {sorted(sizes, key=str)}"
        )
    return cast(int, sizes.pop())  # None was refused above


def _batch_of_problems(params: Any, grads: list[Any]) -> tuple[Any, list[Any]]:
    """Three problems stacked on a leading axis, made from one (see ``check_transform``)."""

    def stack(trees):
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)

    def times(tree, factor):
        return jax.tree.map(lambda x: np.asarray(x) * np.asarray(factor, np.asarray(x).dtype),
                            tree)

    n = len(grads)
    batch_params = stack([times(params, c) for c in _BATCH_FACTORS])
    batch_grads = [
        stack([times(grads[(k + i) % n], c) for i, c in enumerate(_BATCH_FACTORS)])
        for k in range(n)
    ]
    return batch_params, batch_grads


def _check_vmap(calls, params, grads, ulps):
    size = _batch_size(params, grads)
    batch_params = jax.device_put(params)
    state = calls.vmap_init(batch_params)
    looped_params = [jax.device_put(_take(params, i)) for i in range(size)]
    looped = [calls.jit_init(p) for p in looped_params]
    with _property("vmap", "init"):
        for i in range(size):
            assert_trees_close(
                _take(state, i), looped[i], ulps=ulps, floor=_magnitude(looped_params[i])
            )
    for step, g in enumerate(grads):
        updates, state = calls.vmap_update(jax.device_put(g), state, batch_params)
        updates, host_state = jax.device_get((updates, state))
        for i in range(size):
            g_i = jax.device_put(_take(g, i))
            expected, new_state = calls.jit_update(g_i, looped[i], looped_params[i])
            with _property("vmap", f"step {step}, problem {i}, updates"):
                assert_trees_close(
                    _take(updates, i), expected, ulps=ulps, inputs=(g_i, looped_params[i])
                )
            with _property("vmap", f"step {step}, problem {i}, state"):
                assert_trees_close(
                    _take(host_state, i), new_state, ulps=ulps, inputs=(looped[i],),
                    floor=_magnitude(g_i),
                )
            looped[i] = new_state


def _with_empty_leaves(tree: Any, dtypes: list[np.dtype]) -> dict[str, Any]:
    return {
        "tree": tree,
        "none": None,
        "empty": [np.zeros(shape, dtype) for dtype in dtypes for shape in ((0,), (2, 0))],
    }


def _check_empty_leaves(calls, params, grads, plain, ulps):
    dtypes = sorted({np.asarray(x).dtype for x in jax.tree.leaves(params)}, key=str)
    dtypes = dtypes or [np.dtype(np.float32)]
    wide_grads = [_with_empty_leaves(g, dtypes) for g in grads]
    wide = _run(calls, _with_empty_leaves(params, dtypes), wide_grads)
    for step, (g, updates) in enumerate(zip(wide_grads, wide.updates, strict=True)):
        with _property("empty_leaves", f"step {step}"):
            chex.assert_trees_all_equal_structs(updates, jax.device_put(g))
            chex.assert_trees_all_equal_shapes_and_dtypes(updates, jax.device_put(g))
            assert_trees_close(
                updates["tree"], plain.updates[step], ulps=ulps,
                inputs=(g["tree"], plain.params[step]),
            )


def _check_reference(calls, reference, params, grads, ulps):
    with jax.numpy_dtype_promotion("standard"):
        expected = _run(reference, params, grads)
    state = calls.init(jax.device_put(params))
    for step, g in enumerate(grads):
        g = jax.device_put(g)
        updates, state = calls.update(g, state, expected.params[step])
        with _property("reference", f"step {step}"):
            assert_trees_close(
                updates, expected.updates[step], ulps=ulps, inputs=(g, expected.params[step])
            )


def check_initializer(
    initializer: Callable[..., jax.Array],
    key: jax.Array,
    shape: Sequence[int],
    dtype: Any,
    *,
    random: bool = True,
    checks: Collection[str] | None = None,
    ulps: float | None = None,
) -> None:
    """Checks that an initializer ``init(key, shape, dtype)`` draws what was asked, from the key.

    For the names in ``checks`` (all by default):

    - ``"shape"`` and ``"dtype"``: the array has exactly ``shape`` and ``dtype``;
    - ``"finite"``: every value is finite;
    - ``"deterministic"``: the same key gives the same bits;
    - ``"random"`` (when ``random``): ``jax.random.fold_in(key, 1)`` gives other values (for
      four or more values, where equal bits by chance are practically impossible);
    - ``"jit"``: ``jit(init)`` with ``shape`` and ``dtype`` static equals the eager draw,
      within the dtype's tolerance of the largest value drawn.

    Args:
      initializer: a function ``(key, shape, dtype) -> array``, as ``jax.nn.initializers``'.
      key: a PRNG key.
      shape: the requested shape.
      dtype: the requested dtype.
      random: False for a constant initializer (zeros, ones): no "random" check.
      checks: the names of the properties to check (a subset of ``INITIALIZER_CHECKS``);
        ``None`` for all.
      ulps: the "jit" tolerance in epsilons of ``dtype``; ``None`` for :func:`default_ulps`.

    Returns:
      None; raises ``AssertionError`` naming the property that failed.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxtricks as jt
      >>> check_initializer(jt.glorot_uniform(), jax.random.key(0), (3, 4), jnp.bfloat16)
      >>> check_initializer(lambda key, shape, dtype: jnp.ones(shape),
      ...                   jax.random.key(0), (3, 4), jnp.bfloat16, random=False)
      Traceback (most recent call last):
      AssertionError: property 'dtype' failed: ...
    """
    selected = _select(checks, INITIALIZER_CHECKS, "checks")
    shape, dtype = tuple(shape), np.dtype(dtype)
    value = initializer(key, shape, dtype)
    if "shape" in selected:
        with _property("shape"):
            chex.assert_shape(value, shape)
    if "dtype" in selected:
        with _property("dtype"):
            chex.assert_type(value, dtype)
    if "finite" in selected:
        with _property("finite"):
            _assert_finite(value)
    if "deterministic" in selected:
        with _property("deterministic"):
            chex.assert_trees_all_equal(initializer(key, shape, dtype), value)
    if "random" in selected and random and np.size(value) >= 4:
        other = initializer(jax.random.fold_in(key, 1), shape, dtype)
        if np.array_equal(np.asarray(other), np.asarray(value)):
            with _property("random"):
                raise AssertionError("keys key and fold_in(key, 1) drew the same values")
    if "jit" in selected:
        jitted = _compiled_initializer(initializer)
        with _property("jit"):
            assert_trees_close(jitted(key, shape, dtype), value, ulps=ulps)


@functools.lru_cache(maxsize=256)
def _compiled_initializer(initializer: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    return jax.jit(initializer, static_argnums=(1, 2))


def check_schedule(
    schedule: Callable[[Any], Any],
    counts: Sequence[int],
    *,
    dtype: Any = jnp.float32,
    scale: float | None = None,
    checks: Collection[str] | None = None,
    ulps: float | None = None,
) -> None:
    """Checks that a schedule ``count -> value`` gives finite learning rates, also compiled.

    For the names in ``checks`` (all by default), at every count of ``counts``:

    - ``"scalar"``: the value is a scalar of ``dtype``;
    - ``"finite"`` and ``"nonnegative"``: it is finite and ≥ 0;
    - ``"jit"``: ``jit(schedule)(count)`` equals the eager value;
    - ``"vmap"``: ``vmap(schedule)(counts)`` equals the eager values;

    within ``tolerance(dtype, scale)``: the roundings of a schedule are relative to its scale
    (a cosine near its bottom cancels), not to each value.

    Args:
      schedule: a function of an int32 step count (Optax's ``Schedule``).
      counts: the counts to evaluate it at, ints or int32 scalar arrays within int32's range;
        eager calls get them as given, ``jit`` and ``vmap`` as int32 arrays.
      dtype: the dtype its values must have.
      scale: the schedule's scale; ``None`` for the largest of its values at ``counts``.
      checks: the names of the properties to check (a subset of ``SCHEDULE_CHECKS``);
        ``None`` for all.
      ulps: the tolerance in epsilons of ``dtype``; ``None`` for :func:`default_ulps`.

    Returns:
      None; raises ``AssertionError`` naming the property and the count that failed.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxtricks as jt
      >>> check_schedule(jt.warmup_cosine(0.0, 1.0, 10, 100), [0, 5, 10, 50, 100, 2**31 - 1])
      >>> falls_below_zero = lambda count: 0.1 - 0.01 * jnp.asarray(count, jnp.float32)
      >>> check_schedule(falls_below_zero, [0, 20], checks=["nonnegative"])
      Traceback (most recent call last):
      AssertionError: property 'nonnegative' failed (count 20): ...
    """
    selected = _select(checks, SCHEDULE_CHECKS, "checks")
    counts = list(counts)
    values = [schedule(count) for count in counts]
    for count, value in zip(counts, values, strict=True):
        if "scalar" in selected:
            with _property("scalar", f"count {count}"):
                chex.assert_shape(value, ())
                chex.assert_type(value, dtype)
        if "finite" in selected:
            with _property("finite", f"count {count}"):
                _assert_finite(value)
        if "nonnegative" in selected and not np.all(_wide(value).real >= 0):
            with _property("nonnegative", f"count {count}"):
                raise AssertionError(f"the value is {np.asarray(value)}")
    if not selected & {"jit", "vmap"}:
        return
    scale = _magnitude(values) if scale is None else scale
    if "jit" in selected:
        jitted = _compiled(schedule, "jit")
        for count, value in zip(counts, values, strict=True):
            with _property("jit", f"count {count}"):
                assert_trees_close(jitted(jnp.int32(count)), value, ulps=ulps, floor=scale)
    if "vmap" in selected:
        batched = _compiled(schedule, "vmap")(jnp.asarray([int(c) for c in counts], jnp.int32))
        for i, (count, value) in enumerate(zip(counts, values, strict=True)):
            with _property("vmap", f"count {count}"):
                assert_trees_close(batched[i], value, ulps=ulps, floor=scale)
