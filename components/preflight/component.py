"""KFP definition of the preflight step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def preflight(
    source: str,
    key_column: str,
    label: str,
    numeric_features: list = [],
    categorical_features: list = [],
    slice_features: list = [],
    transform_recipe: dict = {},
    task: str = "binary",
    framework: str = "sklearn",
    frameworks: list = ["sklearn", "keras", "torch"],
    hyperparameters: dict = {},
    thresholds: dict = {},
    change_thresholds: dict = {},
    splits: dict = {"train": 0.8, "eval": 0.2},
    validation_policy: str = "fail",
    canary_traffic_percentage: int = 100,
    port: int = 8080,
    endpoint_name: str = "",
    target: str = "local",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    query_parameters: dict = {},
    identifiers: dict = {},
    max_missing_label_fraction: float = 0.1,
) -> NamedTuple(
    "PreflightOutputs",
    [("numeric_features", list), ("categorical_features", list), ("thresholds", dict), ("change_thresholds", dict)],
):
    """Check every parameter of a training run against the source's schema (local engine,
    or a BigQuery dry run: no rows read, nothing billed) and the task, reporting every
    problem in one message with the valid choices, before any heavy step starts.

    Returns the feature lists (every other column by its type when none are given and
    there is no recipe) and the thresholds (the task's defaults when empty) the run uses.

    Args:
        source: a table (DATASET.TABLE) or a BigQuery SELECT; its columns and types are read without reading rows.
        key_column: must be a column of the source.
        label: must be a column of the kind the task needs (binary 0/1, multiclass integers/strings, regression numbers).
        numeric_features: numeric columns; with categorical_features and transform_recipe empty: every other column by type.
        categorical_features: columns, none of them the label.
        slice_features: columns or crosses "a,b", none of them the label.
        transform_recipe: must parse and read only columns of the source (locally: casts checked against the types).
        task: binary | multiclass | regression.
        framework: one of ``frameworks``.
        frameworks: the frameworks this spec has a train task for.
        hyperparameters: checked by the framework's trainer.
        thresholds: metric names of the task (cauce.tasks); empty: the task's defaults.
        change_thresholds: metric names of the task; empty: the task's defaults.
        splits: must hold "train" and "eval".
        validation_policy: fail | warn.
        canary_traffic_percentage: 1..100.
        port: locally, free or held by this endpoint's own server.
        endpoint_name: the endpoint whose server may hold ``port``.
        target: local | google-cloud (where the source's schema comes from).
        local_database: the local engine's file; empty: the default under CAUCE_HOME.
        project: Google Cloud project of the BigQuery dry run.
        bigquery_location: location of the dry run.
        query_parameters: values of the source's @name parameters.
        identifiers: values of the source's ${name} placeholders.
        max_missing_label_fraction: locally, with validation_policy fail, more rows without a label than this share is refused here (validate would stop the run).
    """
    from collections import namedtuple

    from cauce.components.preflight.executor import run_preflight

    result = run_preflight(
        source=source, key_column=key_column, label=label, numeric_features=numeric_features,
        categorical_features=categorical_features, slice_features=slice_features, transform_recipe=transform_recipe,
        task=task, framework=framework, frameworks=frameworks, hyperparameters=hyperparameters,
        thresholds=thresholds, change_thresholds=change_thresholds, splits=splits,
        validation_policy=validation_policy, canary_traffic_percentage=canary_traffic_percentage, port=port,
        endpoint_name=endpoint_name, target=target, local_database=local_database, project=project,
        bigquery_location=bigquery_location, query_parameters=query_parameters, identifiers=identifiers,
        max_missing_label_fraction=max_missing_label_fraction,
    )  # fmt: skip
    outputs = namedtuple("PreflightOutputs", ["numeric_features", "categorical_features", "thresholds", "change_thresholds"])
    return outputs(result.numeric_features, result.categorical_features, result.thresholds, result.change_thresholds)
