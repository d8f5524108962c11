"""KFP definition of the register step: a thin shell over ``executor.run_register``."""

from typing import NamedTuple

from kfp import dsl

from cauce.artifact_types import VertexModel
from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    model_name: str,
    registered_model: dsl.Output[dsl.Artifact],
    vertex_model: dsl.Output[VertexModel],
    mlflow_tracking_uri: str = "",
    project: str = "",
    location: str = "us-central1",
    api_endpoint: str = "",
    serving_image: str = "",
    alias: str = "champion",
) -> NamedTuple("RegisterOutputs", [("model_uri", str), ("version", str)]):
    """Register the trained model: in Vertex AI Model Registry when ``project`` is set,
    else in MLflow (``mlflow_tracking_uri``, default ``sqlite:///$CAUCE_HOME/mlflow/mlflow.db``).

    ``registered_model.metadata`` holds the registry's answer (resource name or model
    name, version, alias); ``model_uri`` is ``<resource>@<version>`` on Vertex and
    ``models:/<name>/<version>`` in MLflow. ``vertex_model`` is the registered Vertex
    model version as a ``google.VertexModel`` artifact, which GCPC ops consume
    (in MLflow mode it records the MLflow model URI instead, and GCPC ops do not apply).
    """
    from collections import namedtuple

    from cauce.components.register.executor import run_register

    result = run_register(
        model_dir=model.path,
        model_uri=model.uri,
        model_name=model_name,
        mlflow_tracking_uri=mlflow_tracking_uri,
        project=project,
        location=location,
        api_endpoint=api_endpoint,
        serving_image=serving_image,
        alias=alias,
    )
    registered_model.metadata.update(result)
    if project:
        from cauce.artifact_types import vertex_resource_uri

        vertex_model.uri = vertex_resource_uri(result["resource_name"], location)
        vertex_model.metadata["resourceName"] = result["model_uri"]  # <resource>@<version>
    else:
        vertex_model.metadata["mlflowModelUri"] = result["model_uri"]
    register_outputs = namedtuple("RegisterOutputs", ["model_uri", "version"])
    return register_outputs(result["model_uri"], result["version"])
