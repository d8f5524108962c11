"""Declarative transform recipes: parsing, validation, the step kernels and the
mergeable analyzer accumulators.

A recipe is a list of steps (YAML or JSON, in the spirit of AWS Glue DataBrew
recipes) applied in order to Arrow record batches::

    steps:
      - {type: cast, columns: [trip_seconds], to: float, on_invalid: "null"}
      - {type: fill_missing, columns: [trip_miles], statistic: median}
      - {type: derive, name: speed, expression: "trip_miles / (trip_seconds / 3600)"}
      - {type: zscore, columns: [fare, speed]}
      - {type: vocabulary, columns: [payment_type], top_k: 10}

Row-level steps (drop/rename columns, replace text, cast, map values, fill with
a constant, derive) need nothing but the batch. *Fitted* steps (fill with a
statistic, and the analyzers zscore/min_max/vocabulary/bucketize that emit the
model features) need a full pass over the analyze split: their statistics are
mergeable accumulators (:class:`PhaseAccumulator`) so Beam can compute them as
a CombineGlobally over record batches, and every accumulator gives the same
result whatever the order its batches arrive in (integer counts, sorted value
sets, and ``math.fsum`` over per-batch partial sums).

A fitted step whose input is written by an earlier fitted step (e.g. a median
fill then a z-score of the same column) needs the earlier statistic first: the
steps are grouped into *phases*, one full pass each (:attr:`Recipe.phases`).

``RECIPE_SCHEMA`` is the JSON Schema of the format. The validator below walks
that same dict (``jsonschema`` is not a dependency), so the documented schema
and the checks cannot drift apart; errors name the step number, the field and
what was expected.
"""

from __future__ import annotations

import ast
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

OOV = "<OOV>"
MISSING = "<MISSING>"

# ----------------------------------------------------------------------------- schema
_COLUMN = {"type": "string", "minLength": 1}
_COLUMNS = {"type": "array", "items": _COLUMN, "minItems": 1}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_SUFFIX = {"type": "string", "description": "appended to the output feature names (e.g. '_bucket')"}
CAST_TYPES = ("int", "float", "string", "bool", "timestamp")
STATISTICS = ("mean", "median", "mode")

STEP_SCHEMAS: dict[str, dict] = {
    "drop_columns": {
        "description": "remove columns",
        "properties": {"columns": _COLUMNS},
        "required": ["columns"],
    },
    "rename_columns": {
        "description": "rename columns: {old: new}",
        "properties": {"mapping": {"type": "object", "additionalProperties": _COLUMN, "minProperties": 1}},
        "required": ["mapping"],
    },
    "replace_text": {
        "description": "replace a literal substring, or a regular expression (RE2 syntax) when regex is true",
        "properties": {
            "columns": _COLUMNS,
            "pattern": {"type": "string", "minLength": 1},
            "replacement": {"type": "string"},
            "regex": {"type": "boolean"},
        },
        "required": ["columns", "pattern", "replacement"],
    },
    "cast": {
        "description": "change column types; invalid values become null or fail the step",
        "properties": {
            "columns": _COLUMNS,
            "to": {"enum": list(CAST_TYPES)},
            "on_invalid": {"enum": ["null", "error"]},
            "format": {"type": "string", "description": "strptime format for strings -> timestamp"},
        },
        "required": ["columns", "to"],
    },
    "map_values": {
        "description": "categorical mapping value -> value; unmapped values take `default` (kept as they are without it)",
        "properties": {"column": _COLUMN, "mapping": {"type": "object", "additionalProperties": _SCALAR, "minProperties": 1}, "default": _SCALAR},
        "required": ["column", "mapping"],
    },
    "fill_missing": {
        "description": "replace missing values (null, NaN) with a constant `value` or a fitted `statistic`",
        "properties": {"columns": _COLUMNS, "value": _SCALAR, "statistic": {"enum": list(STATISTICS)}},
        "required": ["columns"],
        "oneOf": [{"required": ["value"]}, {"required": ["statistic"]}],
    },
    "derive": {
        "description": "a new (or replaced) column from an expression over columns",
        "properties": {"name": _COLUMN, "expression": {"type": "string", "minLength": 1, "maxLength": 2000}},
        "required": ["name", "expression"],
    },
    "zscore": {
        "description": "analyzer: (x - mean) / std; missing -> 0 (the mean)",
        "properties": {"columns": _COLUMNS, "suffix": _SUFFIX},
        "required": ["columns"],
    },
    "min_max": {
        "description": "analyzer: (x - min) / (max - min); missing -> the scaled mean",
        "properties": {"columns": _COLUMNS, "suffix": _SUFFIX},
        "required": ["columns"],
    },
    "vocabulary": {
        "description": "analyzer: top_k most frequent values (at least min_frequency times) + an OOV bucket that also takes missing",
        "properties": {
            "columns": _COLUMNS,
            "top_k": {"type": "integer", "minimum": 1},
            "min_frequency": {"type": "integer", "minimum": 1},
            "encoding": {"enum": ["one_hot", "index"]},
            "suffix": _SUFFIX,
        },
        "required": ["columns"],
    },
    "bucketize": {
        "description": "analyzer: bucket number from `buckets` quantiles of the analyze split (missing: its own bucket)",
        "properties": {
            "columns": _COLUMNS,
            "buckets": {"type": "integer", "minimum": 2, "maximum": 1000},
            "method": {"enum": ["approximate", "exact"]},
            "encoding": {"enum": ["one_hot", "index"]},
            "suffix": _SUFFIX,
        },
        "required": ["columns", "buckets"],
    },
}
DEFAULTS = {
    "replace_text": {"regex": False},
    "cast": {"on_invalid": "error"},
    "vocabulary": {"top_k": 100, "min_frequency": 1, "encoding": "one_hot", "suffix": ""},
    "bucketize": {"method": "approximate", "encoding": "index", "suffix": ""},
    "zscore": {"suffix": ""},
    "min_max": {"suffix": ""},
}
ANALYZERS = ("zscore", "min_max", "vocabulary", "bucketize")


def _step_schema(name: str, spec: dict) -> dict:
    schema = {
        "type": "object",
        "description": spec["description"],
        "properties": {"type": {"const": name}, **spec["properties"]},
        "required": ["type", *spec["required"]],
        "additionalProperties": False,
    }
    if "oneOf" in spec:
        schema["oneOf"] = spec["oneOf"]
    return schema


RECIPE_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cauce transform recipe",
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [_step_schema(name, spec) for name, spec in STEP_SCHEMAS.items()]},
        },
    },
    "required": ["steps"],
    "additionalProperties": False,
}

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _check(value: Any, schema: dict, where: str) -> Any:
    """Check ``value`` against the subset of JSON Schema RECIPE_SCHEMA uses; return it
    normalized (KFP hands dict numbers over as floats: integers get their int back)."""
    if "const" in schema and value != schema["const"]:
        raise CauceError(f"{where} must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise CauceError(f"{where} must be one of {schema['enum']}, got {value!r}")
    kinds = schema.get("type")
    if kinds:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_JSON_TYPES[k](value) for k in kinds):
            expected = " or ".join({"array": "a list", "object": "a mapping"}.get(k, k) for k in kinds)
            raise CauceError(f"{where} must be {expected}, got {value!r} ({type(value).__name__})")
        if "integer" in kinds and isinstance(value, float):
            value = int(value)
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise CauceError(f"{where} must not be empty")
        if len(value) > schema.get("maxLength", math.inf):
            raise CauceError(f"{where} is longer than {schema['maxLength']} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            bounds = f"at least {schema['minimum']}" if "minimum" in schema else ""
            if "maximum" in schema:
                bounds += (" and " if bounds else "") + f"at most {schema['maximum']}"
            raise CauceError(f"{where} must be {bounds}, got {value!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise CauceError(f"{where} must list at least {schema['minItems']} item(s)")
        if "items" in schema:
            value = [_check(item, schema["items"], f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        if len(value) < schema.get("minProperties", 0):
            raise CauceError(f"{where} must have at least {schema['minProperties']} entr(y/ies)")
        known = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        out = {}
        for key, item in value.items():
            if key in known:
                out[key] = _check(item, known[key], f"{where} field {key!r}")
            elif extra is False:
                raise CauceError(f"{where} has unknown field {key!r}; allowed fields: {sorted(known)}")
            elif isinstance(extra, dict):
                out[key] = _check(item, extra, f"{where} key {key!r}")
            else:
                out[key] = item
        missing = [key for key in schema.get("required", []) if key not in value]
        if missing:
            raise CauceError(f"{where} is missing required field(s) {missing}")
        if "oneOf" in schema:
            matched = [alt["required"] for alt in schema["oneOf"] if all(k in value for k in alt["required"])]
            if len(matched) != 1:
                options = " or ".join(repr(alt["required"][0]) for alt in schema["oneOf"])
                raise CauceError(f"{where} needs exactly one of {options}")
        value = out
    return value


# ----------------------------------------------------------------------------- expressions
_ARITHMETIC = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide", ast.Pow: "power"}
_COMPARE = {ast.Lt: "less", ast.LtE: "less_equal", ast.Gt: "greater", ast.GtE: "greater_equal", ast.Eq: "equal", ast.NotEq: "not_equal"}
_FUNCTIONS = {
    # name: (min args, max args)
    "log": (1, 1), "log1p": (1, 1), "exp": (1, 1), "sqrt": (1, 1), "abs": (1, 1), "floor": (1, 1), "ceil": (1, 1),
    "round": (1, 2), "min": (2, 16), "max": (2, 16), "clip": (3, 3), "where": (3, 3), "if_else": (3, 3),
    "is_null": (1, 1), "coalesce": (2, 16), "concat": (1, 16), "lower": (1, 1), "upper": (1, 1), "strip": (1, 1),
    "length": (1, 1), "hour": (1, 1), "day_of_week": (1, 1), "month": (1, 1), "year": (1, 1), "col": (1, 1),
}
FUNCTIONS = tuple(sorted(_FUNCTIONS))


def _is_number(value) -> bool:
    t = value.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _as_float(value):
    return value if pa.types.is_float64(value.type) else pc.cast(value, pa.float64())


def _as_string(value):
    return value if pa.types.is_string(value.type) else pc.cast(value, pa.string())


class Expression:
    """A parsed expression: ``ast`` nodes from a whitelist, evaluated with pyarrow.compute.

    Column names are bare identifiers (``fare``) or ``col("any name")``; numbers
    are computed in float64 (``/`` is true division, a division by zero gives
    inf); nulls propagate; ``a if cond else b`` and ``where(cond, a, b)`` pick per row.
    """

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as error:
            raise ValueError(f"is not a valid expression ({error.msg} at column {error.offset})") from None
        self.columns: list[str] = []
        self._check(self.tree)

    def _check(self, node) -> None:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) and node.value is not None:
                raise ValueError(f"has an unsupported constant {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id not in self.columns:
                self.columns.append(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _ARITHMETIC and not isinstance(node.op, (ast.Mod, ast.FloorDiv)):
                raise ValueError(f"uses the unsupported operator {type(node.op).__name__}")
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
                raise ValueError(f"uses the unsupported operator {type(node.op).__name__}")
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.Compare):
            if any(type(op) not in _COMPARE for op in node.ops):
                raise ValueError("uses an unsupported comparison (use <, <=, >, >=, ==, !=)")
            for value in [node.left, *node.comparators]:
                self._check(value)
        elif isinstance(node, ast.IfExp):
            for value in (node.test, node.body, node.orelse):
                self._check(value)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in _FUNCTIONS or node.keywords:
                raise ValueError(f"calls {ast.unparse(node.func)!r}; the functions are {list(FUNCTIONS)} (positional arguments)")
            low, high = _FUNCTIONS[name]
            if not low <= len(node.args) <= high:
                raise ValueError(f"calls {name}() with {len(node.args)} argument(s); expected {low}..{high}")
            if name == "col":
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise ValueError('uses col() without a string column name: write col("column name")')
                if arg.value not in self.columns:
                    self.columns.append(arg.value)
                return
            for arg in node.args:
                self._check(arg)
        else:
            raise ValueError(f"uses unsupported syntax {type(node).__name__!r} ({ast.unparse(node)!r})")

    def evaluate(self, columns: dict[str, pa.Array]) -> pa.Array:
        result = self._eval(self.tree, columns)
        if isinstance(result, pa.Scalar):
            raise CauceError(f"expression {self.text!r} does not depend on any column")
        return result

    def _eval(self, node, columns):
        if isinstance(node, ast.Constant):
            return pa.scalar(node.value)
        if isinstance(node, ast.Name):
            return columns[node.id]
        if isinstance(node, ast.BinOp):
            left, right = self._numbers(node, self._eval(node.left, columns), self._eval(node.right, columns))
            if isinstance(node.op, (ast.Mod, ast.FloorDiv)):
                quotient = pc.floor(pc.divide(left, right))
                return quotient if isinstance(node.op, ast.FloorDiv) else pc.subtract(left, pc.multiply(quotient, right))
            return pc.call_function(_ARITHMETIC[type(node.op)], [left, right])
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, columns)
            if isinstance(node.op, ast.Not):
                return pc.invert(self._boolean(node, operand))
            (operand,) = self._numbers(node, operand)
            return pc.negate(operand) if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BoolOp):
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            values = [self._boolean(node, self._eval(v, columns)) for v in node.values]
            result = values[0]
            for value in values[1:]:
                result = combine(result, value)
            return result
        if isinstance(node, ast.Compare):
            result, left = None, self._eval(node.left, columns)
            for op, comparator in zip(node.ops, node.comparators):
                right = self._eval(comparator, columns)
                a, b = (self._numbers(node, left, right) if _is_number(left) and _is_number(right) else (left, right))
                try:
                    value = pc.call_function(_COMPARE[type(op)], [a, b])
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                    raise CauceError(f"expression {self.text!r}: cannot compare {left.type} with {right.type} in {ast.unparse(node)!r}") from None
                result = value if result is None else pc.and_kleene(result, value)
                left = right
            return result
        if isinstance(node, ast.IfExp):
            return self._choose(node, self._eval(node.test, columns), self._eval(node.body, columns), self._eval(node.orelse, columns))
        return self._call(node, node.func.id, columns)

    def _call(self, node, name, columns):
        if name == "col":
            return columns[node.args[0].value]
        args = [self._eval(arg, columns) for arg in node.args]
        if name in ("where", "if_else"):
            return self._choose(node, *args)
        if name in ("log", "log1p", "exp", "sqrt", "abs", "floor", "ceil"):
            (x,) = self._numbers(node, *args)
            return pc.call_function({"log": "ln"}.get(name, name), [x])
        if name == "round":
            (x,) = self._numbers(node, args[0])
            digits = int(args[1].as_py()) if len(args) > 1 else 0
            return pc.round(x, ndigits=digits, round_mode="half_to_even")
        if name in ("min", "max"):
            fn = pc.min_element_wise if name == "min" else pc.max_element_wise
            return fn(*self._numbers(node, *args), skip_nulls=False)
        if name == "clip":
            x, low, high = self._numbers(node, *args)
            return pc.min_element_wise(pc.max_element_wise(x, low, skip_nulls=False), high, skip_nulls=False)
        if name == "is_null":
            return pc.is_null(args[0], nan_is_null=True) if isinstance(args[0], pa.Array) else pa.scalar(args[0].as_py() is None)
        if name == "coalesce":
            if all(_is_number(a) for a in args):
                args = self._numbers(node, *args)
            return pc.coalesce(*args)
        if name == "concat":
            return pc.binary_join_element_wise(*[_as_string(a) for a in args], "")
        if name in ("lower", "upper", "strip", "length"):
            text = _as_string(args[0])
            kernel = {"lower": "utf8_lower", "upper": "utf8_upper", "strip": "utf8_trim_whitespace", "length": "utf8_length"}[name]
            result = pc.call_function(kernel, [text])
            return _as_float(result) if name == "length" else result
        # hour / day_of_week / month / year of a timestamp column
        value = args[0]
        if not pa.types.is_timestamp(value.type) and not pa.types.is_date(value.type):
            raise CauceError(f"expression {self.text!r}: {name}() needs a timestamp (cast the column first), got {value.type}")
        return _as_float(pc.call_function(name, [value]))

    def _numbers(self, node, *values):
        out = []
        for value in values:
            if not _is_number(value):
                raise CauceError(
                    f"expression {self.text!r}: {ast.unparse(node)!r} needs numbers, got {value.type} "
                    "(cast the column first; join strings with concat())"
                )
            out.append(_as_float(value))
        return out

    def _boolean(self, node, value):
        if pa.types.is_boolean(value.type):
            return value
        if pa.types.is_null(value.type):
            return pc.cast(value, pa.bool_())
        raise CauceError(f"expression {self.text!r}: {ast.unparse(node)!r} needs a boolean, got {value.type}")

    def _choose(self, node, test, yes, no):
        test = self._boolean(node, test)
        if _is_number(yes) and _is_number(no):
            yes, no = self._numbers(node, yes, no)
        elif pa.types.is_null(yes.type):
            yes = pa.scalar(None, no.type)
        elif pa.types.is_null(no.type):
            no = pa.scalar(None, yes.type)
        try:
            return pc.if_else(test, yes, no)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            raise CauceError(f"expression {self.text!r}: both branches of {ast.unparse(node)!r} must have one type, got {yes.type} and {no.type}") from None


# ----------------------------------------------------------------------------- numeric helpers
_NUMERIC_CHECKS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean, pa.types.is_null)


def numeric_values(column, name: str) -> np.ndarray:
    """``column`` as float64 with NaN for missing, or raise naming the bad value."""
    if any(check(column.type) for check in _NUMERIC_CHECKS):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except pa.ArrowInvalid:
            bad = next((v for v in column.to_pylist() if v is not None and not _parses_as_float(v)), None)
            raise CauceError(
                f"numeric feature {name!r} holds a non-numeric value {bad!r}; expected numbers "
                f"(cast it in the query, e.g. SAFE_CAST({name} AS FLOAT64), or with a recipe cast step)"
            ) from None
    raise CauceError(f"numeric feature {name!r} has type {column.type}; expected a numeric type")


def _parses_as_float(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _missing_mask(column) -> pa.Array:
    if pa.types.is_floating(column.type):
        return pc.is_null(column, nan_is_null=True)
    return pc.is_null(column)


# ----------------------------------------------------------------------------- accumulators
@dataclass
class Moments:
    """count / sum / sum of squares / min / max. Sums are kept per batch and added
    with ``math.fsum`` (exactly rounded): the result does not depend on the order."""

    count: int = 0
    sums: list = field(default_factory=list)
    squares: list = field(default_factory=list)
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if x.size:
            self.count += int(x.size)
            self.sums.append(float(x.sum()))
            # Not np.dot: BLAS splits a long dot product over its threads, so the sum
            # would depend on the machine's thread count, and waking those threads
            # took ~7 ms per call on a busy 2-core machine (numpy's sum is pairwise, single-threaded).
            self.squares.append(float(np.sum(x * x)))
            self.minimum = min(self.minimum, float(x.min()))
            self.maximum = max(self.maximum, float(x.max()))

    def merge(self, other: Moments) -> None:
        self.count += other.count
        self.sums += other.sums
        self.squares += other.squares
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def result(self, name: str) -> dict:
        if self.count == 0:
            raise CauceError(f"numeric feature {name!r} has no values in the training data (all missing)")
        mean = math.fsum(self.sums) / self.count
        variance = max(math.fsum(self.squares) / self.count - mean * mean, 0.0)
        std = math.sqrt(variance) or 1.0  # a constant feature encodes to 0, not NaN
        return {"mean": mean, "std": std, "min": self.minimum, "max": self.maximum, "count": self.count}


@dataclass
class ValueCounts:
    """Exact counts per value (as strings for vocabularies, as-is for a mode)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, column) -> None:
        if pa.types.is_dictionary(column.type):  # count the codes; strings only per distinct value
            codes = column.indices.filter(column.is_valid()) if column.null_count else column.indices
            counts = np.bincount(codes.to_numpy(), minlength=len(column.dictionary))
            for value, count in zip(column.dictionary.to_pylist(), counts.tolist()):
                if count and value is not None:
                    self.counts[value] += count
            return
        for item in pc.value_counts(column).to_pylist():
            value = item["values"]
            if value is not None and value == value:  # NaN is missing, not a value
                self.counts[value] += item["counts"]

    def merge(self, other: ValueCounts) -> None:
        self.counts.update(other.counts)

    def ranked(self, min_frequency: int = 1) -> list:
        """By count, then value: the order never depends on batch order."""
        items = [kv for kv in self.counts.items() if kv[1] >= min_frequency]
        return [value for value, _ in sorted(items, key=lambda kv: (-kv[1], _sort_key(kv[0])))]


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


_SKETCH_BITS = 12  # mantissa bits of a bucket key: a bucket spans at most 2**-11 (0.05 %) relative


@dataclass
class QuantileSketch:
    """Mergeable quantiles. ``exact`` keeps every value. Otherwise values are grouped
    by their value rounded to 12 mantissa bits (a relative-error sketch in the
    manner of DDSketch), keeping per group the count and the smallest actual
    value: bounded size, quantiles within 0.05 % (relative) and always a value that occurs
    in the data. Counts add and minimums take the minimum, so merging in any order
    gives the same sketch."""

    exact: bool = False
    parts: list = field(default_factory=list)  # exact: sorted arrays; approximate: (keys, counts, minimums)
    count: int = 0

    def add(self, x: np.ndarray) -> None:
        x = np.sort(x[~np.isnan(x)])
        if not x.size:
            return
        self.count += int(x.size)
        if self.exact:
            self.parts.append(x)
            return
        mantissa, exponent = np.frexp(x)
        keys = np.ldexp(np.round(mantissa * (1 << _SKETCH_BITS)) / (1 << _SKETCH_BITS), exponent)
        keys, first, counts = np.unique(keys, return_index=True, return_counts=True)  # x sorted: first = smallest
        self.parts.append((keys, counts, x[first]))
        if len(self.parts) > 8:  # keep the accumulator compact between merges
            self.parts = [self._compacted()]

    def _compacted(self):
        keys = np.concatenate([p[0] for p in self.parts])
        counts = np.concatenate([p[1] for p in self.parts])
        minimums = np.concatenate([p[2] for p in self.parts])
        order = np.lexsort((minimums, keys))
        keys, counts, minimums = keys[order], counts[order], minimums[order]
        unique, first = np.unique(keys, return_index=True)
        return unique, np.add.reduceat(counts, first), minimums[first]

    def merge(self, other: QuantileSketch) -> None:
        self.count += other.count
        self.parts += other.parts
        if not self.exact and len(self.parts) > 8:
            self.parts = [self._compacted()]

    def quantiles(self, fractions: list[float]) -> list[float]:
        """The smallest value whose cumulative share reaches each fraction (inverted CDF)."""
        if self.count == 0:
            return []
        if self.exact:
            values = np.sort(np.concatenate(self.parts))
            counts = np.ones(len(values), dtype=np.int64)
        else:
            _, counts, values = self._compacted()
        cumulative = np.cumsum(counts)
        targets = np.ceil(np.asarray(fractions) * self.count - 1e-9).clip(1, self.count)
        return [float(values[i]) for i in np.searchsorted(cumulative, targets, side="left")]


# ----------------------------------------------------------------------------- steps
@dataclass
class Step:
    index: int  # 1-based, as users count steps in their recipe
    type: str
    spec: dict
    phase: int = 0  # for fitted steps: the full pass that computes its statistics
    expression: Expression | None = None

    @property
    def where(self) -> str:
        return f"recipe step {self.index} ({self.type})"

    @property
    def columns(self) -> list[str]:
        if "columns" in self.spec:
            return self.spec["columns"]
        if "column" in self.spec:
            return [self.spec["column"]]
        if self.type == "rename_columns":
            return list(self.spec["mapping"])
        return self.expression.columns if self.expression else []

    @property
    def fitted(self) -> bool:
        return self.type in ANALYZERS or (self.type == "fill_missing" and "statistic" in self.spec)

    @property
    def analyzer(self) -> bool:
        return self.type in ANALYZERS

    def output_names(self, state: dict) -> list[str]:
        """The model feature names this analyzer emits, given its fitted state."""
        names = []
        suffix = self.spec.get("suffix", "")
        for column in self.spec["columns"]:
            base = column + suffix
            one_hot = self.spec.get("encoding") == "one_hot"
            if self.type == "vocabulary" and one_hot:
                names += [f"{base}={value}" for value in state[column]["vocabulary"]] + [f"{base}={OOV}"]
            elif self.type == "bucketize" and one_hot:
                buckets = len(state[column]["boundaries"]) + 1
                names += [f"{base}=bucket{i}" for i in range(buckets)] + [f"{base}={MISSING}"]
            else:
                names.append(base)
        return names

    def static_names(self) -> list[str] | None:
        """Feature names known before fitting (None when they depend on the data)."""
        if self.spec.get("encoding") == "one_hot":
            return None
        return [column + self.spec.get("suffix", "") for column in self.spec["columns"]]

    # ---- the full pass
    def accumulator(self) -> dict:
        if self.type in ("zscore", "min_max") or self.spec.get("statistic") == "mean":
            return {c: Moments() for c in self.spec["columns"]}
        if self.type == "bucketize":
            return {c: QuantileSketch(exact=self.spec["method"] == "exact") for c in self.spec["columns"]}
        if self.spec.get("statistic") == "median":
            return {c: QuantileSketch() for c in self.spec["columns"]}
        return {c: ValueCounts() for c in self.spec["columns"]}  # vocabulary, mode

    def accumulate(self, accumulator: dict, columns: dict) -> None:
        for name, target in accumulator.items():
            column = columns[name]
            if isinstance(target, ValueCounts):
                vocabulary = self.type == "vocabulary" and not pa.types.is_dictionary(column.type)
                target.add(_as_string(column) if vocabulary else column)
            else:
                target.add(numeric_values(column, name))

    def fit(self, accumulator: dict) -> dict:
        state = {}
        for name, target in accumulator.items():
            if self.type in ("zscore", "min_max"):
                state[name] = target.result(name)
            elif self.type == "vocabulary":
                state[name] = {"vocabulary": target.ranked(self.spec["min_frequency"])[: self.spec["top_k"]]}
            elif self.type == "bucketize":
                if target.count == 0:
                    raise CauceError(f"{self.where}: column {name!r} has no values in the analyze split (all missing)")
                n = self.spec["buckets"]
                edges = target.quantiles([i / n for i in range(1, n)])
                state[name] = {"boundaries": sorted(set(edges))}
            else:
                statistic = self.spec["statistic"]
                if statistic == "mean":
                    value = target.result(name)["mean"]
                elif statistic == "median":
                    value = (target.quantiles([0.5]) or [None])[0]
                else:
                    ranked = target.ranked()
                    value = ranked[0] if ranked else None
                if value is None:
                    raise CauceError(f"{self.where}: column {name!r} has no values to take the {statistic} of (all missing)")
                state[name] = {"value": value}
        return state


def _first_invalid(original, converted) -> tuple[int, Any]:
    bad = pc.and_(pc.is_valid(original), pc.is_null(converted))
    row = pc.index(bad, True).as_py()
    return row, original[row].as_py()


_FLOAT_TEXT = r"^\s*[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|(?i:inf|infinity|nan))\s*$"
_INT_TEXT = r"^\s*[+-]?\d+\s*$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]


def cast_column(column, to: str, fmt: str | None, strict: bool, name: str, where: str):
    """Vectorized cast. Invalid values become null; with ``strict`` the first one raises."""
    source = column.type
    string = pa.types.is_string(source) or pa.types.is_large_string(source)
    if to == "string":
        return _as_string(column)
    if to in ("float", "int") and string:
        valid = pc.match_substring_regex(column, _INT_TEXT if to == "int" else _FLOAT_TEXT)
        trimmed = pc.utf8_trim_whitespace(pc.if_else(valid, column, pa.scalar(None, column.type)))
        result = pc.cast(trimmed, pa.int64() if to == "int" else pa.float64())
    elif to == "int" and pa.types.is_floating(source):
        whole = pc.and_(pc.is_finite(column), pc.equal(pc.floor(column), column))
        result = pc.cast(pc.if_else(whole, column, pa.scalar(None, source)), pa.int64())
    elif to in ("float", "int"):
        if not _is_number(column) and not pa.types.is_timestamp(source):
            raise CauceError(f"{where}: cannot cast column {name!r} of type {source} to {to}")
        if pa.types.is_timestamp(source):
            column = pc.cast(pc.cast(column, pa.timestamp("s", tz=source.tz)), pa.int64())  # epoch seconds
        result = pc.cast(column, pa.int64() if to == "int" else pa.float64())
    elif to == "bool":
        if string:
            lowered = pc.utf8_lower(pc.utf8_trim_whitespace(column))
            yes, no = pc.is_in(lowered, pa.array(_TRUE)), pc.is_in(lowered, pa.array(_FALSE))
            result = pc.if_else(yes, True, pc.if_else(no, pa.scalar(False), pa.scalar(None, pa.bool_())))
        elif _is_number(column):
            result = pc.not_equal(_as_float(column), 0.0)
        else:
            raise CauceError(f"{where}: cannot cast column {name!r} of type {source} to bool")
    else:  # timestamp, kept as microseconds in UTC
        target = pa.timestamp("us", tz="UTC")
        if string:
            parsed = pc.strptime(column, format=fmt or "%Y-%m-%dT%H:%M:%S", unit="us", error_is_null=True)
            result = pc.cast(parsed, target) if parsed.type.tz else pc.assume_timezone(parsed, "UTC")
        elif pa.types.is_timestamp(source):
            result = pc.cast(column, target) if source.tz else pc.assume_timezone(pc.cast(column, pa.timestamp("us")), "UTC")
        elif _is_number(column):  # epoch seconds
            micros = pc.round(pc.multiply(_as_float(column), 1e6))
            result = pc.cast(pc.cast(micros, pa.int64()), target)
        else:
            raise CauceError(f"{where}: cannot cast column {name!r} of type {source} to timestamp")
    if strict and result.null_count > column.null_count:
        row, value = _first_invalid(column, result)
        expected = f"format {fmt!r}" if fmt and to == "timestamp" else f"a valid {to}"
        raise CauceError(f"{where}: column {name!r} row {row} holds {value!r}, which is not {expected} (on_invalid: error)")
    return result


def _scalar_array(values: list):
    """The Arrow array of mapping values; numbers become float64 so 1 and 1.5 mix."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array(values)


class Recipe:
    """A validated recipe: its steps, their phases, and the raw columns it reads."""

    def __init__(self, document: dict, label: str = ""):
        document = _check(document, RECIPE_SCHEMA, "recipe")
        self.document = document
        self.steps: list[Step] = []
        normalized: list[dict] = []
        for i, raw in enumerate(document["steps"], start=1):
            if not isinstance(raw, dict):
                raise CauceError(f"recipe step {i} must be a mapping with a 'type', got {raw!r}")
            raw = dict(raw)
            if raw.get("on_invalid", "") is None:  # YAML reads `on_invalid: null` as None
                raw["on_invalid"] = "null"
            kind = raw.get("type")
            if kind not in STEP_SCHEMAS:
                raise CauceError(f"recipe step {i}: unknown step type {kind!r}; expected one of {sorted(STEP_SCHEMAS)}")
            where = f"recipe step {i} ({kind})"
            spec = _check(raw, _step_schema(kind, STEP_SCHEMAS[kind]), where)
            normalized.append(spec)
            spec = {**DEFAULTS.get(kind, {}), **spec}
            step = Step(i, kind, spec)
            if kind == "derive":
                try:
                    step.expression = Expression(spec["expression"])
                except ValueError as error:
                    raise CauceError(f"{where} field 'expression': {spec['expression']!r} {error}") from None
            if kind == "replace_text" and spec["regex"]:
                try:
                    pc.replace_substring_regex(pa.array([""]), spec["pattern"], spec["replacement"])
                except pa.ArrowInvalid as error:
                    raise CauceError(f"{where} field 'pattern': {spec['pattern']!r} is not a valid RE2 regular expression ({error})") from None
            if kind == "map_values" and "default" not in spec:
                if not all(isinstance(v, str) or v is None for v in spec["mapping"].values()):
                    raise CauceError(f"{where}: without a 'default', unmapped values are kept, so the mapping values must be strings")
            self.steps.append(step)
        self.document = {**document, "steps": normalized}
        self.input_columns = self._trace(label)
        if not any(step.analyzer for step in self.steps):
            raise CauceError(f"recipe has no analyzer step: add one of {list(ANALYZERS)} to emit model features")
        names = [n for step in self.steps if step.analyzer for n in (step.static_names() or [])]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise CauceError(f"recipe emits feature name(s) {duplicated} more than once: give one of the steps a 'suffix'")
        self.phases = 1 + max((s.phase for s in self.steps if s.fitted), default=0)

    # ---- constructors
    @classmethod
    def parse(cls, source: dict | str | os.PathLike, label: str = "") -> Recipe:
        """A recipe from a dict, a YAML/JSON string, or the path of a YAML/JSON file."""
        if isinstance(source, Recipe):
            return source
        if isinstance(source, (str, os.PathLike)) and not isinstance(source, dict):
            text = str(source)
            if isinstance(source, os.PathLike) or ("\n" not in text and text.endswith((".yaml", ".yml", ".json"))):
                path = Path(source)
                if not path.exists():
                    raise CauceError(f"recipe file {path} not found")
                text = path.read_text()
            import yaml

            try:
                source = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise CauceError(f"recipe is not valid YAML/JSON: {error}") from None
        if not isinstance(source, dict):
            raise CauceError(f"recipe must be a mapping with a 'steps' list, got {type(source).__name__}")
        return cls(source, label)

    @classmethod
    def shorthand(cls, numeric: list[str], categorical: list[str], top_k: int = 100, label: str = "") -> Recipe:
        """``numeric_features`` + ``categorical_features`` + ``top_k``: z-score these, one-hot those."""
        steps = []
        if numeric:
            steps.append({"type": "zscore", "columns": list(numeric)})
        if categorical:
            steps.append({"type": "vocabulary", "columns": list(categorical), "top_k": int(top_k)})
        if not steps:
            raise CauceError("no features given: pass a recipe, or numeric_features and/or categorical_features")
        return cls({"steps": steps}, label)

    def to_dict(self) -> dict:
        return self.document

    # ---- static column flow
    def _trace(self, label: str) -> list[str]:
        """Follow the columns through the steps: the raw columns the recipe reads, each
        step's phase, and errors for columns used after a drop/rename or reading the label."""
        created: dict[str, int] = {}  # column made by the recipe -> the phase its values are ready in
        removed: dict[str, int] = {}  # column dropped/renamed away -> step that did it
        inputs: list[str] = []

        def read(step: Step, column: str) -> int:
            if column in removed:
                raise CauceError(f"{step.where} reads column {column!r}, removed by recipe step {removed[column]}")
            if label and column == label and column not in created:
                raise CauceError(f"{step.where} reads the label column {label!r}: serving requests do not carry it")
            if column not in created and column not in inputs:
                if step.type != "drop_columns":  # dropping a column does not need it at serving
                    inputs.append(column)
            return created.get(column, 0)

        for step in self.steps:
            ready = max((read(step, c) for c in step.columns), default=0)
            if step.type == "drop_columns":
                for c in step.columns:
                    created.pop(c, None)
                    removed[c] = step.index
            elif step.type == "rename_columns":
                for old, new in step.spec["mapping"].items():
                    level = created.pop(old, 0)
                    removed[old] = step.index
                    removed.pop(new, None)
                    created[new] = level
            elif step.type == "derive":
                removed.pop(step.spec["name"], None)
                created[step.spec["name"]] = ready
            elif step.fitted:
                step.phase = ready
                if step.type == "fill_missing":
                    for c in step.columns:
                        created[c] = ready + 1
            else:  # row steps rewriting their columns in place keep their readiness
                for c in step.columns:
                    created[c] = created.get(c, 0)
        return inputs

    def vocabulary_only_columns(self) -> list[str]:
        """Raw columns that no step but a vocabulary analyzer reads or writes: the Beam
        transform reads these as Arrow dictionary arrays (their Parquet dictionary
        pages), so a vocabulary is counted and looked up once per distinct value
        instead of per row."""
        touched = set()
        for step in self.steps:
            if step.type != "vocabulary":
                touched.update(step.columns)
                touched.update(step.spec.get("mapping", {}).values() if step.type == "rename_columns" else ())
                touched.update([step.spec["name"]] if step.type == "derive" else ())
        vocabulary = [c for s in self.steps if s.type == "vocabulary" for c in s.spec["columns"]]
        return [c for c in self.input_columns if c in vocabulary and c not in touched]

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        """Every column each step reads exists at that step (before any Beam job starts)."""
        available = list(schema.names)
        for step in self.steps:
            missing = [c for c in step.columns if c not in available]
            if missing:
                raise CauceError(
                    f"{step.where}: column(s) {missing} not found in {where} at this step; columns available: {available}"
                )
            if step.type == "drop_columns":
                available = [c for c in available if c not in step.columns]
            elif step.type == "rename_columns":
                mapping = step.spec["mapping"]
                available = [mapping.get(c, c) for c in available if c not in mapping.values() or c in mapping]
            elif step.type == "derive" and step.spec["name"] not in available:
                available.append(step.spec["name"])

    # ---- applying
    def run(self, columns: dict, states: dict, analyzer_out=None, phase: int | None = None, accumulators=None) -> dict:
        """Apply the steps to ``columns`` (name -> Arrow array), in order.

        With ``analyzer_out`` (a callable ``(step, columns)``) each analyzer emits its
        features at its place in the sequence. With ``phase``/``accumulators`` (the
        analyze pass) the fitted steps of that phase accumulate their input instead,
        and the run stops after the last of them.
        """
        last = max((s.index for s in self.steps if s.fitted and s.phase == phase), default=0) if phase is not None else None
        for step in self.steps:
            if last is not None and step.index > last:
                break
            if step.fitted and phase is not None and step.phase >= phase:
                if step.phase == phase:
                    self_acc = accumulators[step.index]
                    step.accumulate(self_acc, columns)
                continue
            if step.analyzer:
                if analyzer_out is not None:
                    analyzer_out(step, columns)
                continue
            self._apply_row_step(step, columns, states.get(step.index))
        return columns

    def _apply_row_step(self, step: Step, columns: dict, state: dict | None) -> None:
        spec, kind = step.spec, step.type
        if kind == "drop_columns":
            for c in spec["columns"]:
                columns.pop(c, None)
        elif kind == "rename_columns":
            moved = {new: columns.pop(old) for old, new in spec["mapping"].items() if old in columns}
            columns.update(moved)
        elif kind == "replace_text":
            for c in spec["columns"]:
                column = columns[c]
                if not pa.types.is_string(column.type):
                    raise CauceError(f"{step.where}: column {c!r} has type {column.type}; replace_text needs strings (cast it first)")
                kernel = pc.replace_substring_regex if spec["regex"] else pc.replace_substring
                columns[c] = kernel(column, spec["pattern"], spec["replacement"])
        elif kind == "cast":
            for c in spec["columns"]:
                columns[c] = cast_column(columns[c], spec["to"], spec.get("format"), spec["on_invalid"] == "error", c, step.where)
        elif kind == "map_values":
            c = spec["column"]
            column = _as_string(columns[c])
            keys = pa.array(list(spec["mapping"]), pa.string())
            values = _scalar_array([*spec["mapping"].values(), spec.get("default")])
            index = pc.index_in(column, value_set=keys)
            if "default" in spec:  # unmapped (but present) values take the default
                index = pc.if_else(pc.and_(pc.is_valid(column), pc.is_null(index)), len(keys), index)
                columns[c] = pc.take(values, index)
            else:
                columns[c] = pc.if_else(pc.is_null(index), column, pc.take(pc.cast(values, pa.string()), index))
        elif kind == "fill_missing":
            for c in spec["columns"]:
                column = columns[c]
                value = state[c]["value"] if state is not None else spec["value"]
                if spec.get("statistic") in ("mean", "median"):
                    column = pa.array(numeric_values(column, c))
                target = column.type if not pa.types.is_null(column.type) else pa.scalar(value).type
                try:
                    fill = pa.scalar(value).cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise CauceError(f"{step.where}: cannot fill column {c!r} of type {column.type} with {value!r}") from None
                columns[c] = pc.if_else(_missing_mask(column), fill, column)
        elif kind == "derive":
            columns[spec["name"]] = step.expression.evaluate(columns)
