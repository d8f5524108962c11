"""KFP definitions of the deploy step, one per target (local logic in executor.py,
Vertex in vertex.py).

``deploy`` serves a registered Model with the local serving process and emits an
endpoint artifact carrying its URLs; ``deploy_vertex`` deploys a ``google.VertexModel`` to a
Vertex AI endpoint and emits a ``google.VertexEndpoint``. Both smoke-test the model
with real rows first and go through a canary when asked to.
"""

from typing import NamedTuple

from kfp import dsl

from cauce.artifact_types import VertexEndpoint, VertexModel
from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    registered_model: dsl.Input[dsl.Model],
    smoke_dataset: dsl.Input[dsl.Dataset],
    endpoint_name: str,
    endpoint: dsl.Output[dsl.Artifact],
    canary_traffic_percentage: int = 100,
    port: int = 8080,
    request_log_dir: str = "",
    smoke_split: str = "eval",
    smoke_rows: int = 5,
    set_champion: bool = False,
    mlflow_tracking_uri: str = "",
) -> NamedTuple("DeployOutputs", [("endpoint_url", str), ("request_log_dir", str)]):
    """Serve the registered model with the local serving process on 127.0.0.1:``port``, smoke-tested.

    The serving process is the serving image's program; it logs requests to
    ``request_log_dir`` for monitoring. The first deploy starts it; later ones load the
    new version into it next to the serving one, smoke-test it on its own route before
    it gets any traffic, give it ``canary_traffic_percentage`` (100: all of it),
    smoke-test the endpoint, then promote it and undeploy the old version, or roll back.
    A rollback fails the step, its message saying "rolled back". With ``set_champion``
    the registry's ``champion`` alias moves to the version only once it serves (the
    training pipeline registers it as ``pending`` first), so a failed deploy never
    leaves the alias on a version nothing serves.

    Args:
        registered_model: the register step's ``registered_model`` (or any cauce Model).
        smoke_dataset: a cauce Dataset whose rows smoke-test the model.
        endpoint_name: the local endpoint (letters, digits, '-', '_').
        endpoint: output: the endpoint (``metadata``: predict_url, health_url, request_log_dir,
            deployed_model_id, traffic_split, rollout).
        canary_traffic_percentage: < 100: the new version first takes this share, then is promoted or rolled back.
        port: loopback port of the serving process.
        request_log_dir: where the serving process logs requests; empty = under ``$CAUCE_HOME/serving``.
        smoke_split: the split of ``smoke_dataset`` the smoke rows come from.
        smoke_rows: how many rows the smoke test sends.
        set_champion: once the version serves, point the MLflow registry's ``champion`` alias at it
            (``registered_model``'s model_name and version) and drop ``pending``.
        mlflow_tracking_uri: MLflow registry of ``set_champion``; empty = ``sqlite:///$CAUCE_HOME/mlflow/mlflow.db``.

    Returns:
        ``endpoint_url`` (the predict URL) and ``request_log_dir``.
    """
    from collections import namedtuple

    from cauce.components.deploy.executor import endpoint_metadata, run_deploy_local

    result = run_deploy_local(
        model_dir=registered_model.path,
        smoke_dataset_dir=smoke_dataset.path,
        endpoint_name=endpoint_name,
        port=port,
        request_log_dir=request_log_dir,
        canary_traffic_percentage=canary_traffic_percentage,
        smoke_split=smoke_split,
        smoke_rows=smoke_rows,
        set_champion=set_champion,
        registered=dict(registered_model.metadata),
        mlflow_tracking_uri=mlflow_tracking_uri,
    )
    endpoint.metadata.update(endpoint_metadata(result))
    outputs = namedtuple("DeployOutputs", ["endpoint_url", "request_log_dir"])
    return outputs(result["predict_url"], result["request_log_dir"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_vertex(
    vertex_model: dsl.Input[VertexModel],
    smoke_dataset: dsl.Input[dsl.Dataset],
    endpoint_name: str,
    project: str,
    vertex_endpoint: dsl.Output[VertexEndpoint],
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    machine_type: str = "n1-standard-2",
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_traffic_percentage: int = 100,
    smoke_split: str = "eval",
    smoke_rows: int = 5,
    request_log_table: str = "",
    request_log_sampling_rate: float = 1.0,
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    set_champion: bool = False,
) -> str:
    """Deploy a Vertex AI model version to the endpoint named ``endpoint_name``, smoke-tested.

    The endpoint is created or reused. With ``canary_traffic_percentage`` < 100 the new
    version first takes that share, is smoke-tested through the endpoint, then promoted
    to 100 % or rolled back (the previous version keeps serving); a rollback fails the
    step, its message saying "rolled back". A version replacing a serving one is
    smoke-tested at a small share first, the serving one keeping the rest. With
    ``set_champion`` the model's ``champion`` version alias moves to the version only
    once it serves. Returns the endpoint's predict URL.

    Args:
        vertex_model: a ``google.VertexModel``: ``register_vertex``'s output or GCPC's
            (``ModelUploadOp``, ``ModelGetOp``), whose files are a cauce model bundle.
        smoke_dataset: a cauce Dataset whose rows (the model's input features) smoke-test it.
        endpoint_name: display name of the Vertex endpoint.
        project: Google Cloud project of the model and endpoint.
        vertex_endpoint: output: the endpoint (``uri``: its REST URL; ``metadata``: resourceName,
            deployed_model_id, endpoint_url, request_log_table, request_log_sampling_rate), which GCPC
            ops, ``vertex_monitoring`` and ``monitor`` (the request-log table) consume.
        vertex_region: Vertex AI region.
        vertex_api_endpoint: Vertex AI API endpoint other than the region's.
        machine_type: machine type of the deployment.
        min_replicas: minimum replica count.
        max_replicas: maximum replica count.
        canary_traffic_percentage: < 100: the new version first takes this share.
        smoke_split: the split of ``smoke_dataset`` the smoke rows come from.
        smoke_rows: how many rows the smoke test sends.
        request_log_table: BigQuery table (bq://project.dataset.table) of the endpoint's request-response
            logging, created with the schema Vertex writes if missing; empty =
            bq://<project>.cauce_request_logs.<endpoint_name>.
        request_log_sampling_rate: fraction of requests logged, in [0, 1]; 0 turns logging off.
        bigquery_location: location of the request-log dataset when it is created.
        bigquery_api_endpoint: BigQuery endpoint other than Google's (an emulator, a private endpoint).
        set_champion: once the version serves, give it the ``champion`` version alias (dropping ``pending``).
    """
    from cauce.artifact_types import vertex_resource_name
    from cauce.components.deploy.executor import endpoint_metadata
    from cauce.components.deploy.vertex import run_deploy_vertex

    result = run_deploy_vertex(
        model_resource_name=vertex_resource_name(vertex_model),
        smoke_dataset_dir=smoke_dataset.path,
        endpoint_name=endpoint_name,
        project=project,
        vertex_region=vertex_region,
        vertex_api_endpoint=vertex_api_endpoint,
        machine_type=machine_type,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        canary_traffic_percentage=canary_traffic_percentage,
        smoke_split=smoke_split,
        smoke_rows=smoke_rows,
        request_log_table=request_log_table,
        request_log_sampling_rate=request_log_sampling_rate,
        bigquery_location=bigquery_location,
        bigquery_api_endpoint=bigquery_api_endpoint,
        set_champion=set_champion,
    )
    vertex_endpoint.uri = result["vertex_uri"]
    vertex_endpoint.metadata.update({"resourceName": result["endpoint_resource_name"], **endpoint_metadata(result)})
    return result["endpoint_url"]
