"""The recipe: validated steps grouped into phases (one full pass each), the raw
columns it reads, and the phase accumulator Beam combines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

from .columns import _missing_mask, numeric_values
from .expressions import Expression, _as_string
from .schema import ANALYZERS, DEFAULTS, STEP_SCHEMAS, check_document, check_step
from .steps import Step, _scalar_array, cast_column


class Recipe:
    """A validated recipe: its steps, their phases, and the raw columns it reads."""

    def __init__(self, document: dict, label: str = ""):
        document = check_document(document)
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
            spec = check_step(kind, raw, where)
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
