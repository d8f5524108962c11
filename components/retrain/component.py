"""KFP definition of the retrain trigger (logic in executor.py)."""

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def retrain(
    drift_detected: bool,
    retrain_on_drift: bool,
    training_spec: str = "",
    parameter_values: dict = {},
    project: str = "",
    location: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    api_endpoint: str = "",
) -> str:
    """Start the training pipeline when drift was detected and ``retrain_on_drift`` is set.

    ``training_spec`` is the compiled training pipeline: a file, ``gs://`` object or
    Artifact Registry template URL on Vertex (submitted as a PipelineJob with
    ``parameter_values``); a local file for kfp.local (run detached). Returns the
    started run, or "" when nothing was started.
    """
    from cauce.components.retrain.executor import start_training_run

    return start_training_run(
        drift_detected, retrain_on_drift, training_spec, parameter_values,
        project, location, pipeline_root, service_account, api_endpoint,
    )
