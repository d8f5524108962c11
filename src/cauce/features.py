"""The fitted feature transform: one apply path for training and serving.

Training (the Beam encode), evaluation, batch prediction and the serving
process all turn raw rows into model features with :class:`FittedTransform`,
loaded from the same ``transform.json``. That single code path is what keeps
training and serving from skewing apart.

A fitted transform is a recipe (:mod:`cauce.recipe`: row-level steps and
analyzers) plus the state its analyzers fitted on the analyze split (means,
vocabularies, quantile boundaries, fill values). ``transform.json`` format v2
holds both; v1 files (z-score of ``numeric``, one-hot of ``categorical``) still
load, as the equivalent recipe.

The shorthand (``numeric_features`` + ``categorical_features``) encodes:
* numeric feature -> z-score ``(x - mean) / std``; missing -> 0 (the mean).
* categorical feature -> one-hot over the ``top_k`` most frequent values seen in
  training, plus one out-of-vocabulary column that also takes missing values.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import struct
from dataclasses import InitVar, dataclass
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError
from cauce.recipe import ANALYZERS, MISSING, OOV, Recipe, numeric_values

TRANSFORM_FILE = "transform.json"


_SCALAR_ROWS = 8  # measured crossover of the scalar and gathered serving paths (9 fields, 48 features)
_CACHED_ROW_STARTS = 256  # request sizes whose one-hot row offsets are kept
_STRING_TYPES = frozenset((str, type(None)))
FORMAT_V1 = "cauce.transform/v1"
FORMAT = "cauce.transform/v2"


def _parse_type(text: str | None) -> pa.DataType | None:
    """An Arrow type back from its ``str()`` (as recorded in transform.json)."""
    if not text:
        return None
    try:
        return pa.type_for_alias(text)
    except (ValueError, KeyError):
        pass
    if text.startswith("timestamp["):
        unit, _, tz = text[len("timestamp[") : -1].partition(", tz=")
        return pa.timestamp(unit, tz=tz or None)
    return None


def _is_numeric_type(t: pa.DataType | None) -> bool:
    return t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


@dataclass
class FittedTransform:
    """A recipe and its fitted state (``states``: step number -> that step's fitted values).

    ``numeric``/``categorical`` are read only when ``recipe`` is None: a v1 transform
    (``[{"name", "mean", "std", "min", "max"}]`` z-scored, ``[{"name", "vocabulary"}]``
    one-hot), turned into the equivalent recipe and states."""

    label: str
    numeric: InitVar[list[dict] | None] = None
    categorical: InitVar[list[dict] | None] = None
    rows_analyzed: int = 0
    recipe: dict | None = None
    states: dict | None = None  # step number -> fitted state of that step
    input_types: dict | None = None  # raw input column -> Arrow type (str) in the analyze split

    def __post_init__(self, numeric: list[dict] | None, categorical: list[dict] | None):
        if self.recipe is None:
            steps, states = [], {}
            if numeric:
                steps.append({"type": "zscore", "columns": [f["name"] for f in numeric]})
                states[len(steps)] = {f["name"]: {k: v for k, v in f.items() if k != "name"} for f in numeric}
            if categorical:
                top_k = max([len(f["vocabulary"]) for f in categorical] + [1])
                steps.append({"type": "vocabulary", "columns": [f["name"] for f in categorical], "top_k": top_k})
                states[len(steps)] = {f["name"]: {"vocabulary": list(f["vocabulary"])} for f in categorical}
            self.recipe, self.states = {"steps": steps}, states
        self.states = {int(k): v for k, v in (self.states or {}).items()}
        self._recipe = Recipe(self.recipe, self.label)
        missing = [s.index for s in self._recipe.steps if s.fitted and s.index not in self.states]
        if missing:
            raise CauceError(f"fitted transform has no fitted state for recipe step(s) {missing}")
        self._build_layout()

    @classmethod
    def fit_table(cls, recipe, table: pa.Table, label: str = "", batch_rows: int = 65_536) -> FittedTransform:
        """Fit ``recipe`` on an in-memory table, phase by phase, with the same
        accumulators the Beam analyze pass merges (tests, notebooks, benchmarks)."""
        recipe = Recipe.parse(recipe, label)
        states: dict = {}
        for phase in range(recipe.phases):
            accumulators = PhaseAccumulator(recipe, states, phase)
            for batch in table.to_batches(max_chunksize=batch_rows):
                accumulators.add_batch(batch)
            states.update(accumulators.fit())
        return cls.from_recipe(recipe, label, states, table.num_rows, table.schema)

    @classmethod
    def from_recipe(cls, recipe: Recipe, label: str, states: dict, rows: int, schema: pa.Schema | None) -> FittedTransform:
        types = {c: str(schema.field(c).type) for c in recipe.input_columns if schema is not None and c in schema.names}
        return cls(label, rows_analyzed=rows, recipe=recipe.to_dict(), states=states, input_types=types)

    # ---- persistence ---------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "label": self.label,
            "recipe": self.recipe,
            "states": {str(k): v for k, v in sorted(self.states.items())},
            "input_features": self.input_features,
            "input_types": self.input_types or {},
            "rows_analyzed": self.rows_analyzed,
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "transform") -> FittedTransform:
        if data.get("format") == FORMAT_V1:
            return cls(data["label"], data["numeric"], data["categorical"], data.get("rows_analyzed", 0))
        if data.get("format") != FORMAT:
            raise CauceError(f"{where} is not a cauce transform (format {data.get('format')!r}; expected {FORMAT!r})")
        return cls(
            data["label"],
            rows_analyzed=data.get("rows_analyzed", 0),
            recipe=data["recipe"],
            states=data["states"],
            input_types=data.get("input_types") or None,
        )

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / TRANSFORM_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FittedTransform:
        path = Path(directory) / TRANSFORM_FILE
        if not path.exists():
            raise CauceError(f"fitted transform {path} not found: expected the transform step's output")
        return cls.from_dict(json.loads(path.read_text()), str(path))

    # ---- layout --------------------------------------------------------------
    def _build_layout(self) -> None:
        """Each analyzer's output rows in the feature matrix, and the serving plan."""
        self._offsets, start, names = {}, 0, []
        for step in self._recipe.steps:
            if step.analyzer:
                self._offsets[step.index] = start
                step_names = step.output_names(self.states[step.index])
                names += step_names
                start += len(step_names)
        self._width, self._names = start, names
        self._types = {c: _parse_type(t) for c, t in (self.input_types or {}).items()}
        # Serving fast path: a recipe of analyzers over raw columns needs no Arrow at all.
        self._direct = all(step.analyzer for step in self._recipe.steps)
        self._lookups = {
            (step.index, c): {value: i for i, value in enumerate(self.states[step.index][c]["vocabulary"])}
            for step in self._recipe.steps
            if step.type == "vocabulary"
            for c in step.spec["columns"]
        }
        self._plan = [(step, step.spec["columns"]) for step in self._recipe.steps if step.analyzer]
        self._scalar_plan = self._compile_scalar_plan() if self._direct else []
        self._gathered_plan = self._compile_gathered_plan() if self._direct else None
        self._row_starts_cache: dict[int, np.ndarray] = {}

    @property
    def input_features(self) -> list[str]:
        """The raw columns (request fields) the transform reads."""
        return list(self._recipe.input_columns)

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def width(self) -> int:
        return self._width

    # ---- applying ------------------------------------------------------------
    def transform_table(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Encode a batch of raw rows (Arrow) into a float32 ``(rows, features)`` matrix."""
        return np.ascontiguousarray(self.transform_columns(table).T)

    def transform_columns(self, table: pa.Table | pa.RecordBatch, out: np.ndarray | None = None) -> np.ndarray:
        """The same encoding, feature-major: a float32 ``(features, rows)`` matrix whose
        rows become the encoded Parquet columns without a copy (the Beam encode).

        ``out``, a float32 buffer of at least features x rows elements, is overwritten
        and the result is a view of it. The Beam encode reuses one buffer for every
        batch: a fresh ~55 MB matrix per 128 k rows (104 features) spent as much time
        in page faults as in encoding, and varied run to run with the kernel's state.
        """
        missing = [c for c in self.input_features if c not in table.schema.names]
        if missing:
            raise CauceError(f"feature column(s) {missing} not found in input data; columns present: {table.schema.names}")
        columns = {}
        for name in self.input_features:
            column = table.column(name)
            columns[name] = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        rows = table.num_rows
        if out is None:
            matrix = np.zeros((self._width, rows), dtype=np.float32)
        else:
            matrix = out[: self._width * rows].reshape(self._width, rows)
            matrix.fill(0.0)

        def emit(step, current: dict) -> None:
            self._encode_step(step, {c: current[c] for c in step.spec["columns"]}, matrix, rows)

        self._recipe.run(columns, self.states, analyzer_out=emit)
        return matrix

    def _encode_step(self, step, columns: dict, out: np.ndarray, rows: int, lookups: dict | None = None) -> None:
        """One analyzer's features into ``out`` (features x rows). ``columns`` hold Arrow
        arrays (table path) or, on the serving fast path, float64 vectors / index vectors."""
        offset, state = self._offsets[step.index], self.states[step.index]
        for name in step.spec["columns"]:
            column, fitted = columns[name], state[name]
            if step.type == "vocabulary":
                oov = len(fitted["vocabulary"])
                if isinstance(column, np.ndarray):
                    index = column
                elif pa.types.is_dictionary(column.type):  # look up each distinct value once
                    vocabulary = pa.array(fitted["vocabulary"], pa.string())
                    found = pc.index_in(pc.cast(column.dictionary, pa.string()), value_set=vocabulary)
                    codes = pc.fill_null(pc.take(found, column.indices), oov)
                    index = np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)
                else:
                    found = pc.index_in(pc.cast(column, pa.string()), value_set=pa.array(fitted["vocabulary"], pa.string()))
                    index = np.asarray(pc.fill_null(found, oov).to_numpy(zero_copy_only=False), dtype=np.int64)
                if step.spec["encoding"] == "one_hot":
                    out[offset + index, np.arange(rows)] = 1.0
                    offset += oov + 1
                else:
                    out[offset] = index
                    offset += 1
                continue
            x = column if isinstance(column, np.ndarray) else numeric_values(column, name)
            missing = np.isnan(x)
            # In place on one float64 temporary, missing rows set after: the same IEEE
            # operations as np.where(missing, fill, (x - a) / b), at a seventh of its time.
            if step.type == "zscore":
                z = x - fitted["mean"]
                z /= fitted["std"]
                z[missing] = 0.0
                out[offset] = z
                offset += 1
            elif step.type == "min_max":
                span = (fitted["max"] - fitted["min"]) or 1.0
                z = x - fitted["min"]
                z /= span
                z[missing] = (fitted["mean"] - fitted["min"]) / span
                out[offset] = z
                offset += 1
            else:  # bucketize
                boundaries = np.asarray(fitted["boundaries"], dtype=np.float64)
                bucket = np.searchsorted(boundaries, x, side="right")
                if step.spec["encoding"] == "one_hot":
                    bucket[missing] = len(boundaries) + 1
                    out[offset + bucket, np.arange(rows)] = 1.0
                    offset += len(boundaries) + 2
                else:
                    out[offset] = bucket
                    out[offset, missing] = -1.0
                    offset += 1

    def transform_instances(self, instances: list[dict], may_hold_booleans: bool = True) -> np.ndarray:
        """Encode request instances (dicts) for serving: the same features as
        :meth:`transform_table` on the same rows, bit for bit.

        A missing field or a value of the wrong type raises CauceError naming the
        instance and field; ``null`` is accepted as a missing value, as in training.
        The coercions (docs/serving.md): a numeric field takes a JSON number or a string
        spelling a finite number, never ``true``/``false`` nor a non-finite value; a
        categorical field takes a string, or a number spelled as training's cast spells
        it (``8`` -> ``"8"``, ``1.0`` -> ``"1"``), never a boolean. The serving app
        passes ``may_hold_booleans=False`` when the request body holds no JSON boolean,
        which spares the gathered path its per-value scan.
        """
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise CauceError(f"instance {i} must be a JSON object of feature values, got {type(instance).__name__}")
        if not self._direct:
            return self.transform_table(self.instances_to_table(instances))
        if len(instances) <= _SCALAR_ROWS:
            return self._transform_few(instances)
        if may_hold_booleans:
            self._refuse_booleans(instances)
        try:
            return self._transform_many(instances)
        except (KeyError, TypeError, ValueError, CauceError):
            # A value the gathered path cannot take: the per-column path below meets the
            # same values in plan order, so it raises the error naming the first bad
            # instance and field (or encodes a shape the gathered path does not handle).
            return self._transform_by_column(instances)

    def _refuse_booleans(self, instances: list[dict]) -> None:
        """CauceError naming the first instance and field holding ``true``/``false``."""
        for i, instance in enumerate(instances):
            for kind, name, _, _ in self._scalar_plan:
                value = instance.get(name)
                if type(value) is bool:
                    raise boolean_error(i, name, value, self._types.get(name), kind in ("one_hot", "index"))

    def field_of_feature(self, feature: int) -> str:
        """The request field feature column ``feature`` is computed from."""
        for _, name, offset, _ in reversed(self._scalar_plan):
            if offset <= feature:
                return name
        name = self._names[feature]
        return next((field for field in self.input_features if name == field or name.startswith(f"{field}")), name)

    def _transform_by_column(self, instances: list[dict]) -> np.ndarray:
        """Per column through :meth:`_encode_step`: the reference for the gathered path."""
        rows = len(instances)
        out = np.zeros((self._width, rows), dtype=np.float32)
        columns: dict = {}
        for step, names in self._plan:
            for name in names:
                values = _field(instances, name)
                if step.type == "vocabulary":
                    lookup = self._lookups[(step.index, name)]
                    oov = len(lookup)
                    columns[name] = np.fromiter(
                        (lookup.get(v, oov) for v in _strings(values, name)), dtype=np.int64, count=rows
                    )
                else:
                    columns[name] = _numbers(values, name, self._types.get(name))
            self._encode_step(step, columns, out, rows)
        return np.ascontiguousarray(out.T)

    def _compile_gathered_plan(self) -> tuple:
        """For :meth:`_transform_many`: one getter of every field the plan reads (the scale
        fields first), how many are scale fields (z-score, min-max), where their features
        go (a slice when adjacent) and their constants as columns; then per other field
        its scalar-plan entry, with one-hot lookups that return the feature's offset."""
        scale = [entry for entry in self._scalar_plan if entry[0] == "scale"]
        others = []
        for kind, name, offset, constants in self._scalar_plan:
            if kind == "one_hot":
                shifted = {value: offset + code for value, code in constants.items()}
                others.append((kind, name, offset, constants, shifted, offset + len(constants)))
            elif kind != "scale":
                others.append((kind, name, offset, constants, constants, len(constants) if kind == "index" else 0))
        offsets = [offset for _, _, offset, _ in scale]
        adjacent = bool(offsets) and offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        where = slice(offsets[0], offsets[0] + len(offsets)) if adjacent else offsets
        constants = np.array([c for _, _, _, c in scale], dtype=np.float64).reshape(len(scale), 3)
        fields = _getter([name for _, name, _, _ in scale] + [entry[1] for entry in others])
        centers, scales, fills = (np.ascontiguousarray(constants[:, i : i + 1]) for i in range(3))
        return fields, len(scale), where, centers, scales, fills, others

    def _transform_many(self, instances: list[dict]) -> np.ndarray:
        """Several instances of an analyzer-only recipe, gathered column-wise: every field
        of every instance with one C-level getter per instance, the scale fields into one
        float64 array scaled in one vectorized pass, each vocabulary field looked up with
        C-level maps, and every one-hot feature set by one ``np.put``. The same IEEE
        float64 operations as :meth:`_encode_step`, so bit-identical to the table path.
        Raises KeyError/TypeError/ValueError/CauceError on any value it cannot take (the
        caller then goes through :meth:`_transform_by_column` for the error to report)."""
        rows, width = len(instances), self._width
        fields, scaled, where, centers, scales, fills, others = self._gathered_plan
        columns = list(zip(*map(fields, instances)))
        out = np.zeros((rows, width), dtype=np.float32)
        if scaled:
            try:  # np.fromiter is the faster gather, but takes no None (a missing value)
                x = np.fromiter(chain.from_iterable(columns[:scaled]), np.float64, rows * scaled)
            except TypeError:
                x = np.array(columns[:scaled], dtype=np.float64)
                if x.size != rows * scaled:  # every value a one-element list, say: not a number
                    raise ValueError("nested values") from None
            x = x.reshape(scaled, rows)  # one row per field
            z = x - centers
            z /= scales
            missing = np.isnan(x)
            if missing.any():
                # NaN is a null, or a string spelling "nan", which is refused: the
                # per-column path names it.
                if int(missing.sum()) != sum(column.count(None) for column in columns[:scaled]):
                    raise ValueError("a string spelling NaN")
                z = np.where(missing, fills, z)
            out[:, where] = z.T
        if not others:
            return out
        # Flat indices of the one-hot features set to 1: the feature index of each
        # instance, one column after the other, plus each row's start; then one np.put.
        hot: list[int] = []
        for (kind, name, offset, constants, lookup, oov), column in zip(others, columns[scaled:]):
            if kind == "one_hot" or kind == "index":
                codes = list(map(lookup.get, column, repeat(oov, rows)))
                # A miss is an unseen value, a missing one, or a number that training saw as its string.
                if oov in codes and not _STRING_TYPES.issuperset(map(type, column)):
                    for i, value in enumerate(column):
                        if value is not None and type(value) is not str:
                            codes[i] = lookup.get(_string_value(value, i, name), oov)
                if kind == "index":
                    out[:, offset] = codes
                else:
                    hot += codes
                continue
            values = np.fromiter(map(_as_float, column), np.float64, rows)
            bucket = np.searchsorted(np.asarray(constants, dtype=np.float64), values, side="right")
            missing = np.isnan(values)
            if kind == "bucket":
                out[:, offset] = bucket
                out[missing, offset] = -1.0
                continue
            bucket[missing] = len(constants) + 1
            hot += (bucket + offset).tolist()
        if hot:
            flat = np.array(hot, dtype=np.intp)
            flat += self._row_starts(rows)
            np.put(out, flat, 1.0)
        return out

    def _row_starts(self, rows: int) -> np.ndarray:
        """Each row's first flat index in a (rows, width) matrix, once per one-hot column
        (the order :meth:`_transform_many` lists its codes in); kept for small sizes."""
        starts = self._row_starts_cache.get(rows)
        if starts is None:
            hot_columns = sum(1 for entry in self._gathered_plan[-1] if entry[0] in ("one_hot", "bucket_one_hot"))
            starts = np.tile(np.arange(0, rows * self._width, self._width, dtype=np.intp), hot_columns)
            starts.flags.writeable = False  # shared by every request of this size
            if rows <= _CACHED_ROW_STARTS:
                self._row_starts_cache[rows] = starts
        return starts

    def _compile_scalar_plan(self) -> list[tuple]:
        """Per feature column: (kind, column, offset, constants) for :meth:`_transform_few`."""
        plan = []
        for step, names in self._plan:
            offset = self._offsets[step.index]
            for name in names:
                fitted = self.states[step.index][name]
                if step.type == "vocabulary":
                    lookup = self._lookups[(step.index, name)]
                    plan.append(("one_hot" if step.spec["encoding"] == "one_hot" else "index", name, offset, lookup))
                    offset += len(lookup) + 1 if step.spec["encoding"] == "one_hot" else 1
                elif step.type == "zscore":
                    plan.append(("scale", name, offset, (fitted["mean"], fitted["std"], 0.0)))
                    offset += 1
                elif step.type == "min_max":
                    span = (fitted["max"] - fitted["min"]) or 1.0
                    plan.append(("scale", name, offset, (fitted["min"], span, (fitted["mean"] - fitted["min"]) / span)))
                    offset += 1
                else:
                    boundaries = [float(b) for b in fitted["boundaries"]]
                    one_hot = step.spec["encoding"] == "one_hot"
                    plan.append(("bucket_one_hot" if one_hot else "bucket", name, offset, boundaries))
                    offset += len(boundaries) + 2 if one_hot else 1
        return plan

    def _transform_few(self, instances: list[dict]) -> np.ndarray:
        """One or two instances: plain Python floats beat numpy's per-call overhead
        (~4 us against ~30 us for one instance); the same IEEE float64 operations,
        so the features are bit-identical to the vectorized path."""
        out = np.zeros((len(instances), self._width), dtype=np.float32)
        for i, instance in enumerate(instances):
            row = out[i]
            for kind, name, offset, constants in self._scalar_plan:
                try:
                    value = instance[name]
                except KeyError:
                    raise CauceError(f"instance {i} is missing field {name!r}") from None
                if kind == "one_hot" or kind == "index":
                    if value is not None and type(value) is not str:
                        value = _string_value(value, i, name)
                    position = constants.get(value, len(constants))
                    if kind == "one_hot":
                        row[offset + position] = 1.0
                    else:
                        row[offset] = position
                    continue
                if value is not None and type(value) is not float:
                    if type(value) is bool:
                        raise boolean_error(i, name, value, self._types.get(name))
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        raise CauceError(f"instance {i} field {name!r} must be a number, got {value!r}") from None
                    if not math.isfinite(value):  # "nan", "inf", "1e999" spelled as strings
                        raise non_finite_error(i, name, instance[name])
                missing = value is None or value != value
                if kind == "scale":
                    center, scale, fill = constants
                    row[offset] = fill if missing else (value - center) / scale
                elif kind == "bucket":
                    row[offset] = -1.0 if missing else bisect.bisect_right(constants, value)
                else:
                    row[offset + (len(constants) + 1 if missing else bisect.bisect_right(constants, value))] = 1.0
        return out

    def linear_scorer(self, coefficients, intercept: float, link: str) -> LinearScorer:
        """The fused scorer of a linear model over this transform's features (:class:`LinearScorer`)."""
        return LinearScorer(self, coefficients, intercept, link)

    def instances_to_table(self, instances: list[dict]) -> pa.Table:
        """Request instances -> an Arrow table typed like the analyze split, so the
        recipe runs on exactly the types it was fitted on."""
        arrays = {}
        for name in self.input_features:
            values = _field(instances, name)
            expected = self._types.get(name)
            if _is_numeric_type(expected) or (expected is None and name in self._numeric_inputs()):
                x = _numbers(values, name, expected)
                array = pa.array(x, mask=np.fromiter((v is None for v in values), dtype=bool, count=len(values)))
                if expected is not None and not pa.types.is_floating(expected):
                    try:
                        array = pc.cast(array, expected)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        i = next(i for i, v in enumerate(x) if not np.isnan(v) and not float(v).is_integer())
                        raise CauceError(f"instance {i} field {name!r} must be an integer, got {values[i]!r}") from None
            elif expected is not None and (pa.types.is_string(expected) or pa.types.is_large_string(expected)):
                array = pa.array(_strings(values, name), pa.string())
            else:
                try:
                    array = pa.array(values, type=expected)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                    array = _convert_by_cast(values, expected, name)
            arrays[name] = array
        return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(instances))})

    def _numeric_inputs(self) -> set[str]:
        return {c for s in self._recipe.steps if s.type in ("zscore", "min_max", "bucketize") for c in s.spec["columns"]}


def _getter(names: list[str]):
    """``instance -> tuple of its values for names`` in one C call per instance
    (``itemgetter`` of one name returns the bare value, hence the wrapper)."""
    if len(names) == 1:
        name = names[0]
        return lambda instance: (instance[name],)
    return itemgetter(*names) if names else (lambda instance: ())


def _as_float(value) -> float:
    """A request value as np.array(..., float64) takes it: None is NaN."""
    return math.nan if value is None else float(value)


def _field(instances: list[dict], name: str) -> list:
    try:
        return [instance[name] for instance in instances]
    except KeyError:
        i = next(i for i, instance in enumerate(instances) if name not in instance)
        raise CauceError(f"instance {i} is missing field {name!r}") from None


def _numbers(values: list, name: str, training_type: pa.DataType | None = None) -> np.ndarray:
    """Request values -> float64 with NaN for null (numbers, or strings spelling finite
    numbers; never booleans, never NaN or infinity)."""
    try:
        x = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        for i, value in enumerate(values):
            try:
                if value is not None:
                    float(value)
            except (TypeError, ValueError):
                raise CauceError(f"instance {i} field {name!r} must be a number, got {value!r}") from None
        raise CauceError(f"field {name!r} must hold numbers") from None
    if x.dtype == np.float64 and not np.isfinite(x).all() or True in map(_is_bool, values):
        for i, value in enumerate(values):
            if type(value) is bool:
                raise boolean_error(i, name, value, training_type)
            if value is not None and not math.isfinite(x[i]):
                raise non_finite_error(i, name, value)
    return x


def _is_bool(value) -> bool:
    return type(value) is bool


def boolean_error(i: int, name: str, value: bool, training_type: pa.DataType | None, categorical: bool = False) -> CauceError:
    """A JSON boolean where a number or a category belongs (docs/serving.md)."""
    was = f" (it was {_bigquery_name(training_type)} in training)" if training_type is not None and not categorical else ""
    expected = "a string" if categorical else "a number"
    return CauceError(
        f"instance {i} field {name!r} must be {expected}{was}, got {str(value).lower()}: booleans are not "
        "taken for numbers or categories (docs/serving.md)"
    )


def non_finite_error(i: int, name: str, value) -> CauceError:
    return CauceError(f"instance {i} field {name!r} must be a finite number, got {value!r}")


def _bigquery_name(arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type):
        return "INT64"
    if pa.types.is_floating(arrow_type):
        return "FLOAT64"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "STRING"
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    return str(arrow_type)


def _strings(values: list, name: str) -> list:
    """Request values for a categorical column: strings, or numbers spelled the way
    Arrow casts them to strings in training (1.0 -> "1")."""
    if all(type(v) is str or v is None for v in values):
        return values
    return [value if value is None or isinstance(value, str) else _string_value(value, i, name) for i, value in enumerate(values)]


def _string_value(value, i: int, name: str) -> str:
    if type(value) is int and -(1 << 63) <= value < 1 << 63:  # Arrow casts an int64 to its decimal digits
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pa.array([value]).cast(pa.string())[0].as_py()
    if type(value) is bool:
        raise boolean_error(i, name, value, None, categorical=True)
    raise CauceError(f"instance {i} field {name!r} must be a string, got {value!r}")


def _convert_by_cast(values: list, expected: pa.DataType | None, name: str) -> pa.Array:
    """Values Arrow cannot take as they are (e.g. ISO strings for a timestamp column):
    cast them from strings; failing that, name the first instance that does not fit."""
    if expected is not None:
        try:
            return pc.cast(pa.array(values), expected)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            pass
    for i, value in enumerate(values):
        try:
            pa.array([value], type=expected) if value is None else pc.cast(pa.array([value]), expected or pa.array([value]).type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            raise CauceError(f"instance {i} field {name!r} must be a {expected or 'consistent type'}, got {value!r}") from None
    raise CauceError(f"field {name!r} holds values of mixed types")


# ---- the fused linear scorer ----------------------------------------------------------

LINKS = ("identity", "logistic")
_LINEAR_BLOCK_ROWS = 8192  # rows per vectorized block: the running sums stay in the CPU's cache
_LINEAR_FEW_ROWS = 256  # up to this many rows, one multiply and one np.add.accumulate beat a loop over the features
_F32 = struct.Struct("f")
# Scalar-plan kinds of the fused scorer (small ints: compared with `is`).
_SCALE, _LOOKUP, _INDEX, _BUCKET, _BUCKET_ONE_HOT = range(5)


class _Unusual(Exception):
    """A value the scalar scorer leaves to the full path (which raises the error naming it)."""


def logistic(score: float) -> float:
    """1 / (1 + e^-score), the logistic regression's link (scipy's ``expit``), without
    overflowing ``math.exp`` for large negative scores."""
    if score >= 0.0:
        return 1.0 / (1.0 + math.exp(-score))
    e = math.exp(score)
    return e / (1.0 + e)


def _number(value) -> float:
    """A numeric field's value other than a float, as the full path takes it: null is
    missing (NaN), an int or a string spelling a finite number its float; anything else
    (a boolean, a non-finite string, another type) is left to the full path."""
    if value is None:
        return math.nan
    if type(value) is bool:
        raise _Unusual
    value = float(value)
    if value - value != 0.0:
        raise _Unusual
    return value


class LinearScorer:
    """A linear model folded into the fitted transform:
    ``link(intercept + sum_j coefficient_j * feature_j)`` with the features the transform
    encodes (float32, as the model was trained on them), summed in float64 in feature
    order, and ``link`` the identity (linear / ridge regression) or the logistic function
    (binary logistic regression).

    Two ways to the same numbers, bit for bit:

    * :meth:`score_instances`, serving's: per request instance in plain Python from the
      transform's scalar plan, one dict lookup per categorical field (the coefficient of
      the value's one-hot feature) and one multiply-add per numeric field; the features
      that are zero are not added (adding a zero to the running sum leaves it as it
      was; the final ``+ 0.0`` turns the one difference that can make, the sign of an
      exactly zero total, into ``+0.0`` on both ways).
    * :meth:`score_features`, batch prediction's and evaluation's: on an encoded matrix,
      every product ``coefficient_j * feature_j`` in float64 and then the running sum
      from the intercept along the features (``np.add.accumulate``: sequential, one
      rounding per addition, no pairwise sums, dot products or fused multiply-adds), so
      each row is summed exactly as the scalar way sums it. The link is the same Python
      function on both ways (``math.exp``, not numpy's, whose vectorized exp may round
      differently).

    :meth:`score_instances` takes only what it can score as the full path would (JSON
    numbers and number strings for numeric fields, strings, null and numbers for
    categorical ones); anything else (a missing field, a boolean, a non-finite value or
    feature, a non-object instance) returns None, and the caller goes through the
    transform and :meth:`score_features`, which gives the same numbers or raises the
    error the input rules (docs/serving.md) name.
    """

    def __init__(self, transform: FittedTransform, coefficients, intercept: float, link: str):
        coefficients = [float(c) for c in coefficients]
        if len(coefficients) != transform.width:
            raise CauceError(f"linear model has {len(coefficients)} coefficients; the transform encodes {transform.width} features")
        if link not in LINKS:
            raise CauceError(f"linear model link {link!r} is not one of {list(LINKS)}")
        if not all(map(math.isfinite, coefficients + [float(intercept)])):
            raise CauceError("linear model coefficients must be finite numbers")
        self.coefficients = np.array(coefficients, dtype=np.float64)
        self.intercept = float(intercept)
        self.link = link
        self._link = logistic if link == "logistic" else None
        self._plan = self._compile(transform, coefficients) if transform._direct else None
        self._score = self._generate() if self._plan is not None else None

    def _compile(self, transform: FittedTransform, c: list[float]) -> list[tuple]:
        """Per field (kind, name, constants..., the term when the value is missing);
        ``self._fills``: the fill value of each scaled field."""
        f32 = lambda x: _F32.unpack(_F32.pack(x))[0]  # noqa: E731 - what the float32 feature holds
        plan, fills = [], {}
        self._fills = fills
        for kind, name, offset, constants in transform._scalar_plan:
            if kind == "one_hot":
                table = {value: c[offset + position] for value, position in constants.items()}
                plan.append((_LOOKUP, name, table, c[offset + len(constants)], None, None))
            elif kind == "index":
                plan.append((_INDEX, name, constants, len(constants), c[offset], None))
            elif kind == "scale":
                center, scale, fill = constants
                fills[len(plan)] = fill
                plan.append((_SCALE, name, center, scale, c[offset], c[offset] * f32(fill)))
            elif kind == "bucket":
                plan.append((_BUCKET, name, constants, None, c[offset], c[offset] * -1.0))
            else:  # bucket_one_hot
                terms = c[offset : offset + len(constants) + 2]
                plan.append((_BUCKET_ONE_HOT, name, constants, None, terms, terms[len(constants) + 1]))
        return plan

    def score_instances(self, instances: list) -> list[float] | None:
        """Each instance's output, or None when one needs the full path (see the class)."""
        if self._score is None:
            return None
        try:
            return list(map(self._score, instances))
        except Exception:  # noqa: BLE001 - _Unusual, or a value the full path reports
            return None

    def _generate(self):
        """``instance -> output``: the plan unrolled into one Python function (no loop,
        no per-field dispatch or tuple unpacking), in three runs of statements: each
        field's value into its term (a categorical's coefficient, a number's scaled
        value), every scaled value rounded to float32 at once (one ``struct`` pack and
        unpack, OverflowError past float32's range: left to the full path), then one
        expression adding the terms left to right in feature order. Only indices go
        into its source; the field names and constants are the function's globals."""
        scales = [k for k, entry in enumerate(self._plan) if entry[0] is _SCALE]
        rounding = struct.Struct(f"{len(scales)}f")
        names: dict = {
            "_Unusual": _Unusual, "_number": _number, "_string_value": _string_value, "_bisect": bisect.bisect_right,
            "_pack": rounding.pack, "_unpack": rounding.unpack, "_link": self._link, "_intercept": self.intercept,
        }  # fmt: skip
        lines, terms = ["def score(instance):"], ["_intercept"]
        for k, (kind, name, a, b, coefficient, missing_term) in enumerate(self._plan):
            names.update({f"n{k}": name, f"a{k}": a, f"b{k}": b, f"c{k}": coefficient, f"m{k}": missing_term})
            lines.append(f"    v = instance[n{k}]")
            if kind is _LOOKUP or kind is _INDEX:
                lines.append(f"    if v is not None and type(v) is not str: v = _string_value(v, 0, n{k})")
                lines.append(f"    t{k} = a{k}.get(v, b{k})")
                terms.append(f"t{k}" if kind is _LOOKUP else f"c{k} * t{k}")
                continue
            lines.append("    if type(v) is not float: v = _number(v)")  # null: NaN, the missing value
            lines.append("    elif v != v: raise _Unusual")  # a float NaN (no JSON has one): the full path decides
            if kind is _SCALE:  # missing (NaN): the fill value, which rounds and multiplies to the missing term
                names[f"m{k}"] = self._fills[k]
                lines.append(f"    t{k} = m{k} if v != v else (v - a{k}) / b{k}")
                terms.append(f"c{k} * t{k}")
            elif kind is _BUCKET:
                lines.append(f"    t{k} = m{k} if v != v else c{k} * _bisect(a{k}, v)")
                terms.append(f"t{k}")
            else:
                lines.append(f"    t{k} = m{k} if v != v else c{k}[_bisect(a{k}, v)]")
                terms.append(f"t{k}")
        if scales:
            rounded = ", ".join(f"t{k}" for k in scales)
            lines.append(f"    {rounded}, = _unpack(_pack({rounded}))")
        lines += [
            f"    total = {' + '.join(terms)}",
            "    if total - total != 0.0: raise _Unusual",  # an infinite feature or sum: the full path names it
            "    total += 0.0",  # -0.0 -> +0.0, as score_features
            "    return total" if self._link is None else "    return _link(total)",
        ]
        exec(compile("\n".join(lines), f"<linear scorer of {len(self._plan)} fields>", "exec"), names)  # noqa: S102
        return names["score"]

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """The outputs for an encoded ``(rows, width)`` matrix, float64 ``(rows,)``."""
        features = np.asarray(features)
        rows = features.shape[0]
        if rows <= _LINEAR_FEW_ROWS:  # all the products at once, then the running sum along each row
            terms = np.empty((rows, features.shape[1] + 1), dtype=np.float64)
            terms[:, 0] = self.intercept
            np.multiply(features, self.coefficients, out=terms[:, 1:], dtype=np.float64)
            return self._linked(np.add.accumulate(terms, axis=1)[:, -1])
        totals = np.empty(rows, dtype=np.float64)
        for start in range(0, rows, _LINEAR_BLOCK_ROWS):
            block = np.ascontiguousarray(features[start : start + _LINEAR_BLOCK_ROWS].T)
            totals[start : start + block.shape[1]] = self._totals(block)
        return self._linked(totals)

    def score_columns(self, columns: np.ndarray) -> np.ndarray:
        """The same outputs for the feature-major ``(width, rows)`` matrix that
        :meth:`FittedTransform.transform_columns` encodes (batch prediction's)."""
        return self._linked(self._totals(np.asarray(columns)))

    def _totals(self, columns: np.ndarray) -> np.ndarray:
        """Per row, the intercept plus each feature's product, added feature after
        feature: a running float64 sum per row, as the scalar way adds them."""
        rows = columns.shape[1]
        totals = np.full(rows, self.intercept, dtype=np.float64)
        product = np.empty(min(rows, _LINEAR_BLOCK_ROWS), dtype=np.float64)
        for start in range(0, rows, _LINEAR_BLOCK_ROWS):
            stop = min(start + _LINEAR_BLOCK_ROWS, rows)
            total, term = totals[start:stop], product[: stop - start]
            for j, coefficient in enumerate(self.coefficients.tolist()):
                np.multiply(columns[j, start:stop], coefficient, out=term, dtype=np.float64)
                total += term
        return totals

    def _linked(self, totals: np.ndarray) -> np.ndarray:
        totals += 0.0  # -0.0 -> +0.0, as the scalar way
        if self._link is None:
            return totals
        link = self._link
        return np.array([link(total) if total - total == 0.0 else math.nan for total in totals.tolist()], dtype=np.float64)


class PhaseAccumulator:
    """The mergeable accumulator of one analyze pass: for each fitted step of
    ``phase``, its statistics over the batches seen. Beam's CombineFn wraps it."""

    def __init__(self, recipe: Recipe, states: dict, phase: int):
        self.recipe, self.states, self.phase = recipe, states, phase
        self.steps = [s for s in recipe.steps if s.fitted and s.phase == phase]
        self.accumulators = {s.index: s.accumulator() for s in self.steps}
        self.rows = 0

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> PhaseAccumulator:
        self.rows += batch.num_rows
        columns = {}
        for name in self.recipe.input_columns:
            column = batch.column(name)
            columns[name] = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.recipe.run(columns, self.states, phase=self.phase, accumulators=self.accumulators)
        return self

    def merge(self, other: PhaseAccumulator) -> PhaseAccumulator:
        self.rows += other.rows
        for index, targets in other.accumulators.items():
            for name, target in targets.items():
                self.accumulators[index][name].merge(target)
        return self

    def fit(self) -> dict:
        return {s.index: s.fit(self.accumulators[s.index]) for s in self.steps}


__all__ = ["ANALYZERS", "MISSING", "OOV", "FittedTransform", "LinearScorer", "PhaseAccumulator", "Recipe"]
