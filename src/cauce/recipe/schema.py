"""The recipe format: its JSON Schema (``RECIPE_SCHEMA``, one schema per step type), the
defaults, and the validator that walks that same schema, so the documented schema and
the checks cannot drift apart; errors name the step number, the field and what was expected.
"""

from __future__ import annotations

import math
from typing import Any

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
