"""KFP definition of the batch prediction step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BEAM_IMAGE


# KFP needs literal, JSON-serializable defaults in the signature, hence the dict defaults.
@dsl.component(base_image=BEAM_IMAGE, install_kfp_package=False)
def batch_predict(
    model_name: str,
    key_column: str,
    predictions: dsl.Output[dsl.Dataset],
    alias: str = "champion",
    input_dataset: dsl.Input[dsl.Dataset] = None,
    input_split: str = "",
    source: str = "",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    query_parameters: dict = {},  # noqa: B006
    identifiers: dict = {},  # noqa: B006
    target: str = "local",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    mlflow_tracking_uri: str = "",
    runner: str = "DirectRunner",
    pipeline_options: dict = {},  # noqa: B006
    batch_size: int = 65536,
    dataflow: dict = {},  # noqa: B006
    beam_image: str = "",
    bigquery_output_table: str = "",
) -> NamedTuple("BatchPredictOutputs", [("rows", int), ("model_uri", str)]):
    """Apply a registered model (by alias) to a Parquet Dataset or a BigQuery table/query, in batches with Beam.

    Give exactly one input: ``input_dataset`` (a cauce Dataset, e.g. extract's output) or
    ``source`` (read the way extract reads it). ``target`` says where both live: ``"local"``
    (the embedded query engine, MLflow) or ``"google-cloud"`` (BigQuery, Vertex AI Model
    Registry in ``project``); the model is the registry version that ``alias`` names.
    The output Dataset has one split ``predictions``: the key column plus, by task,
    ``label``/``score`` (binary), ``label``/``score_<class>`` (multiclass) or ``value``
    (regression).

    Args:
        model_name: the registered model to apply.
        key_column: input column copied next to each prediction (the row's id).
        predictions: output cauce Dataset: split "predictions" + _schema.json.
        alias: registry alias naming the version to apply.
        input_dataset: cauce Dataset to score (leave unset when reading source).
        input_split: split of input_dataset to score; empty = its only split.
        source: BigQuery table (dataset.table or project.dataset.table) or query (SELECT/WITH) to score.
        local_database: DuckDB file of the local engine; empty = cauce's default.
        project: Google Cloud project: runs the BigQuery query and the Dataflow job, and holds
            the Vertex AI Model Registry.
        bigquery_location: BigQuery location of the query job.
        bigquery_api_endpoint: BigQuery endpoint other than Google's (emulator, private endpoint).
        query_parameters: @name -> scalar or list, sent as typed query parameters.
        identifiers: ${name} placeholders of source -> project/dataset/table ids (as extract's).
        target: "local" (source on the embedded engine, MLflow registry) or "google-cloud"
            (source on BigQuery, Vertex AI Model Registry in project).
        vertex_region: Vertex AI region of the model registry.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        mlflow_tracking_uri: MLflow registry of the local target; empty = cauce's local default.
        runner: Beam runner: DirectRunner or DataflowRunner (the job runs in project and
            dataflow's region, and is cancelled if the step is cancelled).
        pipeline_options: any other Beam option; names that look like credentials are refused.
        batch_size: rows per model call.
        dataflow: Dataflow options (DataflowRunner only), as transform's: region and
            temp_location required; see cauce.beam_pipelines.DATAFLOW_FIELDS.
        beam_image: the image Dataflow workers run unless dataflow names an sdk_container_image;
            pass the beam image your pipeline was compiled with (cauce.images.BEAM_IMAGE);
            empty = the release tag.
        bigquery_output_table: also write the predictions to this BigQuery table
            (bq://project.dataset.table), as Vertex AI batch prediction does: one load job,
            replacing the table's rows; the dataset is created in bigquery_location if missing.
    """
    from collections import namedtuple

    from cauce.beam_pipelines import runner_options
    from cauce.components.batch_predict.executor import run_batch_predict_from_registry

    options = runner_options(
        runner, pipeline_options, job_name_prefix="cauce-predict", project=project, dataflow=dataflow, beam_image=beam_image
    )

    result = run_batch_predict_from_registry(
        model_name=model_name,
        alias=alias,
        target=target,
        mlflow_tracking_uri=mlflow_tracking_uri,
        registry_project=project,
        vertex_region=vertex_region,
        vertex_api_endpoint=vertex_api_endpoint,
        output_dir=predictions.path,
        output_uri=predictions.uri,
        key_column=key_column,
        input_dataset_dir=input_dataset.path if input_dataset is not None else "",
        input_dataset_uri=input_dataset.uri if input_dataset is not None else "",
        input_split=input_split,
        source=source,
        local_database=local_database,
        project=project,
        bigquery_location=bigquery_location,
        bigquery_api_endpoint=bigquery_api_endpoint,
        query_parameters=query_parameters,
        identifiers=identifiers,
        runner=runner,
        pipeline_options=options,
        batch_size=batch_size,
    )
    if bigquery_output_table:
        from cauce.components.batch_predict.bigquery_output import write_predictions_table

        result.update(write_predictions_table(
            predictions.path, bigquery_output_table, bigquery_location, bigquery_api_endpoint, predictions.uri
        ))
    predictions.metadata.update(result)
    return namedtuple("BatchPredictOutputs", ["rows", "model_uri"])(result["rows"], result["model"])
