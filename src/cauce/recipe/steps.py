"""The recipe's step kernels: each step type applied to an Arrow record batch, and
the ``cast`` conversions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

from .accumulators import Moments, QuantileSketch, ValueCounts
from .columns import numeric_values
from .expressions import Expression, _as_float, _as_string, _is_number
from .schema import ANALYZERS, MISSING, OOV


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
