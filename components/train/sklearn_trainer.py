"""scikit-learn trainer: an estimator picked by ``model_type``, saved with joblib.

Hyperparameters: ``{"model_type": <name>, <estimator parameters>...}``; empty
means ``DEFAULT_HYPERPARAMETERS``. Unknown names fail with the valid ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.components.train.common import Trained, TrainingData
from cauce.features import FittedTransform
from cauce.model import SKLEARN_FILE, SklearnModel

# task family -> model_type -> (module, class): the estimators a user can pick by name.
ESTIMATORS_BY_TASK = {
    "classification": {
        "hist_gradient_boosting": ("sklearn.ensemble", "HistGradientBoostingClassifier"),
        "random_forest": ("sklearn.ensemble", "RandomForestClassifier"),
        "logistic_regression": ("sklearn.linear_model", "LogisticRegression"),
    },
    "regression": {
        "hist_gradient_boosting": ("sklearn.ensemble", "HistGradientBoostingRegressor"),
        "random_forest": ("sklearn.ensemble", "RandomForestRegressor"),
        "ridge": ("sklearn.linear_model", "Ridge"),
        "linear_regression": ("sklearn.linear_model", "LinearRegression"),
    },
}
ESTIMATORS = ESTIMATORS_BY_TASK["classification"]
DEFAULT_HYPERPARAMETERS = {"model_type": "hist_gradient_boosting", "max_iter": 200, "learning_rate": 0.1}


def build_estimator(hyperparameters: dict, seed: int, task: str = "binary"):
    """Instantiate the estimator named by ``model_type`` with the other keys as parameters."""
    params = dict(hyperparameters or DEFAULT_HYPERPARAMETERS)
    family = "regression" if task == "regression" else "classification"
    estimators = ESTIMATORS_BY_TASK[family]
    model_type = params.pop("model_type", DEFAULT_HYPERPARAMETERS["model_type"])
    if model_type not in estimators:
        raise CauceError(
            f"hyperparameters.model_type {model_type!r} is not supported for task {task!r}; "
            f"expected one of {sorted(estimators)}"
        )
    module, name = estimators[model_type]
    estimator = getattr(importlib.import_module(module), name)()
    valid = estimator.get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CauceError(f"unknown hyperparameter(s) {unknown} for model_type {model_type!r}; valid: {sorted(valid)}")
    if "random_state" in valid:
        params.setdefault("random_state", seed)
    # KFP passes dict parameters through a protobuf Struct, where every number is
    # a float: give integer-valued parameters back their int type.
    for key, value in params.items():
        if isinstance(value, float) and value.is_integer() and _takes_int_not_float(estimator, key, valid.get(key)):
            params[key] = int(value)
    try:
        estimator.set_params(**params)
    except (TypeError, ValueError) as error:
        raise CauceError(f"invalid hyperparameters for {model_type!r}: {error}") from None
    return model_type, estimator


def _takes_int_not_float(estimator, key: str, default) -> bool:
    """Whether ``key`` wants an int where a float would mean something else or fail.

    Parameters defaulting to an int qualify; so do those defaulting to None whose
    sklearn constraints allow integers but no real numbers (``max_depth``), while
    e.g. ``max_features`` (where 1.0 means "all" and 1 means "one") keeps its float.
    """
    if isinstance(default, int) and not isinstance(default, bool):
        return True
    from numbers import Integral, Real

    constraints = getattr(type(estimator), "_parameter_constraints", {}).get(key, [])
    number_kinds = {c.type for c in constraints if isinstance(getattr(c, "type", None), type)}
    takes_real = any(kind is not Integral and issubclass(kind, Real) for kind in number_kinds)
    return Integral in number_kinds and not takes_real


def load_framework():
    import joblib
    import sklearn

    return sklearn, joblib


@dataclass
class Plan:
    model_type: str
    estimator: object


def plan(hyperparameters: dict, task: str, seed: int) -> Plan:
    model_type, estimator = build_estimator(hyperparameters, seed, task)
    # Parameter values (not only names) are checked by fit; check them now, before any data is read.
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        estimator._validate_params()
    except InvalidParameterError as error:
        raise CauceError(f"invalid hyperparameters for {model_type!r}: {error}") from None
    except AttributeError:  # an estimator without declared parameter constraints
        pass
    return Plan(model_type, estimator)


def fit(plan: Plan, data: TrainingData, transform: FittedTransform, seed: int) -> Trained:
    import joblib
    import sklearn
    from sklearn.utils._param_validation import InvalidParameterError

    estimator = plan.estimator
    target = data.y_train.astype("int64") if data.task == "binary" else data.y_train
    try:
        estimator.fit(data.x_train, target)
    except InvalidParameterError as error:
        raise CauceError(f"invalid hyperparameters for {plan.model_type!r}: {error}") from None

    def save(directory: Path) -> None:
        joblib.dump(estimator, directory / SKLEARN_FILE)

    provisional = {"task": data.task, "label": transform.label, "classes": data.classes}
    return Trained(
        model=SklearnModel(metadata=provisional, transform=transform, estimator=estimator),
        save=save,
        framework_version=sklearn.__version__,
        model_type=plan.model_type,
        hyperparameters=estimator.get_params(),
        versions={"scikit-learn": sklearn.__version__, "joblib": joblib.__version__},
    )
