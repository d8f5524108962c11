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
) -> NamedTuple(
    "PreflightOutputs",
    [("numeric_features", list), ("categorical_features", list), ("thresholds", dict), ("change_thresholds", dict)],
):
    """Check every parameter of a training run against the source's schema (local engine,
    or a BigQuery dry run: no rows read, nothing billed) and the task, reporting every
    problem in one message with the valid choices, before any heavy step starts.

    Returns the feature lists (every other column by its type when none are given and
    there is no recipe) and the thresholds (the task's defaults when empty) the run uses.
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
    )  # fmt: skip
    outputs = namedtuple("PreflightOutputs", ["numeric_features", "categorical_features", "thresholds", "change_thresholds"])
    return outputs(result.numeric_features, result.categorical_features, result.thresholds, result.change_thresholds)
