"""Artifact types for Google Cloud resources, in one module (as GCPC keeps them).

They carry the same schema titles as google_cloud_pipeline_components'
``google.VertexModel`` / ``google.VertexEndpoint``, so a cauce output plugs
straight into GCPC ops (``ModelDeployOp``, ``ModelBatchPredictOp``, ...) without
cauce depending on GCPC at run time.
"""

from kfp import dsl


class VertexModel(dsl.Artifact):
    """A Vertex AI Model (version): ``uri`` is its REST URL, ``metadata["resourceName"]``
    ``projects/{project}/locations/{location}/models/{model}`` (with ``@version``)."""

    schema_title = "google.VertexModel"
    schema_version = "0.0.1"


class VertexEndpoint(dsl.Artifact):
    """A Vertex AI Endpoint: ``metadata["resourceName"]`` ``projects/.../endpoints/{id}``."""

    schema_title = "google.VertexEndpoint"
    schema_version = "0.0.1"


def vertex_resource_uri(resource_name: str, location: str) -> str:
    """The REST URL GCPC ops expect in a Vertex artifact's ``uri``."""
    return f"https://{location}-aiplatform.googleapis.com/v1/{resource_name}"
