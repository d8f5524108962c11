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

The package, one concern a module: ``schema`` (the format: ``RECIPE_SCHEMA``, checked with
``jsonschema``), ``expressions`` (``derive``'s expression language),
``columns`` (numeric values and missing masks), ``accumulators`` (the mergeable
statistics), ``steps`` (the step kernels) and ``core`` (the recipe and its phases).
``from cauce.recipe import X`` works for every public name.
"""

from .accumulators import Moments, QuantileSketch, ValueCounts
from .columns import numeric_values
from .core import Recipe
from .expressions import FUNCTIONS, Expression
from .schema import ANALYZERS, CAST_TYPES, DEFAULTS, MISSING, OOV, RECIPE_SCHEMA, STATISTICS, STEP_SCHEMAS
from .steps import Step, cast_column

__all__ = [
    "OOV",
    "MISSING",
    "CAST_TYPES",
    "STATISTICS",
    "STEP_SCHEMAS",
    "DEFAULTS",
    "ANALYZERS",
    "RECIPE_SCHEMA",
    "FUNCTIONS",
    "Expression",
    "numeric_values",
    "Moments",
    "ValueCounts",
    "QuantileSketch",
    "Step",
    "cast_column",
    "Recipe",
]
