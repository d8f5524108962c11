"""The servable model bundle: one directory that serving, evaluation and batch
prediction load the same way.

    <model>/
        cauce_model.json   framework, versions, label, features, task, metrics
        transform.json     the fitted transform (cauce.features)
        model.joblib       the estimator (scikit-learn)

Only the framework the bundle names is imported, so loading a scikit-learn
model never imports TensorFlow or torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cauce.artifacts import CauceError
from cauce.features import FittedTransform

METADATA_FILE = "cauce_model.json"
SKLEARN_FILE = "model.joblib"


@dataclass
class LoadedModel:
    metadata: dict
    transform: FittedTransform
    estimator: object

    @property
    def label(self) -> str:
        return self.metadata["label"]

    def scores_from_features(self, features: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of an encoded matrix."""
        return self.estimator.predict_proba(features)[:, 1]

    def predict_scores(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Scores for raw rows (Arrow), through the fitted transform."""
        return self.scores_from_features(self.transform.transform_table(table))

    def predict_instances(self, instances: list[dict]) -> list[dict]:
        """Serving: raw request instances in, one prediction dict per instance out."""
        scores = self.scores_from_features(self.transform.transform_instances(instances))
        threshold = float(self.metadata.get("decision_threshold", 0.5))
        return [{"label": int(score >= threshold), "score": round(float(score), 6)} for score in scores]


def load(model_dir: str | os.PathLike) -> LoadedModel:
    root = Path(model_dir)
    meta_path = root / METADATA_FILE
    if not meta_path.exists():
        raise CauceError(f"{meta_path} not found: {root} is not a cauce model directory")
    metadata = json.loads(meta_path.read_text())
    framework = metadata.get("framework")
    if framework != "sklearn":
        raise CauceError(f"model framework {framework!r} in {meta_path} is not supported; expected 'sklearn'")
    import joblib

    estimator = joblib.load(root / SKLEARN_FILE)
    return LoadedModel(metadata=metadata, transform=FittedTransform.load(root), estimator=estimator)
