"""KFP definition of the monitor step: serving requests compared with the training baseline.

A thin shell: the logic lives in ``executor.py`` (plain Python, tested without KFP).
"""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def monitor(
    baseline: dsl.Input[dsl.Dataset],
    request_log_dir: str,
    numeric_features: list,
    categorical_features: list,
    drift_report: dsl.Output[dsl.Artifact],
    report_html: dsl.Output[dsl.HTML],
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
    project: str = "",
    location: str = "us-central1",
    endpoint_resource_name: str = "",
    training_data_source: str = "",
    target_field: str = "",
    api_endpoint: str = "",
) -> NamedTuple("MonitorOutputs", [("drift_detected", bool), ("drifted_features", list)]):
    """Drift/skew of serving requests against a baseline split, measured as TFDV does.

    Numeric features: approximate Jensen-Shannon divergence; categorical features:
    L-infinity distance. Skew compares the serving window with the baseline; with a
    previous window, drift compares the two windows too; ``drift_detected`` and
    ``drifted_features`` cover both. With ``alert_webhook`` a flagged run POSTs a JSON
    alert there; with ``alert_topic`` (``projects/<project>/topics/<topic>``) it publishes
    the same JSON as one Pub/Sub message with filterable attributes (``kind``,
    ``features``, ``endpoint``, ``model``). Alerts go out after the report is written; a
    failed delivery is logged and listed in the ``undelivered_alerts`` metadata, and does
    not fail the step. With ``project`` and ``endpoint_resource_name`` it also creates or
    updates the endpoint's Vertex AI Model Monitoring job with the same thresholds
    (``training_data_source``: ``bq://project.dataset.table``). ``drift_report`` holds report.json and report.html; ``report_html``
    is the same page as a single file, which the Vertex AI console renders.
    """
    import os
    from typing import NamedTuple

    from cauce.artifacts import atomic_file
    from cauce.components.monitor.executor import REPORT_HTML, run_monitor

    report = run_monitor(
        baseline_dir=baseline.path,
        baseline_split=baseline_split,
        request_log_dir=request_log_dir,
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
    )
    if project and endpoint_resource_name:
        from cauce.components.monitor.vertex import ensure_monitoring_job

        vertex_job = ensure_monitoring_job(
            endpoint_resource_name=endpoint_resource_name,
            display_name=f"cauce-{endpoint_resource_name.rsplit('/', 1)[-1]}-monitoring",
            project=project,
            location=location,
            training_data_source=training_data_source,
            target_field=target_field,
            numeric_features=numeric_features,
            categorical_features=categorical_features,
            thresholds=thresholds,
            default_numeric_threshold=default_numeric_threshold,
            default_categorical_threshold=default_categorical_threshold,
            api_endpoint=api_endpoint,
        )
        drift_report.metadata["vertex_monitoring_job"] = vertex_job["resource_name"]
    with open(os.path.join(drift_report.path, REPORT_HTML)) as page, atomic_file(report_html.path) as copy:
        copy.write(page.read())
    drift_report.metadata.update(
        {
            "drift_detected": report["flagged"]["drift_detected"],
            "drifted_features": report["flagged"]["features"],
            "skew_detected": report["drift_detected"],
            "window_drift_detected": report.get("window_drift", {}).get("drift_detected", False),
            "num_features": report["num_features"],
            "num_drifted": report["num_drifted"],
            "baseline_rows": report["baseline_rows"],
            "serving_rows": report["current_rows"],
            "undelivered_alerts": [
                delivery["target"] for delivery in report.get("alerts", []) if not delivery["delivered"]
            ],
        }
    )

    class MonitorOutputs(NamedTuple):
        drift_detected: bool
        drifted_features: list

    return MonitorOutputs(report["flagged"]["drift_detected"], report["flagged"]["features"])
