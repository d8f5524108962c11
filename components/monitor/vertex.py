"""Create or update the Vertex AI Model Monitoring job of an endpoint with the same
per-feature thresholds our monitor uses (Vertex measures numeric features by
Jensen-Shannon divergence and categorical ones by L-infinity distance, as we do),
so the managed job and the pipeline's own monitor flag the same things.
"""

from __future__ import annotations

from typing import Any

from cauce.artifacts import CauceError


def ensure_monitoring_job(
    endpoint_resource_name: str,
    display_name: str,
    project: str,
    location: str,
    training_data_source: str,
    target_field: str,
    numeric_features: list[str],
    categorical_features: list[str],
    thresholds: dict[str, float] | None = None,
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
    monitor_interval_hours: int = 1,
    sample_rate: float = 1.0,
    alert_emails: list[str] | None = None,
    api_endpoint: str = "",
    credentials: Any = None,
) -> dict[str, str]:
    """The job's resource name and whether it was ``created`` or ``updated``.

    ``training_data_source`` is the training data Vertex compares against for skew:
    ``bq://project.dataset.table`` (the extract step's source table).
    """
    from cauce.components.register.executor import check_display_name, init_vertex, newest_resource

    check_display_name(display_name, "display_name")
    if not training_data_source.startswith("bq://"):
        raise CauceError(
            f"training_data_source {training_data_source!r} must be a BigQuery table, bq://project.dataset.table"
        )
    if not 0 < sample_rate <= 1:
        raise CauceError(f"sample_rate must be in (0, 1], got {sample_rate}")
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(numeric_features) - set(categorical_features))
    if unknown:
        raise CauceError(f"thresholds name feature(s) {unknown} that are not monitored")
    per_feature = {name: float(thresholds.get(name, default_numeric_threshold)) for name in numeric_features}
    per_feature |= {name: float(thresholds.get(name, default_categorical_threshold)) for name in categorical_features}

    aiplatform = init_vertex(project, location, api_endpoint, credentials)
    from google.cloud.aiplatform import model_monitoring

    objective = model_monitoring.ObjectiveConfig(
        skew_detection_config=model_monitoring.SkewDetectionConfig(
            data_source=training_data_source, skew_thresholds=per_feature, target_field=target_field
        ),
        drift_detection_config=model_monitoring.DriftDetectionConfig(drift_thresholds=per_feature),
    )
    settings = dict(
        objective_configs=objective,
        logging_sampling_strategy=model_monitoring.RandomSampleConfig(sample_rate=sample_rate),
        schedule_config=model_monitoring.ScheduleConfig(monitor_interval=monitor_interval_hours),
        alert_config=model_monitoring.EmailAlertConfig(user_emails=list(alert_emails or [])),
    )
    existing = newest_resource(
        aiplatform.ModelDeploymentMonitoringJob.list(filter=f'display_name="{display_name}"')
    )
    if existing is not None:
        existing.update(**settings)
        return {"resource_name": existing.resource_name, "action": "updated"}
    job = aiplatform.ModelDeploymentMonitoringJob.create(
        endpoint=endpoint_resource_name, display_name=display_name, project=project, location=location, **settings
    )
    return {"resource_name": job.resource_name, "action": "created"}


def ensure_endpoint_monitoring(
    endpoint_resource_name: str,
    project: str,
    vertex_region: str,
    training_data_source: str,
    target_field: str,
    numeric_features: list[str],
    categorical_features: list[str],
    thresholds: dict[str, float] | None = None,
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
    vertex_api_endpoint: str = "",
) -> str:
    """What the ``vertex_monitoring`` component does: :func:`ensure_monitoring_job` under
    the display name ``cauce-<endpoint id>-monitoring``; returns the job's resource name."""
    job = ensure_monitoring_job(
        endpoint_resource_name=endpoint_resource_name,
        display_name=f"cauce-{endpoint_resource_name.rsplit('/', 1)[-1]}-monitoring",
        project=project,
        location=vertex_region,
        training_data_source=training_data_source,
        target_field=target_field,
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        thresholds=thresholds,
        default_numeric_threshold=default_numeric_threshold,
        default_categorical_threshold=default_categorical_threshold,
        api_endpoint=vertex_api_endpoint,
    )
    return job["resource_name"]
