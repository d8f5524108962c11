"""What the serving process adds to a loaded model.

Linear models (binary logistic regression, linear and ridge regression) arrive with
their fused scorer already in place (``cauce.model.with_linear_scorer``, used by
every ``cauce.model.load``): serving, batch prediction and evaluation score them the
same way, per instance in plain Python from the fitted transform's plan, with no
numpy and no ONNX Runtime call in a request. That replaced this module's own
shortcut for linear scikit-learn estimators.

Every other model gets ``scores_from_features`` with the width computed once:
``FittedTransform.feature_names`` builds every one-hot column name per call, a sixth
of the whole single-instance request path (cProfile).
"""

from __future__ import annotations

import numpy as np

from cauce.artifacts import CauceError
from cauce.model import LoadedModel


def accelerate(model: LoadedModel) -> LoadedModel:
    """Give ``model`` a ``scores_from_features`` that knows its width (a model with a
    linear scorer keeps the scorer's); returns the same object (instance attributes
    shadow the methods, so ``predict_instances`` keeps being the one place predictions
    are shaped)."""
    if "linear" in vars(model):
        return model
    width = model.transform.width
    outputs = model._outputs

    def scores_from_features(features: np.ndarray) -> np.ndarray:  # LoadedModel.scores_from_features, width cached
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != width:
            raise CauceError(f"encoded features have shape {features.shape}; this model expects (rows, {width})")
        return outputs(features)

    model.scores_from_features = scores_from_features
    return model
