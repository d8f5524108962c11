"""Train executor: one contract, three frameworks.

``run_train`` reads the encoded train/eval splits written by the transform,
checks the label against the task, hands the matrices to the trainer of the
chosen framework (``sklearn_trainer``, ``keras_trainer``, ``torch_trainer``:
only that one is imported), measures the result with the same code for every
framework, and writes a self-contained model bundle (see ``cauce.model``).

Tasks and labels:

* ``binary``: labels 0/1 (or booleans). This is what the transform emits.
* ``multiclass``: integer or string class values; classes are the sorted values
  seen in the training split, stored in ``cauce_model.json`` as ``classes``.
* ``regression``: any finite number.

The transform (``components/transform``) currently accepts only binary 0/1
labels, so a multiclass or regression model needs encoded splits whose label
column holds those values (the same layout: float32 feature columns named
after ``transform.json``'s ``feature_names`` plus the label column).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.train.common import Trained, TrainingData
from cauce.components.train.sklearn_trainer import (  # importable from here, as before
    DEFAULT_HYPERPARAMETERS,
    ESTIMATORS,
    build_estimator,
)
from cauce.features import TRANSFORM_FILE, FittedTransform
from cauce.model import LINEAR_FILE, METADATA_FILE, ONNX_FILE, TASKS, passive_openmp_waits

log = logging.getLogger(__name__)

FRAMEWORKS = ("sklearn", "keras", "torch")
_TRAINER_MODULES = {
    "sklearn": "cauce.components.train.sklearn_trainer",
    "keras": "cauce.components.train.keras_trainer",
    "torch": "cauce.components.train.torch_trainer",
}

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "ESTIMATORS",
    "FRAMEWORKS",
    "TASKS",
    "TrainResult",
    "TrainingData",
    "Trained",
    "build_estimator",
    "classification_metrics",
    "evaluation_metrics",
    "run_train",
]


@dataclass
class TrainResult:
    metrics: dict[str, float]
    metadata: dict
    curves: dict | None = None

    def kfp_metrics(self) -> dict[str, float]:
        """Everything to log as KFP Metrics: the summary metrics, then one scalar
        per epoch and curve (``epoch_003_val_loss``), zero-padded so the Vertex
        metrics table sorts them in epoch order."""
        logged = dict(self.metrics)
        if self.curves:
            for index, epoch in enumerate(self.curves["epoch"]):
                for name, values in self.curves.items():
                    if name != "epoch" and values[index] is not None:
                        logged[f"epoch_{epoch:03d}_{name}"] = values[index]
        return logged


# ---- labels ------------------------------------------------------------------


def _encode_labels(raw: np.ndarray, task: str, label: str, split: str, classes: list | None) -> tuple[np.ndarray, list]:
    """Check ``raw`` labels against the task and encode them (see TrainingData)."""
    where = f"label {label!r} in split {split!r}"
    if raw.dtype == object:
        if any(value is None for value in raw):
            raise CauceError(f"{where} has missing values; drop or fill them before training")
        if task == "regression" or (task == "binary" and not all(isinstance(v, (bool, int, float)) for v in raw)):
            raise CauceError(f"{where} holds non-numeric values (e.g. {raw[0]!r}); a {task} label must be numeric")
    if task == "binary":
        values = raw.astype(np.float64)
        if np.isnan(values).any():
            raise CauceError(f"{where} has missing values; drop or fill them before training")
        found = np.unique(values)
        if not np.isin(found, (0.0, 1.0)).all():
            raise CauceError(f"{where} must be binary 0/1 for task 'binary'; found values {found[:10].tolist()}")
        return values.astype(np.float32), [0, 1]
    if task == "regression":
        values = raw.astype(np.float64)
        if not np.isfinite(values).all():
            raise CauceError(f"{where} has missing or infinite values; a regression label must be a finite number")
        return values, []
    # multiclass: integer-valued numbers or strings
    if raw.dtype.kind == "f":
        if np.isnan(raw).any():
            raise CauceError(f"{where} has missing values; drop or fill them before training")
        if not np.all(raw == np.round(raw)):
            raise CauceError(f"{where} holds non-integer numbers; multiclass labels must be integers or strings")
        raw = raw.astype(np.int64)
    values = [v.item() if isinstance(v, np.generic) else v for v in raw.tolist()] if raw.dtype.kind != "O" else list(raw)
    if classes is None:
        try:
            classes = sorted(set(values))
        except TypeError:
            raise CauceError(f"{where} mixes value types; multiclass labels must be all integers or all strings") from None
        if len(classes) < 2:
            raise CauceError(f"{where} has a single class {classes}: cannot train a classifier")
    index = {value: i for i, value in enumerate(classes)}
    unseen = sorted({v for v in values if v not in index}, key=str)
    if unseen:
        raise CauceError(f"{where} has class(es) {unseen[:10]} never seen in training; training classes: {classes}")
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)), classes


def _read_split(transformed_dir: str, split: str, fitted: FittedTransform) -> tuple[np.ndarray, np.ndarray]:
    """The split's encoded features as one float32 matrix, and its labels.

    Column-major: each Parquet column lands in contiguous blocks. Filling a
    row-major matrix column by column strides across every row and took ~3 s of a
    1 M-row train step against ~0.3 s; the trainers take either layout (LightGBM
    and scikit-learn read Fortran order without a copy). Read batch by batch, so
    the Arrow copy of the whole split (as large as the matrix) never exists.
    """
    columns = [*fitted.feature_names, fitted.label]
    dataset = ds.dataset(data.split_path(transformed_dir, split), format="parquet")  # a missing split is a CauceError
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise CauceError(
            f"column(s) {missing} not found in split {split!r} of {transformed_dir}; columns present: {dataset.schema.names}"
        )
    rows = dataset.count_rows()
    if rows == 0:
        raise CauceError(f"split {split!r} of {transformed_dir} is empty: nothing to train or evaluate on")
    features = np.empty((rows, len(fitted.feature_names)), dtype=np.float32, order="F")
    labels = []
    start = 0
    for batch in dataset.to_batches(columns=columns, batch_size=131_072):
        stop = start + batch.num_rows
        for j in range(len(fitted.feature_names)):
            features[start:stop, j] = batch.column(j).to_numpy(zero_copy_only=False)
        labels.append(batch.column(len(fitted.feature_names)))
        start = stop
    return features, pa.chunked_array(labels, type=dataset.schema.field(fitted.label).type).to_numpy()


def _labelled(features: np.ndarray, labels: np.ndarray, label: str, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows whose label is present, by the rule every phase follows
    (``cauce.data.missing_label_mask``: null or NaN), and how many were left out. The
    transform's output has none; a dataset encoded elsewhere may."""
    import pyarrow as pa

    missing = data.missing_label_mask(pa.array(labels)).to_numpy(zero_copy_only=False)
    count = int(missing.sum())
    if not count:
        return features, labels, 0
    if count == len(labels):
        raise CauceError(f"every row of split {split!r} lacks a label {label!r}: nothing to train or evaluate on")
    log.warning("split %s: left out %d rows with a missing label %r", split, count, label)
    keep = ~missing
    return features[keep], labels[keep], count


def load_training_data(
    transformed_dir: str, fitted: FittedTransform, task: str, train_split: str = "train", eval_split: str = "eval"
) -> TrainingData:
    x_train, raw_train = _read_split(transformed_dir, train_split, fitted)
    x_train, raw_train, missing = _labelled(x_train, raw_train, fitted.label, train_split)
    missing_labels = {train_split: missing}
    y_train, classes = _encode_labels(raw_train, task, fitted.label, train_split, None)
    if task == "binary" and len(np.unique(y_train)) < 2:
        raise CauceError(f"label {fitted.label!r} has a single class in split {train_split!r}: cannot train a classifier")
    x_eval = y_eval = None
    if eval_split and eval_split in data.split_names(transformed_dir):
        x_eval, raw_eval = _read_split(transformed_dir, eval_split, fitted)
        x_eval, raw_eval, missing_labels[eval_split] = _labelled(x_eval, raw_eval, fitted.label, eval_split)
        y_eval, _ = _encode_labels(raw_eval, task, fitted.label, eval_split, classes if task == "multiclass" else None)
    return TrainingData(task, x_train, y_train, x_eval, y_eval, classes, list(fitted.feature_names), missing_labels)


# ---- metrics (the same code for every framework) -------------------------------


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Binary: accuracy at 0.5, log loss, and AUC when both classes are present."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    metrics = {"accuracy": float(accuracy_score(y_true, scores >= 0.5))}
    metrics["log_loss"] = float(log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if len(np.unique(y_true)) == 2:
        metrics["auc"] = float(roc_auc_score(y_true, scores))
    return metrics


def evaluation_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, n_classes: int = 2) -> dict[str, float]:
    """binary: accuracy, log_loss, auc; multiclass: accuracy, log_loss, auc
    (one-vs-rest, macro); regression: rmse, mae, r2."""
    from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, roc_auc_score

    if task == "binary":
        return classification_metrics(y_true, outputs)
    if task == "multiclass":
        labels = list(range(n_classes))
        probabilities = np.clip(outputs, 1e-7, 1.0)
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
        metrics = {
            "accuracy": float(accuracy_score(y_true, outputs.argmax(axis=1))),
            "log_loss": float(log_loss(y_true, probabilities, labels=labels)),
        }
        if len(np.unique(y_true)) == n_classes:
            metrics["auc"] = float(roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro", labels=labels))
        return metrics
    error = outputs - y_true
    metrics = {"rmse": float(np.sqrt(np.mean(error * error))), "mae": float(mean_absolute_error(y_true, outputs))}
    if len(y_true) > 1:
        metrics["r2"] = float(r2_score(y_true, outputs))
    return metrics


# ---- the contract --------------------------------------------------------------


def _sha256(*arrays: np.ndarray) -> str:
    """Digest of dtypes, shapes and values; a matrix's values column by column
    (its transpose in C order: no copy for the column-major matrices we read)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(memoryview(np.ascontiguousarray(array.T)).cast("B"))
    return f"sha256:{digest.hexdigest()}"


def _trainer(framework: str):
    if framework not in FRAMEWORKS:
        raise CauceError(f"framework {framework!r} is not supported; expected one of {list(FRAMEWORKS)}")
    return importlib.import_module(_TRAINER_MODULES[framework])


def run_train(
    transformed_dir: str,
    transform_dir: str,
    model_dir: str,
    hyperparameters: dict | None = None,
    train_split: str = "train",
    eval_split: str = "eval",
    seed: int = 42,
    framework: str = "sklearn",
    task: str = "binary",
) -> TrainResult:
    """Train a ``framework`` model for ``task`` and write the bundle to ``model_dir``.

    ``hyperparameters`` are the framework's (empty or None: its defaults):
    scikit-learn ``{"model_type": ..., <estimator parameters>}``; Keras and
    PyTorch ``{"hidden_units", "dropout", "learning_rate", "weight_decay",
    "epochs", "batch_size", "patience", "min_delta", "validation_fraction"}``
    (see ``neural.py``). Errors in them fail before any data is read, and a
    failed run leaves no ``model_dir``.
    """
    if task not in TASKS:
        raise CauceError(f"task {task!r} is not supported; expected one of {list(TASKS)}")
    passive_openmp_waits()  # before the trainer imports LightGBM / scikit-learn
    trainer = _trainer(framework)
    seed = int(seed)
    plan = trainer.plan(dict(hyperparameters or {}), task, seed)  # validates before any data is read
    trainer.load_framework()  # a missing framework fails here, and its import is not training time
    fitted = FittedTransform.load(transform_dir)
    training = load_training_data(transformed_dir, fitted, task, train_split, eval_split)

    started = time.perf_counter()
    trained = trainer.fit(plan, training, fitted, seed)
    seconds = time.perf_counter() - started

    n_classes = max(len(training.classes), 2)
    metrics = {
        f"train_{k}": v
        for k, v in evaluation_metrics(task, training.y_train, trained.model.scores_from_features(training.x_train), n_classes).items()
    }
    if training.x_eval is not None:
        eval_outputs = trained.model.scores_from_features(training.x_eval)
        metrics.update({f"eval_{k}": v for k, v in evaluation_metrics(task, training.y_eval, eval_outputs, n_classes).items()})
    metrics.update(trained.summary)

    # The served form (model.onnx, ONNX Runtime): accepted only if it reproduces the
    # framework's outputs to 1e-6 on the eval split (else the train split).
    from cauce.components.train import onnx_export

    onnx_bytes, serving = onnx_export.export(framework, trained.model, len(fitted.feature_names), task)
    check_rows = training.x_eval if training.x_eval is not None else training.x_train
    serving.update(onnx_export.check(onnx_bytes, serving, trained.model, check_rows))
    serving = {"runtime": "onnxruntime", "file": ONNX_FILE, **serving}
    # A linear model is also served by its coefficients folded into the transform
    # (cauce.model's LINEAR_FILE), accepted by the same rule as model.onnx.
    linear = onnx_export.export_linear(framework, trained.model, task, check_rows)
    if linear is not None:
        serving["linear"] = {"file": LINEAR_FILE, **{k: linear.pop(k) for k in ("checked_rows", "max_abs_difference", "tolerance")}}

    import cauce

    transform_path = Path(transform_dir) / TRANSFORM_FILE
    data_hashes = {
        "transform": f"sha256:{hashlib.sha256(transform_path.read_bytes()).hexdigest()}",
        train_split: _sha256(training.x_train, training.y_train),
    }
    if training.x_eval is not None:
        data_hashes[eval_split] = _sha256(training.x_eval, training.y_eval)
    versions = {
        "python": platform.python_version(),
        "cauce": cauce.__version__,
        "numpy": np.__version__,
        **trained.versions,
    }
    metadata = {
        "format": "cauce.model/v1",
        "framework": framework,
        "framework_version": trained.framework_version,
        "model_type": trained.model_type,
        "hyperparameters": trained.hyperparameters,
        # As given to train (empty: the framework's defaults): what remakes this model.
        # The resolved ones above also hold library defaults, which passed back
        # explicitly need not train the same model.
        "hyperparameters_given": dict(hyperparameters or {}),
        "task": task,
        "label": fitted.label,
        "classes": training.classes,
        "features": fitted.input_features,
        "encoded_features": len(fitted.feature_names),
        "train_rows": int(len(training.y_train)),
        "rows_missing_label": training.missing_labels,  # left out of train_rows / eval_rows
        "eval_rows": int(len(training.y_eval)) if training.y_eval is not None else 0,
        "splits": {"train": train_split, "eval": eval_split if training.x_eval is not None else None},
        "seed": seed,
        "data_hashes": data_hashes,
        "versions": versions,
        "metrics": metrics,
        "training_curves": trained.curves,
        "training_seconds": round(seconds, 3),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "serving": serving,
        **trained.details,
    }
    with atomic_dir(model_dir) as out:
        trained.save(Path(out))
        (Path(out) / ONNX_FILE).write_bytes(onnx_bytes)
        if linear is not None:
            (Path(out) / LINEAR_FILE).write_text(json.dumps(linear, indent=1))
        shutil.copyfile(transform_path, Path(out) / TRANSFORM_FILE)
        (Path(out) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    log.info("trained %s %s (%s) on %d rows in %.1f s: %s", framework, trained.model_type, task, len(training.y_train), seconds, metrics)
    return TrainResult(metrics=metrics, metadata=metadata, curves=trained.curves)
