"""What a training run records: a header and one record per epoch.

A metric name says where it was measured: ``loss``, ``accuracy``, ... are means over the
epoch's applied training steps; ``val_loss``, ``val_accuracy``, ... are measured on the
validation data after the epoch; ``test_...`` on a held-out set an
:class:`~jaxtricks.training.hooks.EvaluationHook` evaluates (reported, never used to choose
anything); a ``..._averaged`` suffix marks averaged weights
(:class:`~jaxtricks.training.hooks.AveragingHook`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal, overload

from jaxtricks.files import strict_json

__all__ = ["EpochRecord", "History"]


@dataclasses.dataclass
class EpochRecord:
    """One epoch of a run.

    Attributes:
        epoch: the epoch's number, counted from 1 over the whole run (resumed runs included).
        step: the optimizer steps taken by the end of the epoch (skipped steps included).
        metrics: every number measured for the epoch, by name (see the module docstring):
            the training means (``loss``, each metric, ``grad_norm``), the validation and
            other evaluations, and what hooks add (``plateau_scale``, ``elapsed_s``, ...).
            NaN when undefined (e.g. every step of the epoch was skipped).
        learning_rate: the learning rate at the epoch's last step, read from an
            ``optax.inject_hyperparams`` state in the optimizer state; None without one.
        skipped_steps: the epoch's steps the non-finite guard skipped (see ``skip_nonfinite``
            of :func:`~jaxtricks.training.steps.make_train_step`).
        epoch_time_s: seconds spent training the epoch (evaluation and checkpoints excluded).
        eval_time_s: seconds spent evaluating the validation data after it.
        examples_per_s: training examples per second of ``epoch_time_s``.
        info: what hooks record that is not a number (e.g. ``health``, the gradient-health
            record of :func:`~jaxtricks.training.hooks.health_record`).
    """

    epoch: int
    step: int
    metrics: dict[str, float]
    learning_rate: float | None = None
    skipped_steps: int = 0
    epoch_time_s: float = 0.0
    eval_time_s: float = 0.0
    examples_per_s: float = 0.0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        """``record["val_loss"]``: a metric of the epoch (``KeyError`` naming those present)."""
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(
                f"no metric {name!r} in epoch {self.epoch}; it has {sorted(self.metrics)}"
            ) from None

    def add(self, values: dict[str, Any], *, prefix: str = "", suffix: str = "") -> None:
        """Adds numbers to :attr:`metrics` as ``prefix + name + suffix``.

        A list of numbers (one per ensemble member) goes to :attr:`info` under that name, and
        its mean (over the finite values; NaN if none) to :attr:`metrics`.

        Examples:
            >>> record = EpochRecord(1, 10, {})
            >>> record.add({"loss": 0.5, "member_loss": [0.4, 0.6]}, prefix="val_")
            >>> record.metrics, record.info
            ({'val_loss': 0.5, 'val_member_loss': 0.5}, {'val_member_loss': [0.4, 0.6]})
        """
        for name, value in values.items():
            key = f"{prefix}{name}{suffix}"
            if isinstance(value, list | tuple):
                self.info[key] = [float(v) for v in value]
                finite = [float(v) for v in value if math.isfinite(v)]
                self.metrics[key] = sum(finite) / len(finite) if finite else math.nan
            else:
                self.metrics[key] = float(value)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain Python values (see :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochRecord:
        """A record from :meth:`to_dict`'s output (``None`` metrics read back as NaN)."""
        values = dict(values)
        values["metrics"] = {
            name: math.nan if value is None else value for name, value in values["metrics"].items()
        }
        return cls(**values)


@dataclasses.dataclass
class History:
    """The record of a training run, as :func:`~jaxtricks.training.fit.fit` returns it.

    Attributes:
        header: how the run was set up: ``seed``, ``batch_size``, ``epochs`` (asked for),
            ``train_examples``, ``validation_examples`` (0 without validation data),
            ``steps_per_epoch``, ``backend``, ``device_kind``, ``device_count``,
            ``jax_version``, ``xla_flags``, ``speed_paths`` (the backend's choices),
            ``runner`` and ``runner_step_time_s`` (each runner's measured seconds per step
            when the runner was chosen by timing), ``compile_time_s`` (compiling the training
            step), ``skip_nonfinite``, ``data_parallel_devices``, ``shard_optimizer_state``,
            ``loss`` and ``metrics`` (the names of the loss function and metrics),
            ``precision`` (the mixed-precision policy, None without one), ``batch_transform``
            (its name, None without one), and what
            hooks add (``early_stopping``: monitor, best_epoch, best_metric, stopped_epoch,
            restored_best).
        epochs: one :class:`EpochRecord` per epoch trained.

    Examples:
        >>> history = History({"seed": 0}, [EpochRecord(1, 10, {"loss": 0.5, "val_loss": 0.7}),
        ...                                 EpochRecord(2, 20, {"loss": 0.3, "val_loss": 0.6})])
        >>> history["val_loss"]
        [0.7, 0.6]
        >>> History.from_json(history.to_json()) == history
        True
    """

    header: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: list[EpochRecord] = dataclasses.field(default_factory=list)

    # mypy flags the two as overlapping (a str may equal "learning_rate"); the Literal one
    # matches first, so the learning rate's None entries are typed where they can occur.
    @overload
    def __getitem__(  # type: ignore[overload-overlap]
            self, name: Literal["learning_rate"]
    ) -> list[float | None]: ...
    @overload
    def __getitem__(self, name: str) -> list[float]: ...

    def __getitem__(self, name: str) -> list[float] | list[float | None]:
        """``history["val_loss"]``: a metric's value at every epoch (NaN where missing), as
        Keras' ``history.history[name]``; ``history["learning_rate"]`` too (None at epochs
        whose optimizer state has no injected learning rate)."""
        if name == "learning_rate":
            return [record.learning_rate for record in self.epochs]
        if not any(name in record.metrics for record in self.epochs):
            raise KeyError(f"no metric {name!r} in this history; it has {self.metric_names()}")
        return [record.metrics.get(name, math.nan) for record in self.epochs]

    def metric_names(self) -> list[str]:
        """Every metric name recorded, in the order first seen."""
        names: dict[str, None] = {}
        for record in self.epochs:
            names.update(dict.fromkeys(record.metrics))
        return list(names)

    def to_dict(self) -> dict[str, Any]:
        """The history as plain Python values."""
        return {"header": dict(self.header), "epochs": [r.to_dict() for r in self.epochs]}

    def to_json(self, indent: int | None = 1) -> str:
        """Strict JSON (non-finite numbers as ``null``); :meth:`from_json` reads it back."""
        return json.dumps(strict_json(self.to_dict()), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        """A history from :meth:`to_dict`'s (or the parsed JSON's) output."""
        return cls(dict(values["header"]), [EpochRecord.from_dict(r) for r in values["epochs"]])

    @classmethod
    def from_json(cls, text: str) -> History:
        """A history from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))
