"""What the train executor and the per-framework trainers exchange."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cauce.artifacts import CauceError
from cauce.model import LoadedModel


@dataclass
class TrainingData:
    """What every trainer receives: encoded float32 matrices and encoded labels.

    ``y_*`` are float32 0/1 (binary), int64 class indices into ``classes``
    (multiclass), or float64 values (regression). ``x_eval``/``y_eval`` are None
    when the dataset has no eval split.
    """

    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray | None
    y_eval: np.ndarray | None
    classes: list
    feature_names: list[str]
    missing_labels: dict = field(default_factory=dict)  # split -> rows left out for a missing label

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "multiclass" else 1


@dataclass
class Trained:
    """A trainer's result: an in-memory model that predicts through the same
    code as a loaded bundle, a way to write the framework file, and the
    metadata the trainer adds (model_type, hyperparameters, curves, ...)."""

    model: LoadedModel
    save: Callable[[Path], None]  # writes the framework file into the bundle directory
    framework_version: str
    model_type: str
    hyperparameters: dict
    versions: dict = field(default_factory=dict)
    curves: dict | None = None  # {"epoch": [...], "train_loss": [...], "val_loss": [...], ...}
    summary: dict = field(default_factory=dict)  # deterministic scalars added to metrics (best_epoch, ...)
    details: dict = field(default_factory=dict)  # extra metadata (architecture, device, ...)


def as_int(value, name: str, minimum: int) -> int:
    """An integer hyperparameter; KFP delivers dict numbers as floats (protobuf Struct)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
        or value < minimum
    ):
        raise CauceError(f"hyperparameter {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def as_float(value, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """A float hyperparameter within [low, high] (open ends where said)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise CauceError(f"hyperparameter {name!r} must be a number in {interval}, got {value!r}")
    return value
