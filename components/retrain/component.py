"""KFP definition of the retrain trigger (logic in executor.py)."""

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def retrain(
    drift_detected: bool,
    retrain_on_drift: bool,
    training_spec: str = "",
    parameter_values: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    target: str = "local",
    project: str = "",
    vertex_region: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    vertex_api_endpoint: str = "",
) -> str:
    """Start the training pipeline when drift was detected and ``retrain_on_drift`` is set.

    ``training_spec`` is the compiled training pipeline: with ``target="google-cloud"``
    a file, ``gs://`` object or Artifact Registry template URL (submitted as a Vertex AI
    PipelineJob with ``parameter_values``); with ``"local"`` a local file for kfp.local
    (run detached). Returns the started run, or "" when nothing was started.

    Args:
        drift_detected: the monitor's verdict.
        retrain_on_drift: start a run only when this is set.
        training_spec: the compiled training pipeline.
        parameter_values: the training run's parameter values.
        target: "local" (kfp.local) or "google-cloud" (Vertex AI Pipelines).
        project: Google Cloud project of the PipelineJob.
        vertex_region: Vertex AI region of the PipelineJob.
        pipeline_root: ``gs://`` folder of the PipelineJob's outputs.
        service_account: the PipelineJob's service account; empty = the project's default.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
    """
    from cauce.components.retrain.executor import start_training_run

    return start_training_run(
        drift_detected, retrain_on_drift, training_spec, parameter_values,
        target, project, vertex_region, pipeline_root, service_account, vertex_api_endpoint,
    )
