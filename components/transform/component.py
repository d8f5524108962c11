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
    fitted_transform: dsl.Output[dsl.Artifact],
    analyze_split: str = "train",
    top_k: int = 100,
    runner: str = "DirectRunner",
    pipeline_options: dict = {},
    task: str = "binary",
    recipe: dict = {},
    project: str = "",
    dataflow: dict = {},
    beam_image: str = "",
) -> NamedTuple("TransformOutputs", [("features_out", int)]):
    """Fit a feature transform on the training split (Beam full pass) and encode every split.

    Args:
        dataset: raw cauce Dataset (output of extract).
        label: the label column: 0/1 for task "binary", classes for "multiclass",
            numbers for "regression".
        numeric_features: columns z-scored (missing -> mean); shorthand for a zscore recipe step.
        categorical_features: columns one-hot encoded over the top_k training values + OOV;
            shorthand for a vocabulary recipe step.
        analyze_split: the split the transform is fitted on.
        top_k: vocabulary size per categorical feature (numeric_features/categorical_features
            shorthand).
        task: "binary" | "multiclass" | "regression": how the label is checked and encoded.
        recipe: the full declarative transform (see docs/recipes.md): {"steps": [...]} of
            row-level steps (drop/rename columns, replace_text, cast, map_values,
            fill_missing, derive) and analyzers (zscore, min_max, vocabulary, bucketize)
            fitted in Beam. When given, numeric_features/categorical_features must be empty.
        runner: "DirectRunner" locally, "DataflowRunner" on Google Cloud (one Dataflow
            job per pass, cancelled if the step is cancelled).
        pipeline_options: any other Beam option; names that look like credentials are refused.
        project: Google Cloud project of the Dataflow job (DataflowRunner only).
        dataflow: Dataflow options (DataflowRunner only; see cauce.beam_pipelines.DATAFLOW_FIELDS):
            region and temp_location (gs://) required; staging_location, service_account_email,
            machine_type, max_num_workers, network, subnetwork, use_public_ips,
            sdk_container_image, labels, job_name optional. Checked before any job.
        beam_image: the image Dataflow workers run unless dataflow names an sdk_container_image:
            pipelines pass the beam image they were compiled with (the `training` pipeline
            does); empty = the image cauce.images names in the running step.
        transformed: output: the same splits, encoded: float32 features + the label.
        fitted_transform: output: the fitted transform (transform.json) that training,
            evaluation, serving and batch prediction apply.
        features_out: output: the number of encoded feature columns.
    """
    from collections import namedtuple

    from cauce.beam_pipelines import runner_options
    from cauce.components.transform.executor import run_transform

    options = runner_options(
        runner, pipeline_options, job_name_prefix="cauce-transform", project=project, dataflow=dataflow, beam_image=beam_image
    )

    result = run_transform(
        dataset_dir=dataset.path,
        dataset_uri=dataset.uri,
        label=label,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        transformed_dir=transformed.path,
        transformed_uri=transformed.uri,
        transform_dir=fitted_transform.path,
        analyze_split=analyze_split,
        top_k=top_k,
        runner=runner,
        pipeline_options=options,
        task=task,
        recipe=recipe or None,
    )
    transformed.metadata.update(result.metadata)
    fitted_transform.metadata.update({"label": label, "feature_names": result.feature_names})
    return namedtuple("TransformOutputs", ["features_out"])(len(result.feature_names))
