"""The fitted feature transform: statistics, fitting, and one apply path.

Training, evaluation, batch prediction and the serving process all turn raw
rows into model features with :class:`FittedTransform`, loaded from the same
``transform.json``. That single code path is what keeps training and serving
from skewing apart.

The statistics are gathered per Arrow record batch and merged
(:class:`FeatureStatistics`), so the Beam transform can compute them as a
CombineGlobally over batches, on the DirectRunner or on Dataflow.

Encoding:
* numeric feature -> z-score ``(x - mean) / std``; missing -> 0 (the mean).
* categorical feature -> one-hot over the ``top_k`` most frequent values seen in
  training, plus one out-of-vocabulary column that also takes missing values.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

TRANSFORM_FILE = "transform.json"
OOV = "<OOV>"
_NUMERIC_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean, pa.types.is_null)


def check_columns(schema: pa.Schema, label: str, numeric: list[str], categorical: list[str], where: str) -> None:
    """Fail early, naming the column, when the data cannot feed the transform."""
    present = schema.names
    if label and label not in present:
        raise CauceError(f"label column {label!r} not found in {where}; columns present: {present}")
    missing = [name for name in [*numeric, *categorical] if name not in present]
    if missing:
        raise CauceError(f"feature column(s) {missing} not found in {where}; columns present: {present}")
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise CauceError(f"feature(s) {sorted(overlap)} are listed as both numeric and categorical")
    if label in numeric or label in categorical:
        raise CauceError(f"label column {label!r} is also listed as a feature")


def numeric_column(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """Return ``column`` as float64 with NaN for missing, or raise naming the bad value."""
    if any(check(column.type) for check in _NUMERIC_TYPES):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except pa.ArrowInvalid:
            bad = _first_non_numeric(column)
            raise CauceError(
                f"numeric feature {name!r} holds a non-numeric value {bad!r}; expected numbers "
                f"(cast it in the query, e.g. SAFE_CAST({name} AS FLOAT64))"
            ) from None
    raise CauceError(f"numeric feature {name!r} has type {column.type}; expected a numeric type")


def _first_non_numeric(column) -> Any:
    for value in column.to_pylist():
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return value
    return None


@dataclass
class FeatureStatistics:
    """Mergeable full-pass statistics: the accumulator of the Beam analyzers."""

    numeric: list[str]
    categorical: list[str]
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    total_sq: dict[str, float] = field(default_factory=dict)
    minimum: dict[str, float] = field(default_factory=dict)
    maximum: dict[str, float] = field(default_factory=dict)
    values: dict[str, Counter] = field(default_factory=dict)
    rows: int = 0

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> FeatureStatistics:
        self.rows += batch.num_rows
        for name in self.numeric:
            x = numeric_column(batch.column(name), name)
            x = x[~np.isnan(x)]
            if x.size:
                self.count[name] = self.count.get(name, 0) + int(x.size)
                self.total[name] = self.total.get(name, 0.0) + float(x.sum())
                self.total_sq[name] = self.total_sq.get(name, 0.0) + float(np.dot(x, x))
                self.minimum[name] = min(self.minimum.get(name, math.inf), float(x.min()))
                self.maximum[name] = max(self.maximum.get(name, -math.inf), float(x.max()))
        for name in self.categorical:
            column = pc.cast(batch.column(name), pa.string())
            counts = self.values.setdefault(name, Counter())
            for item in pc.value_counts(column).to_pylist():
                if item["values"] is not None:
                    counts[item["values"]] += item["counts"]
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        self.rows += other.rows
        for name, n in other.count.items():
            self.count[name] = self.count.get(name, 0) + n
            self.total[name] = self.total.get(name, 0.0) + other.total[name]
            self.total_sq[name] = self.total_sq.get(name, 0.0) + other.total_sq[name]
            self.minimum[name] = min(self.minimum.get(name, math.inf), other.minimum[name])
            self.maximum[name] = max(self.maximum.get(name, -math.inf), other.maximum[name])
        for name, counts in other.values.items():
            self.values.setdefault(name, Counter()).update(counts)
        return self


@dataclass
class FittedTransform:
    label: str
    numeric: list[dict]  # [{"name", "mean", "std", "min", "max"}]
    categorical: list[dict]  # [{"name", "vocabulary": [...]}]
    rows_analyzed: int = 0

    # ---- fitting -------------------------------------------------------------
    @classmethod
    def fit(cls, stats: FeatureStatistics, label: str, top_k: int = 100, min_frequency: int = 1) -> FittedTransform:
        numeric = []
        for name in stats.numeric:
            n = stats.count.get(name, 0)
            if n == 0:
                raise CauceError(f"numeric feature {name!r} has no values in the training data (all missing)")
            mean = stats.total[name] / n
            variance = max(stats.total_sq[name] / n - mean * mean, 0.0)
            std = math.sqrt(variance) or 1.0  # a constant feature encodes to 0, not NaN
            numeric.append(
                {"name": name, "mean": mean, "std": std, "min": stats.minimum[name], "max": stats.maximum[name]}
            )
        categorical = []
        for name in stats.categorical:
            counts = stats.values.get(name, Counter())
            # Sort by count, then value, so the vocabulary does not depend on batch order.
            ranked = sorted((item for item in counts.items() if item[1] >= min_frequency), key=lambda kv: (-kv[1], kv[0]))
            categorical.append({"name": name, "vocabulary": [value for value, _ in ranked[:top_k]]})
        return cls(label=label, numeric=numeric, categorical=categorical, rows_analyzed=stats.rows)

    # ---- persistence ---------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": "cauce.transform/v1",
            "label": self.label,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "rows_analyzed": self.rows_analyzed,
            "feature_names": self.feature_names,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / TRANSFORM_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FittedTransform:
        path = Path(directory) / TRANSFORM_FILE
        if not path.exists():
            raise CauceError(f"fitted transform {path} not found: expected the transform step's output")
        data = json.loads(path.read_text())
        if data.get("format") != "cauce.transform/v1":
            raise CauceError(f"{path} is not a cauce transform (format {data.get('format')!r})")
        return cls(data["label"], data["numeric"], data["categorical"], data.get("rows_analyzed", 0))

    # ---- applying ------------------------------------------------------------
    @property
    def input_features(self) -> list[str]:
        return [f["name"] for f in self.numeric] + [f["name"] for f in self.categorical]

    @property
    def feature_names(self) -> list[str]:
        names = [f["name"] for f in self.numeric]
        for feature in self.categorical:
            names += [f"{feature['name']}={value}" for value in feature["vocabulary"]]
            names.append(f"{feature['name']}={OOV}")
        return names

    def _layout(self):
        """Column offsets and value->index lookups, computed once per instance."""
        cached = getattr(self, "_cached_layout", None)
        if cached is None:
            offsets, lookups, start = [], [], len(self.numeric)
            for feature in self.categorical:
                offsets.append(start)
                lookups.append({value: i for i, value in enumerate(feature["vocabulary"])})
                start += len(feature["vocabulary"]) + 1
            means = np.array([f["mean"] for f in self.numeric], dtype=np.float64)
            stds = np.array([f["std"] for f in self.numeric], dtype=np.float64)
            cached = (offsets, lookups, start, means, stds)
            self._cached_layout = cached
        return cached

    def transform_table(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Encode a batch of raw rows (Arrow) into a float32 feature matrix."""
        check_columns(table.schema, "", [f["name"] for f in self.numeric], [f["name"] for f in self.categorical], "input data")
        offsets, _, width, means, stds = self._layout()
        out = np.zeros((table.num_rows, width), dtype=np.float32)
        for j, feature in enumerate(self.numeric):
            x = numeric_column(table.column(feature["name"]), feature["name"])
            z = (x - means[j]) / stds[j]
            out[:, j] = np.where(np.isnan(z), 0.0, z)
        rows = np.arange(table.num_rows)
        for offset, feature in zip(offsets, self.categorical):
            column = pc.cast(table.column(feature["name"]), pa.string())
            index = pc.index_in(column, value_set=pa.array(feature["vocabulary"], pa.string()))
            oov = len(feature["vocabulary"])
            index = np.asarray(pc.fill_null(index, oov).to_numpy(zero_copy_only=False), dtype=np.int64)
            out[rows, offset + index] = 1.0
        return out

    def transform_instances(self, instances: list[dict]) -> np.ndarray:
        """Encode request instances (dicts) for serving, without pandas.

        A missing field or a value of the wrong type raises CauceError naming the
        instance and field; ``null`` is accepted as a missing value, as in training.
        """
        offsets, lookups, width, means, stds = self._layout()
        out = np.zeros((len(instances), width), dtype=np.float32)
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise CauceError(f"instance {i} must be a JSON object of feature values, got {type(instance).__name__}")
            for j, feature in enumerate(self.numeric):
                name = feature["name"]
                if name not in instance:
                    raise CauceError(f"instance {i} is missing field {name!r} (a numeric feature)")
                value = instance[name]
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        raise CauceError(
                            f"instance {i} field {name!r} must be a number, got {value!r}"
                        ) from None
                if value != value:  # NaN is a missing value
                    continue
                out[i, j] = (value - means[j]) / stds[j]
            for offset, lookup, feature in zip(offsets, lookups, self.categorical):
                name = feature["name"]
                if name not in instance:
                    raise CauceError(f"instance {i} is missing field {name!r} (a categorical feature)")
                value = instance[name]
                if value is not None and not isinstance(value, str):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        value = str(value)
                    else:
                        raise CauceError(f"instance {i} field {name!r} must be a string, got {value!r}")
                out[i, offset + lookup.get(value, len(lookup))] = 1.0
        return out
