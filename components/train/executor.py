"""Train executor: fit a scikit-learn classifier on the encoded training split
and write a self-contained model bundle (see cauce.model)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.features import TRANSFORM_FILE, FittedTransform
from cauce.model import METADATA_FILE, SKLEARN_FILE

log = logging.getLogger(__name__)

# model_type -> (module, class): the estimators a user can pick by name.
ESTIMATORS = {
    "hist_gradient_boosting": ("sklearn.ensemble", "HistGradientBoostingClassifier"),
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier"),
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression"),
}
DEFAULT_HYPERPARAMETERS = {"model_type": "hist_gradient_boosting", "max_iter": 200, "learning_rate": 0.1}


@dataclass
class TrainResult:
    metrics: dict[str, float]
    metadata: dict


def build_estimator(hyperparameters: dict, seed: int):
    """Instantiate the estimator named by ``model_type`` with the other keys as parameters."""
    import importlib

    params = dict(hyperparameters or {})
    model_type = params.pop("model_type", DEFAULT_HYPERPARAMETERS["model_type"])
    if model_type not in ESTIMATORS:
        raise CauceError(f"hyperparameters.model_type {model_type!r} is not supported; expected one of {sorted(ESTIMATORS)}")
    module, name = ESTIMATORS[model_type]
    estimator_cls = getattr(importlib.import_module(module), name)
    estimator = estimator_cls()
    valid = estimator.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CauceError(
            f"unknown hyperparameter(s) {unknown} for model_type {model_type!r}; valid: {sorted(valid)}"
        )
    if "random_state" in valid:
        params.setdefault("random_state", seed)
    # KFP passes dict parameters through a protobuf Struct, where every number is
    # a float: give integer-valued parameters back their int type.
    for key, value in params.items():
        default = valid.get(key)
        if isinstance(value, float) and value.is_integer() and isinstance(default, int) and not isinstance(default, bool):
            params[key] = int(value)
    try:
        estimator.set_params(**params)
    except (TypeError, ValueError) as error:
        raise CauceError(f"invalid hyperparameters for {model_type!r}: {error}") from None
    return model_type, estimator


def _matrix(transformed_dir: str, split: str, fitted: FittedTransform) -> tuple[np.ndarray, np.ndarray]:
    table = data.read_split(transformed_dir, split, columns=[*fitted.feature_names, fitted.label])
    if table.num_rows == 0:
        raise CauceError(f"split {split!r} of {transformed_dir} is empty: nothing to train or evaluate on")
    features = np.column_stack([table.column(name).to_numpy() for name in fitted.feature_names]).astype(np.float32)
    return features, table.column(fitted.label).to_numpy()


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    metrics = {"accuracy": float(accuracy_score(y_true, scores >= 0.5))}
    metrics["log_loss"] = float(log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if len(np.unique(y_true)) == 2:
        metrics["auc"] = float(roc_auc_score(y_true, scores))
    return metrics


def run_train(
    transformed_dir: str,
    transform_dir: str,
    model_dir: str,
    hyperparameters: dict | None = None,
    train_split: str = "train",
    eval_split: str = "eval",
    seed: int = 42,
) -> TrainResult:
    import joblib
    import sklearn

    fitted = FittedTransform.load(transform_dir)
    model_type, estimator = build_estimator(hyperparameters or DEFAULT_HYPERPARAMETERS, seed)
    x_train, y_train = _matrix(transformed_dir, train_split, fitted)
    if len(np.unique(y_train)) < 2:
        raise CauceError(f"label {fitted.label!r} has a single class in split {train_split!r}: cannot train a classifier")
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        estimator.fit(x_train, y_train)
    except InvalidParameterError as error:
        raise CauceError(f"invalid hyperparameters for {model_type!r}: {error}") from None

    metrics = {f"train_{k}": v for k, v in classification_metrics(y_train, estimator.predict_proba(x_train)[:, 1]).items()}
    if eval_split in data.split_names(transformed_dir):
        x_eval, y_eval = _matrix(transformed_dir, eval_split, fitted)
        metrics.update({f"eval_{k}": v for k, v in classification_metrics(y_eval, estimator.predict_proba(x_eval)[:, 1]).items()})

    metadata = {
        "format": "cauce.model/v1",
        "framework": "sklearn",
        "framework_version": sklearn.__version__,
        "model_type": model_type,
        "hyperparameters": estimator.get_params(),
        "task": "binary_classification",
        "label": fitted.label,
        "features": fitted.input_features,
        "encoded_features": len(fitted.feature_names),
        "train_rows": int(len(y_train)),
        "seed": seed,
        "metrics": metrics,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    with atomic_dir(model_dir) as out:
        joblib.dump(estimator, Path(out) / SKLEARN_FILE)
        shutil.copyfile(Path(transform_dir) / TRANSFORM_FILE, Path(out) / TRANSFORM_FILE)
        (Path(out) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    log.info("trained %s on %d rows: %s", model_type, len(y_train), metrics)
    return TrainResult(metrics=metrics, metadata=metadata)
