"""The `monitoring` pipeline: compare a window of served requests with the
training data (skew) and the previous window (drift), per feature, with TFDV's
measures; alert on drift, and, inside ``dsl.If`` on the drift flag and
``retrain_on_drift``, start the training pipeline."""

from kfp import dsl

from cauce.artifact_types import VertexEndpoint
from cauce.components.monitor.component import monitor, vertex_monitoring
from cauce.components.retrain.component import retrain
from cauce.images import BEAM_IMAGE


@dsl.pipeline(
    name="cauce-monitoring",
    description="Training/serving skew and drift of the features a deployed model receives.",
)
def monitoring(
    baseline_uri: str,
    # The requests: the local serving process's log folder, or (on Google Cloud) the
    # endpoint's request-response log table bq://project.dataset.table.
    request_log_dir: str = "",
    request_log_table: str = "",
    # The features to compare (the model's raw inputs). `cauce run monitoring` fills them,
    # when both are empty, from the model of the local endpoint that writes request_log_dir;
    # `cauce demo` passes the demo's (cauce.demo.DEMO_MONITORING_PARAMETERS).
    numeric_features: list = [],
    categorical_features: list = [],
    baseline_split: str = "train",
    thresholds: dict = {},
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
    window_start: str = "",
    window_end: str = "",
    previous_window_start: str = "",
    previous_window_end: str = "",
    alert_webhook: str = "",
    alert_topic: str = "",
    retrain_on_drift: bool = False,
    training_spec: str = "",
    training_parameters: dict = {},
    # "local": retraining runs under kfp.local; "google-cloud": as a Vertex AI PipelineJob,
    # and with endpoint_resource_name the endpoint's Vertex AI Model Monitoring job is set up.
    target: str = "local",
    project: str = "",
    vertex_region: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    vertex_api_endpoint: str = "",
    endpoint_resource_name: str = "",
    training_data_source: str = "",
    target_field: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    bigquery_read_api: str = "auto",
    bigquery_storage_api_endpoint: str = "",
    bigquery_staging_dataset: str = "",
    maximum_bytes_billed: int = 0,
    # Where the histograms are computed: "" in the monitor step's process; "DirectRunner" or
    # "DataflowRunner" as Beam combiners (same numbers), with pipeline_options and the
    # dataflow options as the training pipeline's transform takes them.
    runner: str = "",
    pipeline_options: dict = {},
    dataflow: dict = {},
):
    baseline = dsl.importer(artifact_uri=baseline_uri, artifact_class=dsl.Dataset, reimport=False)
    monitored = monitor(
        baseline=baseline.output,
        request_log_dir=request_log_dir,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        baseline_split=baseline_split,
        thresholds=thresholds,
        default_numeric_threshold=default_numeric_threshold,
        default_categorical_threshold=default_categorical_threshold,
        window_start=window_start,
        window_end=window_end,
        previous_window_start=previous_window_start,
        previous_window_end=previous_window_end,
        alert_webhook=alert_webhook,
        alert_topic=alert_topic,
        request_log_table=request_log_table,
        bigquery_project=project,
        bigquery_location=bigquery_location,
        bigquery_api_endpoint=bigquery_api_endpoint,
        bigquery_read_api=bigquery_read_api,
        bigquery_storage_api_endpoint=bigquery_storage_api_endpoint,
        bigquery_staging_dataset=bigquery_staging_dataset,
        maximum_bytes_billed=maximum_bytes_billed,
        runner=runner,
        pipeline_options=pipeline_options,
        project=project,
        dataflow=dataflow,
        # Fixed at compile time: the running step does not know which release compiled it.
        beam_image=BEAM_IMAGE,
    ).set_display_name("monitor")
    with dsl.If(target == "google-cloud", name="google-cloud-target"):
        with dsl.If(endpoint_resource_name != "", name="vertex-endpoint-given"):
            # The endpoint as GCPC ops see it: a google.VertexEndpoint naming the resource.
            endpoint = dsl.importer(
                artifact_uri=endpoint_resource_name,
                artifact_class=VertexEndpoint,
                reimport=False,
                metadata={"resourceName": endpoint_resource_name},
            ).set_display_name("vertex-endpoint")
            vertex_monitoring(
                vertex_endpoint=endpoint.output,
                project=project,
                training_data_source=training_data_source,
                numeric_features=numeric_features,
                categorical_features=categorical_features,
                vertex_region=vertex_region,
                vertex_api_endpoint=vertex_api_endpoint,
                target_field=target_field,
                thresholds=thresholds,
                default_numeric_threshold=default_numeric_threshold,
                default_categorical_threshold=default_categorical_threshold,
            ).set_display_name("vertex-monitoring")
    # Retraining is decided here, in the graph: on the monitor's drift flag (its single bool
    # output: kfp.local 2.17 silently skips a dsl.If on a NamedTuple field) and the parameter.
    with dsl.If(monitored.outputs["Output"] == True, name="drift"):  # noqa: E712 - a KFP condition, not a Python test
        with dsl.If(retrain_on_drift == True, name="retrain-on-drift"):  # noqa: E712
            retrain(
                training_spec=training_spec,
                parameter_values=training_parameters,
                target=target,
                project=project,
                vertex_region=vertex_region,
                pipeline_root=pipeline_root,
                service_account=service_account,
                vertex_api_endpoint=vertex_api_endpoint,
                # The training run's `trigger`: its lineage records the drift that started it.
                drift_report=monitored.outputs["drift_report"],
                monitoring_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            ).set_display_name("retrain")
