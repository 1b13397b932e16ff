"""Checkpoints of a training run: saved atomically with Orbax, read back bit for bit or not at all.

A checkpoint of step t is the directory ``<directory>/<t>/`` holding two Orbax items:

- ``state``: a pytree of arrays (a :class:`~jaxtricks.training.state.TrainState`, or anything
  with array leaves), typed PRNG keys stored as their raw uint32 key data;
- ``metadata``: JSON holding the caller's metadata and, for every leaf ℓ, its path, shape,
  dtype and the digest h_ℓ = SHA-256(bytes of ℓ), the whole sealed by its own SHA-256.

Orbax writes a checkpoint into ``<directory>/<t>.orbax-checkpoint-tmp-*`` and renames it to
``<t>`` once complete, so a save cut short at any point (a crash, SIGKILL) leaves no directory
that looks finished; unfinished ones are ignored, and removed by the next save. Orbax keeps the
newest ``max_to_keep`` checkpoints and deletes older ones after each save.

Restoring checks SHA-256(restored bytes of ℓ) = h_ℓ for every leaf, and the metadata's seal:
Orbax checks no checksum of its own, so a bit flipped inside an array file otherwise restores
without any error (seen with orbax-checkpoint 0.12.8). A checkpoint that cannot be read, or
that reads back other bits than were saved, is damaged: :meth:`CheckpointManager.restore` warns,
naming it, and falls back to the newest checkpoint that verifies.
"""

import hashlib
import json
import os
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxtricks.training.epochs import zero_totals
from jaxtricks.tricks._checks import check_int

# Bumped when the layout of the metadata changes; a checkpoint of another format is refused.
FORMAT = 1


class Checkpoint(NamedTuple):
    """A checkpoint read back whole; see :meth:`CheckpointManager.restore`."""

    step: int  # the step it was saved at (its directory name)
    tree: Any  # the saved pytree, with the structure, dtypes and shardings of ``like``
    metadata: dict[str, Any]  # the caller's metadata, as saved


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be read, or reads back other bits than were saved."""


class CheckpointManager:
    """Saves pytrees of arrays with JSON metadata under one directory and restores them.

    Each call opens Orbax's manager for the directory afresh and saves synchronously, so the
    object holds no open resources and a save has reached the files when it returns: the
    arrays saved may be donated right after.

    Args:
        directory: the folder of the checkpoints; created by the first save.
        max_to_keep: how many of the newest checkpoints to keep, >= 1.

    Example:
        >>> import jax, jax.numpy as jnp, tempfile
        >>> manager = CheckpointManager(tempfile.mkdtemp(), max_to_keep=2)
        >>> tree = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
        >>> for step in (10, 20, 30):
        ...     _ = manager.save(step, tree, {"epoch": step // 10})
        >>> manager.steps()
        [20, 30]
        >>> restored = manager.restore(tree)
        >>> restored.step, restored.metadata, restored.tree["w"].tolist()
        (30, {'epoch': 3}, [0.0, 1.0, 2.0])
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        if not isinstance(directory, str | os.PathLike):
            raise ValueError(f"directory must be a path, got {directory!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = check_int("max_to_keep", max_to_keep, low=1)

    def _orbax(self, *, writing: bool) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep,
            enable_async_checkpointing=False,
            create=writing,
            cleanup_tmp_directories=writing,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def path(self, step: int) -> str:
        """The directory of the checkpoint of ``step``."""
        return os.path.join(self.directory, str(step))

    def steps(self) -> list[int]:
        """The steps of the finished checkpoints, oldest first (unverified; see ``restore``).

        Returns:
            A sorted list of ints; empty when the directory does not exist.
        """
        if not os.path.isdir(self.directory):
            return []
        with self._orbax(writing=False) as manager:
            return sorted(manager.all_steps())

    def save(self, step: int, tree: Any, metadata: dict[str, Any] | None = None) -> str:
        """Saves ``tree`` and ``metadata`` as the checkpoint of ``step``; returns its directory.

        Waits for the arrays to be computed, writes them and the metadata into a temporary
        directory and renames it to ``<directory>/<step>``; then deletes the oldest checkpoints
        beyond ``max_to_keep`` and any unfinished ones.

        Args:
            step: a non-negative int, newer than every checkpoint already in the directory.
            tree: a pytree whose leaves are arrays (jax or NumPy; typed PRNG keys allowed).
            metadata: a JSON-serializable dict (NaN and infinities are kept), or None for {}.

        Returns:
            The checkpoint's directory.
        """
        step = check_int("step", step, low=0)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        paths_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
        leaves, impls = [], []
        for path, leaf in paths_leaves:
            if not isinstance(leaf, jax.Array | np.ndarray):
                raise ValueError(
                    f"tree: every leaf must be an array, got {type(leaf).__name__} at "
                    f"{jax.tree_util.keystr(path)}"
                )
            if _is_key(leaf):
                impls.append(str(jax.random.key_impl(leaf)))
                leaves.append(jax.random.key_data(leaf))
            else:
                impls.append(None)
                leaves.append(leaf)
        host = jax.device_get(leaves)
        records = [
            {
                "path": jax.tree_util.keystr(path),
                "shape": list(np.shape(leaf)),
                "dtype": str(leaf.dtype),
                "key_impl": impl,
                "sha256": _digest(array),
            }
            for (path, leaf), impl, array in zip(paths_leaves, impls, host, strict=True)
        ]
        content = {"format": FORMAT, "leaves": records, "metadata": metadata}
        sealed = {"sha256": _seal(content), "content": content}
        # Leaves are saved as a flat list: Orbax then restores exactly these arrays, and
        # ``restore`` rebuilds the caller's structure from ``like``.
        with self._orbax(writing=True) as manager:
            latest = manager.latest_step()
            if latest is not None and step <= latest:
                raise ValueError(
                    f"step must be newer than the latest checkpoint ({latest}) in "
                    f"{self.directory}, got {step}"
                )
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(leaves), metadata=ocp.args.JsonSave(sealed)
                ),
            )
        return self.path(step)

    def restore(self, like: Any, *, step: int | None = None) -> Checkpoint | None:
        """Reads back the newest checkpoint that verifies, or the one of ``step``.

        Every leaf's bytes are checked against the digest saved with it. Without ``step``,
        each damaged checkpoint newer than the one returned is skipped with a
        ``warnings.warn`` naming it and saying what is wrong.

        Args:
            like: a pytree with the structure, shapes and dtypes saved (arrays or
                ``jax.ShapeDtypeStruct``); the restored arrays get its leaves' shardings, or
                the default device's.
            step: the step to restore; None means the newest checkpoint that verifies.

        Returns:
            A :class:`Checkpoint`, or None when no checkpoint (without ``step``: no undamaged
            one) exists.

        Raises:
            ValueError: an undamaged checkpoint holds another structure, shape or dtype than
                ``like`` (no older one is tried: it would not be the run wanted).
            DamagedCheckpointError: ``step`` is given and that checkpoint is damaged.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise ValueError(f"step: no checkpoint of step {step} in {self.directory}")
            return self._restore(step, like)
        for candidate in reversed(steps):
            try:
                return self._restore(candidate, like)
            except DamagedCheckpointError as err:
                warnings.warn(f"{err}; skipping it", stacklevel=2)
        return None

    def delete(self, step: int) -> None:
        """Deletes the checkpoint of ``step``, damaged or not."""
        if step not in self.steps():
            raise ValueError(f"step: no checkpoint of step {step} in {self.directory}")
        with self._orbax(writing=False) as manager:
            manager.delete(step)

    def _restore(self, step: int, like: Any) -> Checkpoint:
        where = f"checkpoint {self.path(step)}"
        try:
            with self._orbax(writing=False) as manager:
                sealed = manager.restore(
                    step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
                ).metadata
            content = sealed["content"]
            if sealed["sha256"] != _seal(content):
                raise ValueError("its metadata does not match its digest")
            if content["format"] != FORMAT:
                raise ValueError(f"its format is {content['format']!r}, not {FORMAT}")
            records = content["leaves"]
        except Exception as err:
            raise DamagedCheckpointError(f"{where} is damaged: {_reason(err)}") from err
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
        _check_like(where, records, paths_leaves)
        abstract = [_abstract(leaf) for _, leaf in paths_leaves]
        try:
            with self._orbax(writing=False) as manager:
                leaves = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                ).state
            host = jax.device_get(leaves)
            for record, array in zip(records, host, strict=True):
                if _digest(array) != record["sha256"]:
                    raise ValueError(f"the bytes of {record['path'] or 'the tree'} changed")
        except Exception as err:
            raise DamagedCheckpointError(f"{where} is damaged: {_reason(err)}") from err
        leaves = [
            jax.random.wrap_key_data(leaf, impl=record["key_impl"]) if record["key_impl"] else leaf
            for record, leaf in zip(records, leaves, strict=True)
        ]
        return Checkpoint(step, jax.tree.unflatten(treedef, leaves), content["metadata"])


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """What Orbax restores for ``leaf``: its shape and dtype (a key's raw data for a key) and
    its sharding, else the default device."""
    stored = jax.eval_shape(jax.random.key_data, leaf) if _is_key(leaf) else leaf
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(stored), stored.dtype, sharding=sharding)


def _digest(array: np.ndarray) -> str:
    # As bytes: the buffer protocol refuses some dtypes (bfloat16).
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).data).hexdigest()


def _seal(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _reason(err: Exception) -> str:
    """A one-line reason: Orbax and TensorStore errors can run to many lines."""
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


def _check_like(where: str, records: list[dict[str, Any]], paths_leaves: list) -> None:
    """Raises ``ValueError`` naming the first leaf where ``like`` differs from the records."""
    saved = [(r["path"], tuple(r["shape"]), r["dtype"]) for r in records]
    wanted = [
        (jax.tree_util.keystr(path), tuple(np.shape(leaf)), str(leaf.dtype))
        for path, leaf in paths_leaves
    ]
    for have, want in zip(saved, wanted, strict=False):
        if have != want:
            raise ValueError(
                f"like: {where} holds {have[0] or 'a leaf'} with shape {have[1]} and dtype "
                f"{have[2]}, but like has {want[0] or 'a leaf'} with shape {want[1]} and "
                f"dtype {want[2]}"
            )
    if len(saved) != len(wanted):
        raise ValueError(f"like has {len(wanted)} leaves, but {where} holds {len(saved)}")


class _Resumed(NamedTuple):
    """Where :func:`~jaxtricks.training.fit.fit` picks a run up from a checkpoint."""

    state: Any  # the TrainState saved
    totals: Any  # the running totals of the epoch in progress (zero at an epoch's end)
    records: list[dict[str, Any]]  # the history records of the epochs finished
    first_epoch: int  # the epochs done when the run began (0, or a given state's)
    extra_tree: Any  # other training state saved with it, arrays (see _RunCheckpoints.save)
    extra: dict[str, Any]  # other training state saved with it, JSON


class _RunCheckpoints:
    """The checkpoints of one ``fit`` run: when to save, what a checkpoint holds, resuming.

    The tree saved is ``(state, totals, extra_tree)``, the running totals of the epoch in
    progress being what makes a resumed epoch's means equal the uninterrupted ones, and
    ``extra_tree`` the arrays of other training state (early stopping's, averaging's); the
    metadata holds the step, the epochs done, the run's config and first epoch, the history so
    far and ``extra``.
    """

    def __init__(
            self,
            directory: str | os.PathLike,
            *,
            every_steps: int | None,
            every_epochs: int | None,
            keep: int,
            resume: bool,
            config: dict[str, Any],
            steps_per_epoch: int,
    ):
        self.every_steps = every_steps
        self.every_epochs = every_epochs
        self.manager = CheckpointManager(directory, max_to_keep=keep)
        self.resume = resume
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.first_epoch = 0

    def start(self, state: Any, extra_tree: Any = None) -> _Resumed | None:
        """Restores the newest good checkpoint when resuming, deleting damaged newer ones.

        ``state`` and ``extra_tree`` give the structure, shapes and dtypes to restore. Without
        ``resume``, a directory that already holds checkpoints is refused rather than mixed with
        another run's.
        """
        self.first_epoch = int(state.step) // self.steps_per_epoch
        steps = self.manager.steps()
        if not self.resume:
            if steps:
                raise ValueError(
                    f"checkpoint_dir {self.manager.directory} already holds the checkpoints of "
                    f"steps {steps}: pass resume=True to continue that run, or another directory"
                )
            return None
        extra_tree = {} if extra_tree is None else extra_tree
        try:
            restored = self.manager.restore((state, zero_totals(), extra_tree))
        except ValueError as err:
            raise ValueError(
                f"resume: {err}. The checkpoint was saved by a run with another model, "
                "optimizer, early_stopping or averaging than this one: resume it with the same, "
                "or start in another directory"
            ) from err
        good = -1 if restored is None else restored.step
        for step in steps:
            if step > good:
                self.manager.delete(step)
        if restored is None:
            return None
        metadata = restored.metadata
        for name, value in self.config.items():
            if metadata["config"].get(name) != value:
                raise ValueError(
                    f"resume: checkpoint {self.manager.path(good)} was saved by a run with "
                    f"{name}={metadata['config'].get(name)!r}, this one has {name}={value!r}; "
                    "resume it with the same arguments, or start in another directory"
                )
        self.first_epoch = metadata["first_epoch"]
        state, totals, extra_tree = restored.tree
        return _Resumed(
            state, totals, metadata["history"], self.first_epoch, extra_tree, metadata["extra"]
        )

    def segment_ends(self, epoch: int, start: int) -> list[int]:
        """The steps of epoch ``epoch`` after ``start`` at which to stop: each mid-epoch
        checkpoint's, then the epoch's end."""
        first = (epoch - 1) * self.steps_per_epoch
        middle = range(start + 1, self.steps_per_epoch) if self.every_steps else ()
        return [k for k in middle if (first + k) % self.every_steps == 0] + [self.steps_per_epoch]

    def due(self, epoch: int, *, final: bool) -> bool:
        """Whether to save at the end of epoch ``epoch`` (always at the run's last)."""
        step = epoch * self.steps_per_epoch
        return (
            final
            or bool(self.every_epochs and epoch % self.every_epochs == 0)
            or bool(self.every_steps and step % self.every_steps == 0)
        )

    def save(
            self,
            state: Any,
            totals: Any,
            history: dict[str, Any],
            extra_tree: Any = None,
            extra: dict[str, Any] | None = None,
    ) -> float:
        """Saves the run at ``state.step``; returns the seconds it took.

        ``totals`` None means an epoch's end. ``extra_tree`` (arrays) and ``extra`` (JSON) are
        the places for other training state to carry across a resume (they come back as
        ``_Resumed.extra_tree`` and ``_Resumed.extra``).
        """
        begin = time.perf_counter()
        step = int(state.step)
        self.manager.save(
            step,
            (
                state,
                zero_totals() if totals is None else totals,
                {} if extra_tree is None else extra_tree,
            ),
            {
                "step": step,
                "epoch": step // self.steps_per_epoch,
                "first_epoch": self.first_epoch,
                "config": self.config,
                "history": history["epochs"],
                "extra": {} if extra is None else extra,
            },
        )
        return time.perf_counter() - begin


def _run_checkpoints(
        checkpoint_dir: str | os.PathLike | None,
        every_steps: int | None,
        every_epochs: int | None,
        keep: int,
        resume: bool,
        config: dict[str, Any],
        steps_per_epoch: int,
) -> _RunCheckpoints | None:
    """Checks ``fit``'s checkpoint arguments (named as ``fit`` names them); the run's
    checkpoints, or None without a ``checkpoint_dir``."""
    if every_steps is not None:
        check_int("checkpoint_every_steps", every_steps, low=1)
    if every_epochs is not None:
        check_int("checkpoint_every_epochs", every_epochs, low=1)
    check_int("keep_checkpoints", keep, low=1)
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be a bool, got {resume!r}")
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume=True needs the checkpoint_dir to resume from, got None")
        return None
    if not isinstance(checkpoint_dir, str | os.PathLike):
        raise ValueError(f"checkpoint_dir must be a path or None, got {checkpoint_dir!r}")
    return _RunCheckpoints(
        checkpoint_dir,
        every_steps=every_steps,
        every_epochs=every_epochs,
        keep=keep,
        resume=resume,
        config=config,
        steps_per_epoch=steps_per_epoch,
    )
