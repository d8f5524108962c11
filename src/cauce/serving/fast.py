"""Serving fast path for linear scikit-learn models.

Bundles with a ``model.onnx`` (every bundle train writes now) are served by ONNX
Runtime (``cauce.model.OnnxModel``), which needs no such shortcut; this path serves
bundles written before that, loaded with scikit-learn itself.

For one instance, ``LogisticRegression.predict_proba`` spends ~100 us in
scikit-learn's per-call input validation (array checks, feature-count and
finiteness checks, config lookups) and ~2 us in the math. The serving path
already guarantees what that validation checks: the fitted transform emits a
finite float32 matrix of exactly the model's width (``scores_from_features``
checks the shape). So for the linear models we compute the same expression
scikit-learn computes (``decision_function`` = ``X @ coef_.T + intercept_``, then
``expit`` for a binary classifier), with the same numpy operations.

The shortcut is only taken after it reproduced the estimator's own outputs
bit for bit on a probe matrix at load time; any other estimator, task, or a
mismatch keeps the estimator's own method.

Every model also gets ``scores_from_features`` with the width computed once:
``FittedTransform.feature_names`` builds every one-hot column name per call,
a sixth of the whole single-instance request path (cProfile).
"""

from __future__ import annotations

import logging

import numpy as np

from cauce.artifacts import CauceError
from cauce.model import LoadedModel, SklearnModel

log = logging.getLogger(__name__)

_BINARY = {"LogisticRegression"}
_REGRESSION = {"LinearRegression", "Ridge"}


def _linear_outputs(model: LoadedModel):
    """The direct computation for this model, or None when it has none."""
    if type(model) is not SklearnModel:
        return None
    estimator, task = model.estimator, model.task
    name = type(estimator).__name__
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        return None
    coef_t = np.ascontiguousarray(np.atleast_2d(coef).T)
    if task == "binary" and name in _BINARY and coef_t.shape[1] == 1 and len(getattr(estimator, "classes_", [])) == 2:
        from scipy.special import expit

        def binary(features: np.ndarray) -> np.ndarray:
            return expit((features @ coef_t + intercept).reshape(-1))

        return binary
    if task == "regression" and name in _REGRESSION:
        flat = np.ndim(coef) == 1

        def regression(features: np.ndarray) -> np.ndarray:
            values = features @ coef_t + intercept
            return np.asarray(values.reshape(-1) if flat or values.shape[1] == 1 else values, dtype=np.float64)

        return regression
    return None


def _probe(width: int, rows: int = 64) -> np.ndarray:
    """Float32 rows shaped like the transform's output: standardized numbers and one-hot columns."""
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(rows, width)).astype(np.float32)
    probe[rng.random(size=probe.shape) < 0.5] = 0.0
    probe[: rows // 2, ::3] = 1.0
    return probe


def accelerate(model: LoadedModel) -> LoadedModel:
    """Give ``model`` the direct computation of its outputs when it has one that
    reproduces the estimator exactly, and a ``scores_from_features`` that knows
    its width; returns the same object (instance attributes shadow the methods,
    so ``predict_instances`` keeps being the one place predictions are shaped)."""
    width = len(model.transform.feature_names)
    direct = _linear_outputs(model)
    if direct is not None:
        probe = _probe(width)
        for rows in (probe[:1], probe):  # one-row requests and batches take different BLAS paths
            if not np.array_equal(direct(rows), model._outputs(rows)):
                name = type(model.estimator).__name__
                log.warning("serving fast path for %s disabled: it does not reproduce the estimator", name)
                direct = None
                break
    outputs = direct or model._outputs
    if direct is not None:
        model._outputs = direct

    def scores_from_features(features: np.ndarray) -> np.ndarray:  # LoadedModel.scores_from_features, width cached
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != width:
            raise CauceError(f"encoded features have shape {features.shape}; this model expects (rows, {width})")
        return outputs(features)

    model.scores_from_features = scores_from_features
    return model
