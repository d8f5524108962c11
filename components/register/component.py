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
    mlflow_tracking_uri: str = "",
    alias: str = "champion",
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
        alias: the alias the new version takes ("champion" or "challenger").

    Returns:
        ``model_uri`` (``models:/<name>/<version>``) and ``version``.
    """
    from collections import namedtuple

    from cauce.components.register.executor import register_mlflow

    result = register_mlflow(model.path, model_name, mlflow_tracking_uri, alias=alias)
    registered_model.uri = model.uri  # the registry holds a copy of exactly these files (content hash)
    registered_model.metadata.update(result)
    return namedtuple("RegisterOutputs", ["model_uri", "version"])(result["model_uri"], result["version"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_vertex(
    model: dsl.Input[dsl.Model],
    model_name: str,
    project: str,
    vertex_model: dsl.Output[VertexModel],
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    serving_image: str = "",
    alias: str = "champion",
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
        alias: the version alias the new version takes ("champion" or "challenger").

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
    )
    vertex_model.uri = result["vertex_uri"]
    vertex_model.metadata.update({"resourceName": result["model_uri"], "version": result["version"], "alias": alias})
    return namedtuple("RegisterVertexOutputs", ["model_uri", "version"])(result["model_uri"], result["version"])
