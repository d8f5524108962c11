"""KFP definition of the retrain trigger (logic in executor.py)."""

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def retrain(
    training_spec: str,
    parameter_values: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    target: str = "local",
    project: str = "",
    vertex_region: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    vertex_api_endpoint: str = "",
    drift_report: dsl.Input[dsl.Artifact] = None,
    monitoring_run: str = "",
) -> str:
    """Start a run of the training pipeline.

    The monitoring pipeline decides when, in its own graph: it runs this step inside
    ``dsl.If`` on the monitor's drift flag and on ``retrain_on_drift``. ``training_spec`` is the compiled training pipeline: with ``target="google-cloud"``
    a file, ``gs://`` object or Artifact Registry template URL (submitted as a Vertex AI
    PipelineJob with ``parameter_values``); with ``"local"`` a local file for kfp.local
    (run detached). Returns the started run: the Vertex AI PipelineJob's resource name,
    or ``local:<pid>:<log file>``.

    Args:
        training_spec: the compiled training pipeline.
        parameter_values: the training run's parameter values.
        target: "local" (kfp.local) or "google-cloud" (Vertex AI Pipelines).
        project: Google Cloud project of the PipelineJob.
        vertex_region: Vertex AI region of the PipelineJob.
        pipeline_root: ``gs://`` folder of the PipelineJob's outputs.
        service_account: the PipelineJob's service account; empty = the project's default.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        drift_report: the monitor's ``drift_report``: passed to the training run as its
            ``trigger`` parameter (report URI, flagged features), which its lineage records.
        monitoring_run: the monitoring run's name (``dsl.PIPELINE_JOB_NAME_PLACEHOLDER``), in the trigger.
    """
    from cauce.components.retrain.executor import drift_trigger, start_training_run

    # An optional input that is not connected arrives as None.
    trigger = drift_trigger(drift_report.uri, dict(drift_report.metadata), monitoring_run) if drift_report is not None else None
    return start_training_run(
        training_spec, parameter_values, target, project, vertex_region, pipeline_root, service_account, vertex_api_endpoint,
        trigger=trigger,
    )  # fmt: skip
