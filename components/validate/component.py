"""KFP definition of the validate step: statistics, schema and anomalies (logic in executor.py)."""

from kfp import dsl

from cauce.images import BEAM_IMAGE


@dsl.component(base_image=BEAM_IMAGE, install_kfp_package=False)
def validate(
    dataset: dsl.Input[dsl.Dataset],
    statistics: dsl.Output[dsl.Artifact],
    schema: dsl.Output[dsl.Artifact],
    anomalies: dsl.Output[dsl.Artifact],
    html: dsl.Output[dsl.HTML],
    baseline_schema: dsl.Input[dsl.Artifact] = None,
    baseline_schema_uri: str = "",
    schema_split: str = "train",
    on_anomaly: str = "fail",
    max_string_domain_size: int = 100,
    max_out_of_domain_fraction: float = 0.0,
    label: str = "",
    max_missing_label_fraction: float = 0.1,
    runner: str = "",
    pipeline_options: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    project: str = "",
    dataflow: dict = {},  # noqa: B006
    beam_image: str = "",
) -> int:
    """TFDV-style statistics of every split, a schema, and anomalies of the other splits.

    Returns the number of anomalies found (0 when the data matches the schema).

    Args:
        dataset: a cauce Dataset (output of extract).
        statistics: ``FeatureStats.pb`` (DatasetFeatureStatisticsList, one entry per split)
            and ``Split-<split>/FeatureStats.pb``, the files TFDV / TFX write.
        schema: ``schema.pbtxt``, inferred from ``schema_split`` (or the baseline schema).
        anomalies: ``Split-<split>/anomalies.pbtxt`` (tensorflow_metadata Anomalies) and
            ``anomalies.json`` (a readable summary).
        html: a self-contained page the Vertex AI / KFP UI renders.
        baseline_schema: optional: a previous run's ``schema`` output (e.g. through
            ``dsl.importer``); when given, every split is validated against it.
        baseline_schema_uri: the same as a path or ``gs://`` URI (a schema.pbtxt or a
            folder holding one); used when ``baseline_schema`` is not connected.
        schema_split: the split the schema is inferred from (ignored with a baseline schema).
        on_anomaly: "fail" (raise after writing every output) or "warn" (log and go on).
        max_string_domain_size: string features with at most this many distinct training
            values get a domain (TFDV's default 100).
        max_out_of_domain_fraction: share of present values allowed outside a domain
            (0: any unseen category is an anomaly, as in TFDV).
        label: the label column: rows where it is missing (null or NaN) are counted in
            every split; transform, train and evaluate leave them out. Empty: not counted.
        max_missing_label_fraction: share of a split's rows that may lack a label before
            it is an anomaly.
        runner: empty computes the statistics in the step's process; "DirectRunner" (Beam's
            FnApiRunner) or "DataflowRunner" computes the same statistics as a Beam combiner
            (a Dataflow job, cancelled if the step is cancelled), for splits past one machine.
        pipeline_options: any other Beam option; names that look like credentials are refused.
        project: Google Cloud project of the Dataflow job (DataflowRunner only).
        dataflow: Dataflow options, as transform's (see cauce.beam_pipelines.DATAFLOW_FIELDS):
            region and temp_location (gs://) required. Checked before any job.
        beam_image: the image Dataflow workers run unless dataflow names an sdk_container_image.

    Returns:
        The number of anomalies found (0: every validated split matches the schema).
    """
    from cauce.beam_pipelines import runner_options, work_uri
    from cauce.components.validate.executor import run_validate

    # An optional input that is not connected arrives as None.
    baseline = baseline_schema.path if baseline_schema is not None else baseline_schema_uri
    result = run_validate(
        dataset_dir=dataset.path,
        statistics_dir=statistics.path,
        schema_dir=schema.path,
        anomalies_dir=anomalies.path,
        html_path=html.path,
        schema_split=schema_split,
        baseline_schema=baseline,
        on_anomaly=on_anomaly,
        max_string_domain_size=max_string_domain_size,
        max_out_of_domain_fraction=max_out_of_domain_fraction,
        runner=runner,
        pipeline_options=runner_options(
            runner, pipeline_options, job_name_prefix="cauce-validate", project=project, dataflow=dataflow,
            beam_image=beam_image,
        ) if runner else None,
        work_uri=work_uri(runner, dataflow, "cauce-validate"),
        dataset_uri=dataset.uri,
        label=label,
        max_missing_label_fraction=max_missing_label_fraction,
    )
    statistics.metadata.update({"split_rows": result.split_rows, "format": "tensorflow_metadata DatasetFeatureStatisticsList"})
    schema.metadata.update({"source": result.schema_source, "format": "tensorflow_metadata Schema (text)"})
    anomalies.metadata.update({
        "anomalies_found": result.anomalies_found,
        "by_split": {split: len(items) for split, items in result.anomalies.items()},
        "missing_labels": result.missing_labels,
    })
    return result.anomalies_found
