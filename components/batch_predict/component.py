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
    backend: str = "local",
    local_database: str = "",
    project: str = "",
    location: str = "US",
    api_endpoint: str = "",
    query_parameters: dict = {},  # noqa: B006
    identifiers: dict = {},  # noqa: B006
    target: str = "local",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    mlflow_tracking_uri: str = "",
    runner: str = "DirectRunner",
    pipeline_options: dict = {},  # noqa: B006
    batch_size: int = 65536,
    dataflow_temp_location: str = "",
    dataflow_staging_location: str = "",
    dataflow_service_account: str = "",
    dataflow_machine_type: str = "",
    dataflow_max_workers: int = 0,
    dataflow_network: str = "",
    dataflow_subnetwork: str = "",
    dataflow_use_public_ips: bool = True,
    dataflow_sdk_container_image: str = "",
) -> NamedTuple("BatchPredictOutputs", [("rows", int), ("model_uri", str)]):
    """Apply a registered model (by alias) to a Parquet Dataset or a BigQuery table/query, in batches with Beam.

    Give exactly one input: ``input_dataset`` (a cauce Dataset, e.g. extract's output) or
    ``source`` (read the way extract reads it). The model is the registry version that
    ``alias`` names: Vertex AI Model Registry with ``target="google-cloud"``, MLflow with ``"local"``.
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
        backend: how source is read: "local" (embedded DuckDB engine) or "bigquery".
        local_database: DuckDB file of the local engine; empty = cauce's default.
        project: Google Cloud project: runs the BigQuery query and holds the Vertex AI Model Registry.
        location: BigQuery location of the query job.
        api_endpoint: BigQuery endpoint other than Google's (emulator, private endpoint).
        query_parameters: @name -> scalar or list, sent as typed query parameters.
        identifiers: ${name} placeholders of source -> project/dataset/table ids (as extract's).
        target: where the registry is: "local" (MLflow) or "google-cloud" (Vertex AI Model Registry in project).
        vertex_region: Vertex AI region of the model registry.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        mlflow_tracking_uri: MLflow registry of the local target; empty = cauce's local default.
        runner: Beam runner: DirectRunner or DataflowRunner (the job runs in project and
            region, and is cancelled if the step is cancelled).
        pipeline_options: any other Beam option; names that look like credentials are refused.
        batch_size: rows per model call.
        dataflow_temp_location: gs://bucket/path for Dataflow's temporary files (required on Dataflow).
        dataflow_staging_location: gs://bucket/path for staged files; empty = the temp location.
        dataflow_service_account: the workers' service account e-mail; empty = the project's default.
        dataflow_machine_type: worker machine type; empty = Dataflow's default.
        dataflow_max_workers: autoscaling ceiling; 0 = Dataflow's default.
        dataflow_network: VPC network of the workers; empty = default.
        dataflow_subnetwork: subnetwork of the workers.
        dataflow_use_public_ips: False keeps workers on private IPs (needs Private Google Access).
        dataflow_sdk_container_image: the workers' image; pass the beam image your pipeline was
            compiled with (cauce.images.BEAM_IMAGE); empty = the release tag.
    """
    from collections import namedtuple

    from cauce.beam_pipelines import runner_options
    from cauce.components.batch_predict.executor import run_batch_predict_from_registry

    options = runner_options(
        runner,
        pipeline_options,
        job_name_prefix="cauce-predict",
        project=project,
        region=vertex_region,
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
        backend=backend,
        local_database=local_database,
        project=project,
        location=location,
        api_endpoint=api_endpoint,
        query_parameters=query_parameters,
        identifiers=identifiers,
        runner=runner,
        pipeline_options=options,
        batch_size=batch_size,
    )
    predictions.metadata.update(result)
    return namedtuple("BatchPredictOutputs", ["rows", "model_uri"])(result["rows"], result["model"])
