"""The recipe format: its JSON Schema (``RECIPE_SCHEMA``, one schema per step type), the
defaults, and its validation by ``jsonschema`` against that same schema, so the documented
schema and the checks cannot drift apart; errors name the step number, the path to the
field and what was expected.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

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

# The document without its steps, which are checked one by one against their own type's
# alternative: jsonschema's answer for a oneOf of eleven alternatives would not say which
# field of which step is wrong.
_DOCUMENT = Draft202012Validator(
    {**RECIPE_SCHEMA, "properties": {**RECIPE_SCHEMA["properties"], "steps": {"type": "array", "minItems": 1}}}
)
_STEPS = {
    alternative["properties"]["type"]["const"]: Draft202012Validator(alternative)
    for alternative in RECIPE_SCHEMA["properties"]["steps"]["items"]["oneOf"]
}
_EXPECTED = {"array": "a list", "object": "a mapping"}


def check_document(document: Any) -> dict:
    """The recipe's top level (a mapping with ``steps``, a list) against ``RECIPE_SCHEMA``."""
    return _checked(_DOCUMENT, document, "recipe")


def check_step(kind: str, step: Any, where: str) -> dict:
    """One step against its type's schema; ``where`` names it in the error (``recipe step 2 (cast)``)."""
    return _checked(_STEPS[kind], step, where)


def _checked(validator: Draft202012Validator, value: Any, where: str) -> Any:
    """``value`` checked by jsonschema (draft 2020-12) and normalized: KFP hands dict numbers
    over as floats, so integers get their int back. Every error is named: where, the path
    to the field and what was expected."""
    messages = [_message(error, where) for error in validator.iter_errors(value)]
    if messages:
        raise CauceError("; ".join(dict.fromkeys(messages)))
    return _normalized(value, validator.schema)


def _normalized(value: Any, schema: dict) -> Any:
    if schema.get("type") == "integer" and isinstance(value, float):
        return int(value)
    if isinstance(value, dict):
        known, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {key: _normalized(item, known.get(key, extra if isinstance(extra, dict) else {})) for key, item in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [_normalized(item, schema["items"]) for item in value]
    return value


def _location(error: ValidationError, where: str) -> str:
    """``where`` and the path to the failing value: ``recipe step 1 (vocabulary) field 'top_k'``,
    ``... field 'mapping' key 'x'``, ``recipe field 'steps'``."""
    keywords = list(error.absolute_schema_path)[:-1]  # the last one is the failing keyword itself
    path = iter(error.absolute_path)
    text = where
    index = 0
    while index < len(keywords):
        keyword = keywords[index]
        if keyword == "properties":
            index += 1  # the property's name follows
            text += f" field {next(path)!r}"
        elif keyword == "additionalProperties":
            text += f" key {next(path)!r}"
        elif keyword == "items":
            text += f"[{next(path)}]"
        index += 1
    return text


def _message(error: ValidationError, where: str) -> str:
    at, value, schema, keyword = _location(error, where), error.instance, error.schema, error.validator
    if keyword == "type":
        kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        expected = " or ".join(_EXPECTED.get(kind, kind) for kind in kinds)
        return f"{at} must be {expected}, got {value!r} ({type(value).__name__})"
    if keyword == "const":
        return f"{at} must be {schema['const']!r}, got {value!r}"
    if keyword == "enum":
        return f"{at} must be one of {schema['enum']}, got {value!r}"
    if keyword in ("minimum", "maximum"):
        bounds = [f"at least {schema['minimum']}"] if "minimum" in schema else []
        bounds += [f"at most {schema['maximum']}"] if "maximum" in schema else []
        return f"{at} must be {' and '.join(bounds)}, got {value!r}"
    if keyword == "minLength":
        return f"{at} must not be empty" if schema["minLength"] == 1 else f"{at} is shorter than {schema['minLength']} characters"
    if keyword == "maxLength":
        return f"{at} is longer than {schema['maxLength']} characters"
    if keyword == "minItems":
        return f"{at} must list at least {schema['minItems']} item(s)"
    if keyword == "minProperties":
        return f"{at} must have at least {schema['minProperties']} entr(y/ies)"
    if keyword == "additionalProperties":
        known = schema.get("properties", {})
        unknown = [key for key in value if key not in known]
        named = f"field {unknown[0]!r}" if len(unknown) == 1 else f"fields {unknown}"
        return f"{at} has unknown {named}; allowed fields: {sorted(known)}"
    if keyword == "required":
        return f"{at} is missing required field(s) {[key for key in schema['required'] if key not in value]}"
    if keyword == "oneOf" and all(set(option) == {"required"} for option in schema["oneOf"]):
        options = " or ".join(repr(option["required"][0]) for option in schema["oneOf"])
        return f"{at} needs exactly one of {options}"
    return f"{at}: {error.message}"
