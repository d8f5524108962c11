"""Every artifact type a cauce component takes or emits that KFP does not define, in one module
(as GCPC keeps its own in ``google_cloud_pipeline_components.types.artifact_types``).

They are Google Cloud resources, with the schema titles GCPC uses (``google.VertexModel``,
``google.VertexEndpoint``, ``google.BQTable``): a cauce output of one of these plugs
straight into GCPC ops (``ModelDeployOp``, ``ModelBatchPredictOp``, ...) and a GCPC output
into cauce, without cauce depending on GCPC at run time. Their ``uri`` is the resource's
REST URL and ``metadata`` holds what GCPC puts there (``resourceName``, or
``projectId``/``datasetId``/``tableId``).

cauce's own layouts (a fitted transform, statistics, a schema, anomalies, a local
endpoint) stay ``system.Artifact``: KFP 2.17 refuses any schema title outside the
``system`` and ``google`` namespaces at definition time, so they cannot have titles of
their own; their output names and ``metadata["format"]`` say what they hold.

Components import these at module level: KFP then writes the import into the step's
source, and the same class is rebuilt inside the running step.
"""

from kfp import dsl

from cauce.artifacts import CauceError

# -- Google Cloud resources (GCPC's schema titles) --------------------------------------------


class VertexModel(dsl.Artifact):
    """A Vertex AI Model version: ``uri`` is its REST URL, ``metadata["resourceName"]``
    ``projects/{project}/locations/{region}/models/{model}@{version}``."""

    schema_title = "google.VertexModel"
    schema_version = "0.0.1"


class VertexEndpoint(dsl.Artifact):
    """A Vertex AI Endpoint: ``uri`` is its REST URL, ``metadata["resourceName"]``
    ``projects/{project}/locations/{region}/endpoints/{id}``."""

    schema_title = "google.VertexEndpoint"
    schema_version = "0.0.1"


class BQTable(dsl.Artifact):
    """A BigQuery table: ``uri`` is its REST URL, ``metadata`` ``projectId``, ``datasetId``
    and ``tableId``."""

    schema_title = "google.BQTable"
    schema_version = "0.0.1"


# -- URIs -----------------------------------------------------------------------------------


def vertex_resource_uri(resource_name: str, region: str) -> str:
    """The REST URL GCPC ops expect in a Vertex artifact's ``uri``."""
    return f"https://{region}-aiplatform.googleapis.com/v1/{resource_name}"


def vertex_resource_name(artifact: dsl.Artifact) -> str:
    """``metadata["resourceName"]`` of a ``google.Vertex*`` artifact, or a clear error."""
    name = artifact.metadata.get("resourceName", "")
    if not name:
        raise CauceError(
            f"the {artifact.schema_title} artifact at {artifact.uri!r} has no resourceName in its metadata "
            f"(got {dict(artifact.metadata)}): expected a Vertex AI resource as cauce or GCPC ops emit it"
        )
    return name


def bigquery_table_uri(project: str, dataset: str, table: str) -> str:
    """The REST URL GCPC ops put in a ``google.BQTable``'s ``uri``."""
    return f"https://www.googleapis.com/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}"


def bigquery_table_id(table: dsl.Artifact) -> str:
    """``project.dataset.table`` of a ``google.BQTable`` artifact, from its metadata."""
    parts = [table.metadata.get(key, "") for key in ("projectId", "datasetId", "tableId")]
    if not all(parts):
        raise CauceError(
            f"the google.BQTable artifact at {table.uri!r} has no projectId/datasetId/tableId metadata "
            f"(got {dict(table.metadata)}): expected a BigQuery table artifact as GCPC ops emit it"
        )
    return ".".join(parts)
