"""KFP definitions of the monitor step: serving requests compared with the training baseline
(``monitor``), and Vertex AI Model Monitoring of an endpoint (``vertex_monitoring``).

A thin shell: the logic lives in ``executor.py`` (plain Python, tested without KFP).
"""


from kfp import dsl

from cauce.artifact_types import VertexEndpoint
from cauce.images import BASE_IMAGE, BEAM_IMAGE


@dsl.component(base_image=BEAM_IMAGE, install_kfp_package=False)
def monitor(
    baseline: dsl.Input[dsl.Dataset],
    numeric_features: list,
    categorical_features: list,
    drift_report: dsl.Output[dsl.Artifact],
    report_html: dsl.Output[dsl.HTML],
    endpoint: dsl.Input[dsl.Artifact] = None,
    request_log_dir: str = "",
    baseline_split: str = "train",
    # KFP needs a literal default to put in the spec; it is never mutated.
    thresholds: dict = {},  # noqa: B006
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
    window_start: str = "",
    window_end: str = "",
    previous_window_start: str = "",
    previous_window_end: str = "",
    alert_webhook: str = "",
    alert_topic: str = "",
    request_log_table: str = "",
    bigquery_project: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    bigquery_read_api: str = "auto",
    bigquery_storage_api_endpoint: str = "",
    bigquery_staging_dataset: str = "",
    maximum_bytes_billed: int = 0,
    runner: str = "",
    pipeline_options: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    project: str = "",
    dataflow: dict = {},  # noqa: B006
    beam_image: str = "",
) -> bool:
    """Drift/skew of serving requests against a baseline split, measured as TFDV does.

    The requests are the JSON Lines logs in ``request_log_dir`` (the local serving
    process's), or Vertex AI's request-response log table ``request_log_table``
    (``bq://project.dataset.table``: read with a query whose window is in SQL, the
    ``maximum_bytes_billed`` cost guard and the Storage Read API, as extract reads), or,
    when both are empty, those of ``endpoint`` (``deploy``'s log folder or the table
    ``deploy_vertex`` named). Both sources go through one code path and give the same
    numbers for the same requests; a window without requests is reported and alerts nothing.

    Numeric features: approximate Jensen-Shannon divergence; categorical features:
    L-infinity distance. Skew compares the serving window with the baseline; with a
    previous window, drift compares the two windows too. The step returns the drift flag
    (True when any feature of either comparison is above its threshold): one bool output,
    so pipelines branch on it with ``dsl.If(task.outputs["Output"] == True)``; the flagged
    features are ``drift_report``'s ``drifted_features`` metadata. With ``alert_webhook`` a flagged run POSTs a JSON
    alert there; with ``alert_topic`` (``projects/<project>/topics/<topic>``) it publishes
    the same JSON as one Pub/Sub message with filterable attributes (``kind``,
    ``features``, ``endpoint``, ``model``). Alerts go out after the report is written; a
    failed delivery is logged and listed in the ``undelivered_alerts`` metadata, and does
    not fail the step. (``vertex_monitoring`` sets up Vertex AI Model Monitoring of a
    ``google.VertexEndpoint`` with the same thresholds.) ``drift_report`` holds report.json and report.html; ``report_html``
    is the same page as a single file, which the Vertex AI console renders.

    ``runner`` empty computes the histograms in the step's process; "DirectRunner" (Beam's
    FnApiRunner) or "DataflowRunner" (``project``, ``dataflow``, ``pipeline_options`` and
    ``beam_image`` as transform takes them; a Dataflow job cancelled if the step is cancelled)
    computes them as Beam combiners with the same numbers, for a baseline or a window past one
    machine (JSON Lines request logs, local or gs://).

    Args:
        baseline: a cauce Dataset (``<split>/part-*.parquet``), e.g. extract's output.
        numeric_features: features compared with Jensen-Shannon divergence; strings from JSON
            requests (``"42.5"``) are parsed.
        categorical_features: features compared with L-infinity; values compared as text, so
            ``3`` and ``"3"`` are one category.
        drift_report: output: a folder with report.json and report.html; metadata
            ``drift_detected``, ``drifted_features``, ``num_features``, ``num_drifted``,
            ``baseline_rows``, ``serving_rows``, ``undelivered_alerts`` (the webhook URL / topic
            of each alert that could not be delivered).
        report_html: output: the same page as one file, which the Vertex AI console renders:
            summary, features ranked by drift, baseline-vs-serving bar charts (inline SVG, no
            scripts or external assets).
        endpoint: the endpoint whose request logs are read when ``request_log_dir`` and
            ``request_log_table`` are empty (``deploy``'s log folder, or the table ``deploy_vertex`` named).
        request_log_dir: folder of the serving request logs ``requests-*.jsonl`` (the format in
            docs/architecture.md), readable from the step (on Vertex, a Cloud Storage FUSE path).
        baseline_split: the split of ``baseline`` compared with.
        thresholds: feature -> threshold, overriding the defaults.
        default_numeric_threshold: threshold of numeric features not in ``thresholds``.
        default_categorical_threshold: threshold of categorical features not in ``thresholds``.
        window_start: ISO-8601 time; requests logged in [start, end) are compared. Empty:
            unbounded; a time without offset is UTC.
        window_end: the window's end (exclusive), as ``window_start``.
        previous_window_start: a previous window of the same logs: when it or
            ``previous_window_end`` is set, the serving window is also compared with it (drift,
            beside the skew against the baseline).
        previous_window_end: the previous window's end (exclusive).
        alert_webhook: http(s) URL that receives the JSON alert as a POST when anything is flagged.
        alert_topic: Pub/Sub topic ``projects/<project>/topics/<topic>`` that receives the same
            alert as one message; any other form fails the step before it reads anything.
        request_log_table: instead of a folder: the endpoint's Vertex AI request-response log
            table ``bq://project.dataset.table`` (what ``deploy_vertex`` turns on and names in its
            endpoint's ``request_log_table``).
        bigquery_project: project that runs (and pays for) the log table's query; empty = the
            credentials' default.
        bigquery_location: BigQuery location of that query.
        bigquery_api_endpoint: BigQuery endpoint other than Google's (emulator, private endpoint).
        bigquery_read_api: how the rows are read, as extract's ``read_api``: "auto", "storage" or "rest".
        bigquery_storage_api_endpoint: Storage Read API host:port other than Google's.
        bigquery_staging_dataset: dataset where the query result is staged as a table, as extract's
            ``staging_dataset``.
        maximum_bytes_billed: cost guard of the log table's query (a dry run first); 0 = no limit.
        runner: empty: the histograms are computed in the step's process; "DirectRunner" or
            "DataflowRunner": as Beam combiners, with the same numbers.
        pipeline_options: any other Beam option; names that look like credentials are refused.
        project: Google Cloud project of the Dataflow job (DataflowRunner only).
        dataflow: Dataflow options as transform takes them (cauce.beam_pipelines.DATAFLOW_FIELDS).
        beam_image: the image Dataflow workers run unless ``dataflow`` names an sdk_container_image.

    Returns:
        The drift flag: any feature of either comparison above its threshold (the features:
        ``drift_report``'s ``drifted_features``). One bool output rather than named fields, so
        ``dsl.If(task.outputs["Output"] == True)`` branches under kfp.local too.
    """
    from cauce.beam_pipelines import runner_options, work_uri
    from cauce.components.monitor.executor import (
        BigQueryRead,
        copy_report_page,
        report_metadata,
        request_log_dir_of,
        run_monitor,
    )

    report = run_monitor(
        baseline_dir=baseline.path,
        baseline_split=baseline_split,
        # An optional input that is not connected arrives as None.
        request_log_dir=request_log_dir_of(
            request_log_dir, endpoint.metadata if endpoint is not None else None, request_log_table
        ),
        output_dir=drift_report.path,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        thresholds=thresholds,
        default_numeric_threshold=default_numeric_threshold,
        default_categorical_threshold=default_categorical_threshold,
        window_start=window_start,
        window_end=window_end,
        previous_window_start=previous_window_start,
        previous_window_end=previous_window_end,
        alert_webhook=alert_webhook,
        alert_topic=alert_topic,
        bigquery=BigQueryRead(
            project=bigquery_project,
            location=bigquery_location,
            api_endpoint=bigquery_api_endpoint,
            read_api=bigquery_read_api,
            storage_api_endpoint=bigquery_storage_api_endpoint,
            staging_dataset=bigquery_staging_dataset,
            maximum_bytes_billed=maximum_bytes_billed,
        ),
        runner=runner,
        pipeline_options=runner_options(
            runner, pipeline_options, job_name_prefix="cauce-monitor", project=project, dataflow=dataflow,
            beam_image=beam_image,
        ),
        work_uri=work_uri(runner, dataflow, "cauce-monitor"),
        baseline_uri=f"{baseline.uri}" if runner else "",
    )
    copy_report_page(drift_report.path, report_html.path)
    drift_report.metadata.update(report_metadata(report))
    return report["flagged"]["drift_detected"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def vertex_monitoring(
    vertex_endpoint: dsl.Input[VertexEndpoint],
    project: str,
    training_data_source: str,
    numeric_features: list,
    categorical_features: list,
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    target_field: str = "",
    thresholds: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
) -> str:
    """Create or update the Vertex AI Model Monitoring job of an endpoint with monitor's thresholds.

    Vertex measures numeric features by Jensen-Shannon divergence and categorical ones by
    L-infinity distance, as ``monitor`` does, so the managed job and the pipeline flag the
    same features. Returns the job's resource name.

    Args:
        vertex_endpoint: a ``google.VertexEndpoint`` (``deploy_vertex``'s output, GCPC's, or imported).
        project: Google Cloud project of the endpoint.
        training_data_source: the training data for skew, ``bq://project.dataset.table``.
        numeric_features: features measured by Jensen-Shannon divergence.
        categorical_features: features measured by L-infinity distance.
        vertex_region: Vertex AI region of the endpoint.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        target_field: the label column in the training data.
        thresholds: feature -> threshold; others take the defaults.
        default_numeric_threshold: threshold of numeric features not in ``thresholds``.
        default_categorical_threshold: threshold of categorical features not in ``thresholds``.
    """
    from cauce.artifact_types import vertex_resource_name
    from cauce.components.monitor.vertex import ensure_endpoint_monitoring

    return ensure_endpoint_monitoring(
        endpoint_resource_name=vertex_resource_name(vertex_endpoint),
        project=project,
        vertex_region=vertex_region,
        training_data_source=training_data_source,
        target_field=target_field,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        thresholds=thresholds,
        default_numeric_threshold=default_numeric_threshold,
        default_categorical_threshold=default_categorical_threshold,
        vertex_api_endpoint=vertex_api_endpoint,
    )
