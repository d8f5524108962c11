"""KFP definition of the transform step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BEAM_IMAGE


@dsl.component(base_image=BEAM_IMAGE, install_kfp_package=False)
def transform(
    dataset: dsl.Input[dsl.Dataset],
    label: str,
    numeric_features: list,
    categorical_features: list,
    transformed: dsl.Output[dsl.Dataset],
    transform_fn: dsl.Output[dsl.Artifact],
    analyze_split: str = "train",
    top_k: int = 100,
    runner: str = "DirectRunner",
    pipeline_options: dict = {},
    task: str = "binary",
    recipe: dict = {},
    project: str = "",
    location: str = "us-central1",
    dataflow_temp_location: str = "",
    dataflow_staging_location: str = "",
    dataflow_service_account: str = "",
    dataflow_machine_type: str = "",
    dataflow_max_workers: int = 0,
    dataflow_network: str = "",
    dataflow_subnetwork: str = "",
    dataflow_use_public_ips: bool = True,
    dataflow_sdk_container_image: str = "",
) -> NamedTuple("TransformOutputs", [("features_out", int)]):
    """Fit a feature transform on the training split (Beam full pass) and encode every split.

    Args:
        dataset: raw cauce Dataset (output of extract).
        label: the label column: 0/1 for task "binary", classes for "multiclass",
            numbers for "regression".
        numeric_features: columns z-scored (missing -> mean); shorthand for a zscore recipe step.
        categorical_features: columns one-hot encoded over the top_k training values + OOV;
            shorthand for a vocabulary recipe step.
        recipe: the full declarative transform (see docs/recipes.md): {"steps": [...]} of
            row-level steps (drop/rename columns, replace_text, cast, map_values,
            fill_missing, derive) and analyzers (zscore, min_max, vocabulary, bucketize)
            fitted in Beam. When given, numeric_features/categorical_features must be empty.
        runner: "DirectRunner" locally, "DataflowRunner" on Google Cloud (one Dataflow
            job per pass, cancelled if the step is cancelled).
        pipeline_options: any other Beam option; names that look like credentials are refused.
        project: Google Cloud project of the Dataflow job (DataflowRunner only).
        location: Dataflow region, e.g. us-central1.
        dataflow_temp_location: gs://bucket/path for Dataflow's temporary files (required on Dataflow).
        dataflow_staging_location: gs://bucket/path for staged files; empty = the temp location.
        dataflow_service_account: the workers' service account e-mail; empty = the project's default.
        dataflow_machine_type: worker machine type, e.g. n2-standard-4; empty = Dataflow's default.
        dataflow_max_workers: autoscaling ceiling; 0 = Dataflow's default.
        dataflow_network: VPC network of the workers; empty = default.
        dataflow_subnetwork: subnetwork of the workers (regions/<region>/subnetworks/<name> or URL).
        dataflow_use_public_ips: False keeps workers on private IPs (needs Private Google Access).
        dataflow_sdk_container_image: the workers' SDK harness image. Pipelines pass the beam
            image they were compiled with (the `training` pipeline does); empty = the
            image cauce.images names in the running step, the release tag by default.
    """
    from collections import namedtuple

    from cauce.beam_pipelines import runner_options
    from cauce.components.transform.executor import run_transform

    options = runner_options(
        runner,
        pipeline_options,
        job_name_prefix="cauce-transform",
        project=project,
        region=location,
        temp_location=dataflow_temp_location,
        staging_location=dataflow_staging_location,
        service_account_email=dataflow_service_account,
        machine_type=dataflow_machine_type,
        max_num_workers=dataflow_max_workers,
        sdk_container_image=dataflow_sdk_container_image,
        network=dataflow_network,
        subnetwork=dataflow_subnetwork,
        use_public_ips=dataflow_use_public_ips,
    )

    result = run_transform(
        dataset_dir=dataset.path,
        dataset_uri=dataset.uri,
        label=label,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        transformed_dir=transformed.path,
        transformed_uri=transformed.uri,
        transform_dir=transform_fn.path,
        analyze_split=analyze_split,
        top_k=top_k,
        runner=runner,
        pipeline_options=options,
        task=task,
        recipe=recipe or None,
    )
    transformed.metadata.update(result.metadata)
    transform_fn.metadata.update({"label": label, "feature_names": result.feature_names})
    return namedtuple("TransformOutputs", ["features_out"])(len(result.feature_names))
