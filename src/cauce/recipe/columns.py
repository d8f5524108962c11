"""Column helpers shared by the steps and the fitted transform: numeric values of an
Arrow column (missing as NaN) and missing-value masks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

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
