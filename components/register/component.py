"""KFP definitions of the register step, one per target (logic in executor.py).

``register`` puts the model in MLflow's registry and emits a Model artifact;
``register_vertex`` uploads it to Vertex AI Model Registry and emits a
``google.VertexModel``, which GCPC ops and ``deploy_vertex`` consume. The training
pipeline picks one with ``dsl.If`` on its ``target`` parameter.
"""

from typing import NamedTuple

from kfp import dsl

from cauce.artifact_types import VertexModel
from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    model_name: str,
    registered_model: dsl.Output[dsl.Model],
    lineage: dsl.Output[dsl.Artifact],
    mlflow_tracking_uri: str = "",
    alias: str = "champion",
    dataset: dsl.Input[dsl.Dataset] = None,
    evaluation: dsl.Input[dsl.Artifact] = None,
    baseline_model: dsl.Input[dsl.Model] = None,
    pipeline_job_id: str = "",
    pipeline_job_name: str = "",
    code_version: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    trigger: dict = {},  # noqa: B006
    deployment: dict = {},  # noqa: B006
) -> NamedTuple("RegisterOutputs", [("model_uri", str), ("version", str)]):
    """Register the trained model in MLflow's model registry and point ``alias`` at it.

    Registering the same files again returns the existing version. ``registered_model``
    is the registered version: the same files as ``model``, with the registry's answer
    (model name, version, alias, ``model_uri``) in its metadata; ``deploy`` consumes it.

    Args:
        model: the train step's Model artifact.
        model_name: the registered model; the new version becomes its next.
        registered_model: output: the registered version (``metadata``: registry, model_name, version, alias, model_uri).
        mlflow_tracking_uri: MLflow registry; empty = ``sqlite:///$CAUCE_HOME/mlflow/mlflow.db``.
        alias: the alias the new version takes ("champion", "challenger" or "pending").
        lineage: output: the version's lineage record (``lineage.json``, see cauce.lineage).
        dataset: the extract Dataset the model was trained on (its source and fingerprints).
        evaluation: evaluate's ``evaluation`` (blessing, reasons, metrics per slice).
        baseline_model: the champion step's ``champion_model`` (the version compared with).
        pipeline_job_id: the pipeline run's id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``).
        pipeline_job_name: the pipeline run's name (``dsl.PIPELINE_JOB_NAME_PLACEHOLDER``).
        code_version: cauce's version, the spec's images and commit (compile-time values).
        trigger: why the run started when not by hand (a drift report from monitoring).
        deployment: how the version is to be served (endpoint_name, port, canary_traffic_percentage):
            what `cauce models approve` and `rollback` deploy with.

    Returns:
        ``model_uri`` (``models:/<name>/<version>``) and ``version``.
    """
    from collections import namedtuple

    from cauce.components.register.executor import run_register_mlflow

    result = run_register_mlflow(
        model.path, model_name, mlflow_tracking_uri, alias=alias, lineage_dir=lineage.path,
        dataset={"uri": dataset.path, "metadata": dict(dataset.metadata)} if dataset else None,
        evaluation_dir=evaluation.path if evaluation else "",
        champion=dict(baseline_model.metadata) if baseline_model else None,
        run={"pipeline_job_id": pipeline_job_id, "pipeline_job_name": pipeline_job_name},
        code=code_version, trigger=trigger, deployment=deployment,
    )  # fmt: skip
    registered_model.uri = model.uri  # the registry holds a copy of exactly these files (content hash)
    registered_model.metadata.update(result)
    return namedtuple("RegisterOutputs", ["model_uri", "version"])(result["model_uri"], result["version"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_vertex(
    model: dsl.Input[dsl.Model],
    model_name: str,
    project: str,
    vertex_model: dsl.Output[VertexModel],
    lineage: dsl.Output[dsl.Artifact],
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    serving_image: str = "",
    alias: str = "champion",
    dataset: dsl.Input[dsl.Dataset] = None,
    evaluation: dsl.Input[dsl.Artifact] = None,
    baseline_model: dsl.Input[dsl.Model] = None,
    pipeline_job_id: str = "",
    pipeline_job_name: str = "",
    code_version: dict = {},  # noqa: B006 - KFP takes parameter defaults from the signature
    trigger: dict = {},  # noqa: B006
    deployment: dict = {},  # noqa: B006
) -> NamedTuple("RegisterVertexOutputs", [("model_uri", str), ("version", str)]):
    """Upload the trained model to Vertex AI Model Registry as the next version of ``model_name``.

    The version becomes the default one and takes ``alias``; it serves with
    ``serving_image`` under the Vertex custom-container contract. Registering the same
    files again (a retried step) reuses the version. ``vertex_model`` is that version as
    a ``google.VertexModel`` artifact, which ``deploy_vertex`` and GCPC ops
    (``ModelDeployOp``, ``ModelBatchPredictOp``) consume.

    Args:
        model: the train step's Model artifact (a ``gs://`` folder on Vertex).
        model_name: display name of the Vertex model; a new model is created if none has it.
        project: Google Cloud project of the registry.
        vertex_model: output: the registered version (``uri``: its REST URL; ``metadata["resourceName"]``:
            ``projects/.../models/<id>@<version>``).
        vertex_region: Vertex AI region of the registry.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        serving_image: the image that serves the model; empty = cauce's serving image.
        alias: the version alias the new version takes ("champion", "challenger" or "pending").
        lineage: output: the version's lineage record (``lineage.json``), referenced from
            the version's description; its core is on the version's labels.
        dataset: the extract Dataset the model was trained on.
        evaluation: evaluate's ``evaluation``.
        baseline_model: the champion step's ``champion_model``.
        pipeline_job_id: the pipeline run's id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``).
        pipeline_job_name: the pipeline run's name (``dsl.PIPELINE_JOB_NAME_PLACEHOLDER``).
        code_version: cauce's version, the spec's images and commit.
        trigger: why the run started when not by hand.
        deployment: how the version is to be served (endpoint_name, machine_type, canary_traffic_percentage).

    Returns:
        ``model_uri`` (``<resource>@<version>``) and ``version`` (the version id).
    """
    from collections import namedtuple

    from cauce.components.register.executor import run_register_vertex

    result = run_register_vertex(
        model_dir=model.path,
        model_uri=model.uri,
        model_name=model_name,
        project=project,
        vertex_region=vertex_region,
        vertex_api_endpoint=vertex_api_endpoint,
        serving_image=serving_image,
        alias=alias,
        lineage_dir=lineage.path,
        lineage_uri=lineage.uri,
        dataset={"uri": dataset.uri, "metadata": dict(dataset.metadata)} if dataset else None,
        evaluation_dir=evaluation.path if evaluation else "",
        evaluation_uri=evaluation.uri if evaluation else "",
        champion=dict(baseline_model.metadata) if baseline_model else None,
        run={"pipeline_job_id": pipeline_job_id, "pipeline_job_name": pipeline_job_name},
        code=code_version,
        trigger=trigger,
        deployment=deployment,
    )
    vertex_model.uri = result["vertex_uri"]
    vertex_model.metadata.update({"resourceName": result["model_uri"], "version": result["version"], "alias": alias})
    return namedtuple("RegisterVertexOutputs", ["model_uri", "version"])(result["model_uri"], result["version"])
