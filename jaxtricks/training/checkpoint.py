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

Once Orbax has finished, a manifest ``<t>/jaxtricks-files.json`` records the SHA-256 of every
file of the checkpoint. Restoring checks the manifest first, so a damaged file is found without
handing it to Orbax (whose failed reads leave worker threads printing tracebacks long after the
call), then SHA-256(restored bytes of ℓ) = h_ℓ for every leaf, and the metadata's seal: Orbax
checks no checksum of its own, so a bit flipped inside an array file otherwise restores without
any error (seen with orbax-checkpoint 0.12.8). A checkpoint that cannot be read, has no
manifest (its save was cut short), or reads back other bits than were saved, is damaged:
:meth:`CheckpointManager.restore` warns once, naming it, and falls back to the newest checkpoint
that verifies.

Before a save, the directory must be writable and its disk must have room for the arrays: a
:class:`CheckpointSaveError` says which is not so, without a partial write.

In a job of several processes (``jax.distributed``) every process calls ``save`` and
``restore`` alike, on a directory they share: Orbax writes each array's shards from the process
that holds them and reads back each process's own, and a digest h_ℓ is of the whole (global)
array ℓ, gathered to every process for the moment it is computed
(``multihost_utils.process_allgather``; an array split over the processes, like a ZeRO-1
optimizer state, is then held whole once). Arrays of one process only (NumPy arrays, arrays on
one local device) are taken from process 0 and must be the same on every process. The manifest
is written by process 0 alone, and no process returns from ``save`` before it is there.
"""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

__all__ = [
    "Checkpoint",
    "CheckpointHook",
    "CheckpointManager",
    "CheckpointSaveError",
    "DamagedCheckpointError",
]

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxtricks.files import write_json
from jaxtricks.training.history import EpochRecord
from jaxtricks.training.hooks import Hook, Run

# Bumped when the layout of the metadata changes; a checkpoint of another format is refused.
FORMAT = 1
MANIFEST = "jaxtricks-files.json"
# Room kept free beyond the arrays' own bytes when saving: Orbax's metadata and file layout.
_SAVE_MARGIN_BYTES = 1 << 20


class Checkpoint(NamedTuple):
    """A checkpoint read back whole; see :meth:`CheckpointManager.restore`."""

    step: int  # the step it was saved at (its directory name)
    tree: Any  # the saved pytree, with the structure, dtypes and shardings of ``like``
    metadata: dict[str, Any]  # the caller's metadata, as saved


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be read, or reads back other bits than were saved."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full or read-only disk, ...); nothing was kept of
    it, and the checkpoints saved before it are untouched."""


class CheckpointManager:
    """Saves pytrees of arrays with JSON metadata under one directory and restores them.

    Each call opens Orbax's manager for the directory afresh and saves synchronously, so the
    object holds no open resources and a save has reached the files when it returns: the
    arrays saved may be donated right after.

    Args:
        directory: the folder of the checkpoints; created by the first save.
        max_to_keep: how many of the newest checkpoints to keep, >= 1.

    Examples:
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
        self.max_to_keep = _check_count("max_to_keep", max_to_keep, 1)

    def _orbax(self, *, writing: bool) -> Any:
        ocp = _orbax()
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
        step = _check_count("step", step, 0)
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        paths_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
        leaves: list[jax.Array | np.ndarray] = []
        impls: list[str | None] = []
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
        host = _host_values(leaves)
        if jax.process_count() > 1:
            # An array of this process only is saved as process 0's value (Orbax writes a NumPy
            # array from the primary process); a global array from the processes holding it.
            leaves = [leaf if _spans_processes(leaf) else value
                      for leaf, value in zip(leaves, host, strict=True)]
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
        latest = max(self.steps(), default=None)
        if latest is not None and step <= latest:
            raise ValueError(
                f"step must be newer than the latest checkpoint ({latest}) in "
                f"{self.directory}, got {step}"
            )
        self._check_room(step, sum(np.asarray(array).nbytes for array in host))
        # Leaves are saved as a flat list: Orbax then restores exactly these arrays, and
        # ``restore`` rebuilds the caller's structure from ``like``.
        try:
            ocp = _orbax()
            with _quiet_on_failure(), self._orbax(writing=True) as manager:
                manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(leaves), metadata=ocp.args.JsonSave(sealed)
                    ),
                )
            if jax.process_index() == 0:
                _write_manifest(self.path(step))
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"jaxtricks checkpoint {step} saved")
        except Exception as err:
            raise CheckpointSaveError(
                f"could not save the checkpoint of step {step} in {self.directory}: "
                f"{_reason(err)}"
            ) from err
        return self.path(step)

    def _check_room(self, step: int, array_bytes: int) -> None:
        """Raises :class:`CheckpointSaveError` unless the directory can take the save."""
        existing = self.directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CheckpointSaveError(
                f"could not save the checkpoint of step {step}: {existing} is not writable"
            )
        free = shutil.disk_usage(existing).free
        if free < array_bytes + _SAVE_MARGIN_BYTES:
            raise CheckpointSaveError(
                f"could not save the checkpoint of step {step} in {self.directory}: the disk has "
                f"{free / 2**20:.1f} MiB free and the checkpoint needs about "
                f"{(array_bytes + _SAVE_MARGIN_BYTES) / 2**20:.1f} MiB"
            )

    def restore(self, like: Any, *, step: int | None = None) -> Checkpoint | None:
        """Reads back the newest checkpoint that verifies, or the one of ``step``.

        Every leaf's bytes are checked against the digest saved with it. Without ``step``,
        each damaged checkpoint newer than the one returned is skipped with a
        ``warnings.warn`` naming it and saying what is wrong.

        Args:
            like: a pytree with the structure, shapes and dtypes saved (arrays or
                ``jax.ShapeDtypeStruct``); the restored arrays get the shardings of its
                committed leaves; the others come back uncommitted, as ``jax.device_put``
                leaves them.
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
            _verify_manifest(self.path(step))
            ocp = _orbax()
            with _quiet_on_failure(), self._orbax(writing=False) as manager:
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
            with _quiet_on_failure(), self._orbax(writing=False) as manager:
                leaves = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                ).state
            host = _host_values(leaves)
            for record, array in zip(records, host, strict=True):
                if _digest(array) != record["sha256"]:
                    raise ValueError(f"the bytes of {record['path'] or 'the tree'} changed")
        except Exception as err:
            raise DamagedCheckpointError(f"{where} is damaged: {_reason(err)}") from err
        # A leaf of ``like`` placed nowhere in particular comes back so too (uncommitted), so
        # that it can meet arrays of any sharding, a mesh's across processes included.
        leaves = [leaf if _placed(want) else jax.device_put(value)
                  for leaf, value, (_, want) in zip(leaves, host, paths_leaves, strict=True)]
        leaves = [
            jax.random.wrap_key_data(leaf, impl=record["key_impl"]) if record["key_impl"] else leaf
            for record, leaf in zip(records, leaves, strict=True)
        ]
        return Checkpoint(step, jax.tree.unflatten(treedef, leaves), content["metadata"])


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _spans_processes(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and not leaf.is_fully_addressable


def _host_values(leaves: list[Any]) -> list[np.ndarray]:
    """The whole value of every leaf on this host: an array split over several processes is
    gathered from all of them (every process must call this alike); others are read locally."""
    return [
        np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        if _spans_processes(leaf) and not leaf.is_fully_replicated
        else np.asarray(jax.device_get(leaf))
        for leaf in leaves
    ]


def _placed(leaf: Any) -> bool:
    """Whether ``leaf`` asks for a sharding: a committed array, or a shape with a sharding."""
    if isinstance(leaf, jax.Array):
        return leaf.committed
    return getattr(leaf, "sharding", None) is not None


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """What Orbax restores for ``leaf``: its shape and dtype (a key's raw data for a key) and
    its sharding, else this process's first device."""
    stored = jax.eval_shape(jax.random.key_data, leaf) if _is_key(leaf) else leaf
    sharding = leaf.sharding if _placed(leaf) else None
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
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


@contextlib.contextmanager
def _quiet_on_failure() -> Iterator[None]:
    """Holds back what the block writes to the standard error (file descriptor 2), and gives it
    back unless the block raises.

    Orbax and TensorStore report a failed read or write with hundreds of lines of tracebacks
    from their worker threads ("Event loop is closed", ...); the exception raised carries the
    reason, said once in one line by the caller.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _checkpoint_files(path: str) -> dict[str, str]:
    """Every file of the checkpoint directory but the manifest: relative path -> SHA-256."""
    files = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            relative = os.path.relpath(full, path)
            if relative == MANIFEST:
                continue
            with open(full, "rb") as file:
                files[relative] = hashlib.file_digest(file, "sha256").hexdigest()
    return dict(sorted(files.items()))


def _write_manifest(path: str) -> None:
    write_json(os.path.join(path, MANIFEST), {"format": FORMAT, "files": _checkpoint_files(path)})


def _verify_manifest(path: str) -> None:
    """Raises ``ValueError`` unless the files of the checkpoint are those its manifest lists."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as file:
            manifest = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"it has no {MANIFEST}: its save did not finish") from None
    except ValueError as err:
        raise ValueError(f"its {MANIFEST} is not JSON ({err})") from None
    files = _checkpoint_files(path)
    listed = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    for name in sorted(set(files) | set(listed)):
        if name not in files:
            raise ValueError(f"its file {name} is missing")
        if name not in listed:
            raise ValueError(f"its file {name} is not in its manifest")
        if files[name] != listed[name]:
            raise ValueError(f"its file {name} changed since it was saved")


def _orbax() -> Any:
    """``orbax.checkpoint``, imported on first use: ``import jaxtricks`` stays light."""
    import orbax.checkpoint as ocp

    return ocp


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class CheckpointHook(Hook):
    """Saves a run's checkpoints and resumes it from the newest good one.

    A checkpoint of step t holds the training state, the running totals of the epoch in
    progress (zero at an epoch's end; they make a resumed epoch's means equal the
    uninterrupted ones), every other hook's :meth:`~jaxtricks.training.hooks.Hook.
    checkpoint_state` (early stopping's best weights, the weight average, ...) and, as JSON,
    the history so far and the run's config (seed, batch size, training and validation set
    sizes, skip_nonfinite, ...). A run resumed from it ends bit-identical to the run had it not
    stopped (timings aside).

    Args:
        directory: the folder of the checkpoints. Without ``resume`` it must hold none yet.
        every_epochs: save at the end of every epoch that is a multiple of this (None: not at
            epochs' ends). The run's last epoch is always saved.
        every_steps: also save after every step that is a multiple of this, in the middle of
            epochs too (the epoch pauses there). None: only at epochs' ends.
        keep: the newest checkpoints to keep, >= 1.
        resume: continue from the newest checkpoint that verifies (damaged newer ones are
            skipped with one warning each and deleted), up to the run's first epoch plus
            the ``epochs`` this ``fit`` asks for (with the interrupted call's ``epochs``, the
            epoch it would have reached); with none there, start afresh. A checkpoint of
            another config, model, optimizer or hooks is refused with a ``ValueError`` saying
            which.

    Examples:
        >>> import tempfile
        >>> hook = CheckpointHook(tempfile.mkdtemp(), every_steps=100)
        >>> hook.order
        80
    """

    order = 80

    def __init__(self, directory: str | os.PathLike, *, every_epochs: int | None = 1,
                 every_steps: int | None = None, keep: int = 3, resume: bool = False):
        if every_epochs is not None:
            _check_count("every_epochs", every_epochs, 1)
        if every_steps is not None:
            _check_count("every_steps", every_steps, 1)
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be a bool, got {resume!r}")
        self.manager = CheckpointManager(directory, max_to_keep=keep)
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.resume = resume

    def _stateful_hooks(self, run: Run) -> dict[str, Hook]:
        return {
            f"{index}:{type(hook).__name__}": hook
            for index, hook in enumerate(run.hooks)
            if hook is not self and hook.checkpoint_state() is not None
        }

    def _tree(self, run: Run, totals: Any) -> tuple[Any, Any, dict[str, Any]]:
        hooks = self._stateful_hooks(run)
        # _stateful_hooks keeps only hooks whose checkpoint_state is not None.
        arrays = {name: cast(tuple[Any, Any], hook.checkpoint_state())[0]
                  for name, hook in hooks.items()}
        return run.state, totals, arrays

    def on_train_begin(self, run: Run) -> None:
        steps = self.manager.steps()
        if not self.resume:
            if steps:
                raise ValueError(
                    f"directory {self.manager.directory} already holds the checkpoints of steps "
                    f"{steps}: resume that run (resume=True), or choose another directory"
                )
            return
        try:
            restored = self.manager.restore(self._tree(run, run.zero_totals()))
        except ValueError as err:
            raise ValueError(
                f"resume: {err}. The checkpoint was saved by a run with another model, "
                "optimizer or hooks than this one: resume it with the same, or start in another "
                "directory"
            ) from err
        good = -1 if restored is None else restored.step
        for step in steps:
            if step > good:
                self.manager.delete(step)
        if restored is None:
            return
        metadata = restored.metadata
        for name, value in run.config.items():
            saved = metadata["config"].get(name)
            if saved != value:
                raise ValueError(
                    f"resume: checkpoint {self.manager.path(good)} was saved by a run with "
                    f"{name}={saved!r}, this one has {name}={value!r}; resume it with the same, "
                    "or start in another directory"
                )
        state, totals, arrays = restored.tree
        run.state = state
        run.history.epochs = [EpochRecord.from_dict(r) for r in metadata["history"]]
        epochs = run.last_epoch - run.first_epoch  # asked of this run, counted from the first
        run.first_epoch = metadata["first_epoch"]
        run.last_epoch = run.first_epoch + epochs
        run.epoch = int(state.step) // run.steps_per_epoch
        if int(state.step) % run.steps_per_epoch:
            run.resume_totals = totals
        for name, hook in self._stateful_hooks(run).items():
            hook.restore_checkpoint_state(run, arrays[name], metadata["hooks"][name])

    def pause_steps(self, run: Run, epoch: int) -> list[int]:
        if not self.every_steps:
            return []
        first = (epoch - 1) * run.steps_per_epoch
        return [k for k in range(1, run.steps_per_epoch) if (first + k) % self.every_steps == 0]

    def on_pause(self, run: Run, steps_done: int, totals: Any) -> None:
        if self.every_steps and int(run.state.step) % self.every_steps == 0:
            if steps_done < run.steps_per_epoch:
                self.save(run, totals)

    def on_epoch_end(self, run: Run, record: EpochRecord) -> None:
        due = (
            run.stop_training
            or record.epoch == run.last_epoch
            or bool(self.every_epochs and record.epoch % self.every_epochs == 0)
            or bool(self.every_steps and record.step % self.every_steps == 0)
        )
        if due:
            self.save(run, None)

    def save(self, run: Run, totals: Any) -> str:
        """Saves the run as it stands (``totals``: the epoch's running totals, None at its end)."""
        if totals is None:
            totals = run.zero_totals()
        hooks = self._stateful_hooks(run)
        step = int(run.state.step)
        return self.manager.save(
            step,
            self._tree(run, totals),
            {
                "step": step,
                "first_epoch": run.first_epoch,
                "epochs": run.last_epoch - run.first_epoch,
                "config": run.config,
                "history": [record.to_dict() for record in run.history.epochs],
                "hooks": {name: cast(tuple[Any, Any], hook.checkpoint_state())[1]
                          for name, hook in hooks.items()},
            },
        )
