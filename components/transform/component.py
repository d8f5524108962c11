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
        runner: "DirectRunner" locally, "DataflowRunner" on Google Cloud.
        pipeline_options: extra Beam options, e.g. {"project": ..., "region": ...,
            "temp_location": "gs://...", "sdk_container_image": ..., "max_num_workers": 10}.
    """
    from collections import namedtuple

    from cauce.components.transform.executor import run_transform

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
        pipeline_options=pipeline_options,
        task=task,
        recipe=recipe or None,
    )
    transformed.metadata.update(result.metadata)
    transform_fn.metadata.update({"label": label, "feature_names": result.feature_names})
    return namedtuple("TransformOutputs", ["features_out"])(len(result.feature_names))
