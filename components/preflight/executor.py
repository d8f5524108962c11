"""Preflight: every parameter of a training run checked against the source's schema and
the task, before any heavy work, all problems in one message.

The source's columns and types come from the engine that will run it, without reading
its rows: the local engine runs the query with ``LIMIT 0`` (and, for the label, one
small aggregate); BigQuery answers a dry run (nothing billed). Then:

* ``source`` given; ``key_column`` a column; ``label`` a column of the right kind for the
  task (binary: numbers or booleans holding 0/1; multiclass: integers, strings or
  booleans; regression: numbers);
* ``numeric_features`` numeric columns, ``categorical_features`` and ``slice_features``
  (crosses ``"a,b"``) columns, none of them the label; a ``transform_recipe`` that parses,
  whose input columns exist (and, locally, whose casts fit the column types);
* ``task`` and ``framework`` known (and the framework built into this spec), the
  framework's ``hyperparameters`` valid;
* ``thresholds`` / ``change_thresholds`` name the task's metrics (``cauce.tasks``);
* ``splits`` hold ``train`` and ``eval``; ``validation_policy`` fail or warn;
  locally, rows without a label counted: above ``max_missing_label_fraction`` with the
  ``fail`` policy that is a problem (validate would stop the run), below it a note;
* ``canary_traffic_percentage`` in 1..100; locally the ``port`` free (or held by this
  endpoint's own server, which a new version replaces in place).

It also resolves what a run leaves empty: no feature lists and no recipe -> every other
column by its type (numbers numeric, strings categorical); empty thresholds -> the task's
defaults (``cauce.tasks``). Every message lists the valid choices.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from cauce import tasks as task_info
from cauce.artifacts import CauceError

log = logging.getLogger(__name__)

FRAMEWORKS = ("sklearn", "keras", "torch")
NUMERIC_TYPES = {"INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC", "BOOL"}
CATEGORICAL_TYPES = {"STRING"}
LABEL_TYPES = {
    "binary": {"INT64", "FLOAT64", "NUMERIC", "BOOL"},
    "multiclass": {"INT64", "STRING", "BOOL"},
    "regression": {"INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC"},
}
VALIDATION_POLICIES = ("fail", "warn")


@dataclass
class Preflight:
    numeric_features: list[str]
    categorical_features: list[str]
    thresholds: dict
    change_thresholds: dict
    columns: dict[str, str] = field(default_factory=dict)
    """Column -> BigQuery type of the source."""
    label_counts: dict[str, int] = field(default_factory=dict)
    """Locally: rows, and rows whose label is missing."""
    notes: list[str] = field(default_factory=list)


def source_schema(
    source: str,
    target: str = "local",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    query_parameters: dict | None = None,
    identifiers: dict | None = None,
    bigquery_api_endpoint: str = "",
) -> tuple[str, dict[str, str]]:
    """(the query, its result's column -> BigQuery type), reading no rows."""
    from cauce.components.extract import executor as extract

    query = extract.source_query(extract.render_identifiers(source, identifiers or {}))
    parameters = extract.infer_query_parameters(query_parameters or {})
    if target == "local":
        from cauce.components.extract.local_engine import run_query

        database = local_database or extract._default_local_database()
        schema = run_query(database, extract._schema_probe(query), parameters).schema
        return query, {f.name: extract.bigquery_type(f.type) for f in schema}
    from cauce.components.extract.bigquery_backend import BigQueryBackend

    backend = BigQueryBackend(
        project=project, location=bigquery_location, api_endpoint=bigquery_api_endpoint, parameters=parameters,
        maximum_bytes_billed=0, api_retry_timeout_s=30.0, query_timeout_s=60.0, read_api="rest",
        storage_api_endpoint="", staging_dataset="",
    )  # fmt: skip
    return query, backend.result_types(query)


def _label_values(database: str, query: str, parameters: list, label: str) -> tuple[int, int, int, list]:
    """Locally: (rows, rows with a missing label, distinct label values, up to 12 of them)."""
    from cauce.components.extract.local_engine import run_query

    column = f"`{label}`"
    counts = run_query(
        database,
        f"SELECT COUNT(*) AS n, COUNTIF({column} IS NULL) AS missing, COUNT(DISTINCT {column}) AS distinct_values "  # noqa: S608
        f"FROM (\n{query}\n)",
        parameters,
    ).to_pylist()[0]
    sample = run_query(
        database, f"SELECT DISTINCT {column} AS v FROM (\n{query}\n) WHERE {column} IS NOT NULL ORDER BY v LIMIT 12", parameters  # noqa: S608
    ).column("v").to_pylist()
    return int(counts["n"]), int(counts["missing"]), int(counts["distinct_values"]), sample


def port_problem(port: int, endpoint_name: str) -> str:
    """Why the local deploy could not serve on ``port``, or "" (free, or this endpoint's own)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        return f"port {port!r} must be a number 1..65535"
    try:
        from cauce.components.deploy.executor import endpoint_dir

        state = json.loads((endpoint_dir(endpoint_name) / "state.json").read_text())
        if int(state.get("port", -1)) == port:
            return ""  # this endpoint's own server: the new version replaces it in place
    except (OSError, ValueError, CauceError):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return (
                f"port {port} is in use by another program (not endpoint {endpoint_name!r}); "
                "choose a free one with --param port=N, or stop the other server (cauce stop ENDPOINT)"
            )
    return ""


def run_preflight(
    source: str,
    key_column: str,
    label: str,
    numeric_features: list | None = None,
    categorical_features: list | None = None,
    slice_features: list | None = None,
    transform_recipe: dict | None = None,
    task: str = "binary",
    framework: str = "sklearn",
    frameworks: list | tuple = FRAMEWORKS,
    hyperparameters: dict | None = None,
    thresholds: dict | None = None,
    change_thresholds: dict | None = None,
    splits: dict | None = None,
    validation_policy: str = "fail",
    canary_traffic_percentage: int = 100,
    port: int = 8080,
    endpoint_name: str = "",
    model_name: str = "",
    target: str = "local",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    query_parameters: dict | None = None,
    identifiers: dict | None = None,
    bigquery_api_endpoint: str = "",
    check_port: bool = True,
    max_missing_label_fraction: float = 0.1,
) -> Preflight:
    """Check everything (module doc); raise one CauceError listing every problem."""
    problems: list[str] = []
    numeric = list(numeric_features or [])
    categorical = list(categorical_features or [])
    slices = list(slice_features or [])
    recipe_given = bool(transform_recipe)

    if task not in task_info.TASKS:
        problems.append(f"task {task!r} is not one of {list(task_info.TASKS)}")
    if framework not in frameworks:
        built = "" if tuple(frameworks) == FRAMEWORKS else " (this spec was built for it only)"
        problems.append(f"framework {framework!r} is not one of {list(frameworks)}{built}")
    elif task in task_info.TASKS:
        try:
            from cauce.components.train.executor import _trainer

            _trainer(framework).plan(dict(hyperparameters or {}), task, 42)
        except CauceError as error:
            problems.append(f"hyperparameters for {framework}: {error}")
    resolved_thresholds = task_info.thresholds_for(task, thresholds)
    resolved_changes = task_info.change_thresholds_for(task, change_thresholds)
    if task in task_info.TASKS:
        valid = list(task_info.METRICS[task])
        for name in thresholds or {}:
            if name not in valid:
                problems.append(f"thresholds names {name!r}, not a {task} metric; valid: {valid}")
        comparable = [m for m in valid if m != "example_count"]
        for name in change_thresholds or {}:
            if name not in comparable:
                problems.append(f"change_thresholds names {name!r}, not a {task} metric; valid: {comparable}")
    split_names = list((splits or {"train": 0.8, "eval": 0.2}).keys())
    for needed in ("train", "eval"):
        if needed not in split_names:
            problems.append(f"splits {split_names} has no {needed!r} split (train fits on 'train', evaluate scores 'eval')")
    if validation_policy not in VALIDATION_POLICIES:
        problems.append(f"validation_policy {validation_policy!r} is not one of {list(VALIDATION_POLICIES)}")
    fraction_ok = not isinstance(max_missing_label_fraction, bool) and isinstance(max_missing_label_fraction, (int, float))
    if not fraction_ok or not 0.0 <= max_missing_label_fraction <= 1.0:
        problems.append(f"max_missing_label_fraction {max_missing_label_fraction!r} must be a number in [0, 1]")
    if isinstance(canary_traffic_percentage, bool) or not isinstance(canary_traffic_percentage, int) or not (
        1 <= canary_traffic_percentage <= 100
    ):
        problems.append(f"canary_traffic_percentage {canary_traffic_percentage!r} must be a whole number 1..100")
    if target not in ("local", "google-cloud"):
        problems.append(f"target {target!r} is not one of ['local', 'google-cloud']")
    if target == "local" and check_port:
        problem = port_problem(port, endpoint_name or model_name)
        if problem:
            problems.append(problem)
    if recipe_given and (numeric or categorical):
        problems.append(
            "give either transform_recipe or numeric_features/categorical_features (the lists are its shorthand), not both"
        )
    recipe = None
    if recipe_given:
        try:
            from cauce.recipe import Recipe

            recipe = Recipe.parse(transform_recipe, label)
        except CauceError as error:
            problems.append(f"transform_recipe: {error}")

    columns: dict[str, str] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    if not source:
        problems.append(
            "source is empty: name a table (DATASET.TABLE; `cauce load` puts your files in one, `cauce tables` lists "
            "them) or a BigQuery SELECT query"
        )
    else:
        try:
            query, columns = source_schema(
                source, target, local_database, project, bigquery_location, query_parameters, identifiers,
                bigquery_api_endpoint,
            )  # fmt: skip
        except CauceError as error:
            problems.append(f"source: {error}")
    if columns:
        shown = ", ".join(f"{n} {t}" for n, t in columns.items())

        def absent(name: str) -> bool:
            return name not in columns

        if not key_column:
            problems.append(f"key_column is empty: name the column that identifies a row (columns: {shown})")
        elif absent(key_column):
            problems.append(f"key_column {key_column!r} is not a column of the source; columns: {shown}")
        if not label:
            problems.append(f"label is empty: name the column to predict (columns: {shown})")
        elif absent(label):
            problems.append(f"label {label!r} is not a column of the source; columns: {shown}")
        elif task in task_info.TASKS and columns[label] not in LABEL_TYPES[task]:
            kinds = {"binary": "0/1 numbers or booleans", "multiclass": "integers, strings or booleans",
                     "regression": "numbers"}[task]  # fmt: skip
            suggestion = {"STRING": " (strings: task multiclass)", "FLOAT64": " (decimals: task regression)"}.get(
                columns[label], ""
            )
            problems.append(
                f"label {label!r} is {columns[label]}; a {task} label holds {kinds}{suggestion}; tasks: {list(task_info.TASKS)}"
            )
        elif target == "local":
            try:
                from cauce.components.extract import executor as extract

                database = local_database or extract._default_local_database()
                rows, missing, distinct, sample = _label_values(
                    database, query, extract.infer_query_parameters(query_parameters or {}), label
                )
                counts = {"rows": rows, "missing_label": missing}
                if task == "binary" and not set(sample) <= {0, 1}:
                    problems.append(
                        f"label {label!r} holds {sample[:5]}{' ...' if distinct > 5 else ''}; a binary label holds 0 and 1 "
                        f"({distinct} distinct values: task multiclass or regression?)"
                    )
                elif task == "binary" and distinct < 2:
                    problems.append(f"label {label!r} holds one value {sample}: a binary label needs both 0 and 1")
                elif task == "multiclass" and distinct < 2:
                    problems.append(f"label {label!r} holds one value {sample}: a multiclass label needs two classes or more")
                elif task == "multiclass" and columns[label] == "INT64" and distinct > 0.5 * max(rows - missing, 1) and distinct > 50:
                    notes.append(f"label {label!r} has {distinct} distinct values for {rows} rows: is this a regression?")
                if rows and rows == missing:
                    problems.append(f"label {label!r} is missing in every row")
                elif missing and fraction_ok and validation_policy == "fail" and missing / rows > max_missing_label_fraction:
                    problems.append(
                        f"label {label!r} is missing in {missing} of {rows} rows ({missing / rows:.1%}), above "
                        f"max_missing_label_fraction ({max_missing_label_fraction:.1%}), so validate would stop the run; "
                        "fill or drop those rows, or raise max_missing_label_fraction (or validation_policy=warn)"
                    )
                elif missing:
                    notes.append(f"{missing} of {rows} rows have no label {label!r}: left out of training and evaluation")
            except CauceError as error:
                problems.append(f"label {label!r}: {error}")
        reserved = {label, key_column} - {""}
        for kind, listed, allowed in (
            ("numeric_features", numeric, NUMERIC_TYPES), ("categorical_features", categorical, None),
        ):  # fmt: skip
            for name in listed:
                if absent(name):
                    problems.append(f"{kind}: {name!r} is not a column of the source; columns: {shown}")
                elif name == label:
                    problems.append(f"{kind}: {name!r} is the label; features are the other columns")
                elif allowed and columns[name] not in allowed:
                    problems.append(
                        f"numeric_features: {name!r} is {columns[name]}, not a number; list it in categorical_features "
                        "or cast it in a transform_recipe"
                    )
        for entry in slices:
            parts = [p.strip() for p in str(entry).split(",")]
            for part in parts:
                if absent(part):
                    problems.append(f"slice_features: {part!r} (in {entry!r}) is not a column of the source; columns: {shown}")
                elif part == label:
                    problems.append(f"slice_features: {part!r} is the label; slice by feature columns")
        if recipe is not None:
            missing_inputs = [c for c in recipe.input_columns if absent(c)]
            if missing_inputs:
                problems.append(f"transform_recipe reads {missing_inputs}, not columns of the source; columns: {shown}")
            elif target == "local":
                try:
                    from cauce.components.extract import executor as extract
                    from cauce.components.extract.local_engine import run_query

                    arrow = run_query(
                        local_database or extract._default_local_database(), extract._schema_probe(query),
                        extract.infer_query_parameters(query_parameters or {}),
                    ).schema  # fmt: skip
                    recipe.check_schema(arrow, "the source")
                except CauceError as error:
                    problems.append(f"transform_recipe: {error}")
        if not recipe_given and not numeric and not categorical and label and not absent(label):
            for name, kind in columns.items():
                if name in reserved:
                    continue
                if kind in NUMERIC_TYPES:
                    numeric.append(name)
                elif kind in CATEGORICAL_TYPES:
                    categorical.append(name)
                else:
                    notes.append(f"column {name!r} ({kind}) is not a feature: give a transform_recipe to use it")
            if not numeric and not categorical:
                problems.append(f"the source has no column to learn from besides the key and the label; columns: {shown}")
            else:
                notes.append(f"features from the source's types: numeric {numeric}, categorical {categorical}")

    if task in task_info.TASKS and not resolved_thresholds:
        notes.append(
            f"no thresholds: a {task} task has no default bound, so a model is blessed (and deployed) only once you "
            f"set one, e.g. thresholds='{json.dumps(task_info.EXAMPLE_THRESHOLDS[task])}'"
        )
    if problems:
        # One line: a pipeline log names a step's error by its line (cauce.local).
        raise CauceError(
            f"preflight found {len(problems)} problem(s) before any work started: "
            + " ".join(f"({n}) {p};" for n, p in enumerate(problems, 1)).rstrip(";")
        )
    for note in notes:
        log.info("preflight: %s", note)
    return Preflight(numeric, categorical, resolved_thresholds, resolved_changes, columns, counts, notes)


def check_arguments(arguments: dict[str, Any], defaults: dict[str, Any], frameworks=FRAMEWORKS, check_port=True) -> Preflight:
    """Preflight from a training pipeline's parameter values (the CLI's check before kfp.local)."""
    values = {**defaults, **arguments}
    return run_preflight(
        source=values.get("source", ""), key_column=values.get("key_column", ""), label=values.get("label", ""),
        numeric_features=values.get("numeric_features"), categorical_features=values.get("categorical_features"),
        slice_features=values.get("slice_features"), transform_recipe=values.get("transform_recipe"),
        task=values.get("task", "binary"), framework=values.get("framework", "sklearn"), frameworks=frameworks,
        hyperparameters=values.get("hyperparameters"), thresholds=values.get("thresholds"),
        change_thresholds=values.get("change_thresholds"), splits=values.get("splits"),
        validation_policy=values.get("validation_policy", "fail"),
        canary_traffic_percentage=values.get("canary_traffic_percentage", 100), port=values.get("port", 8080),
        endpoint_name=values.get("endpoint_name", ""), model_name=values.get("model_name", ""),
        target=values.get("target", "local"), local_database=values.get("local_database", ""),
        project=values.get("project", ""), bigquery_location=values.get("bigquery_location", "US"),
        query_parameters=values.get("query_parameters"), identifiers=values.get("source_identifiers"),
        check_port=check_port, max_missing_label_fraction=values.get("max_missing_label_fraction", 0.1),
    )  # fmt: skip
