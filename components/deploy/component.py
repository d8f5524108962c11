"""KFP definition of the deploy step (local logic in executor.py, Vertex in vertex.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(
    model: dsl.Input[dsl.Model],
    smoke_dataset: dsl.Input[dsl.Dataset],
    endpoint_name: str,
    endpoint: dsl.Output[dsl.Artifact],
    registered_model_uri: str = "",
    project: str = "",
    location: str = "us-central1",
    api_endpoint: str = "",
    machine_type: str = "n1-standard-2",
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_traffic_percentage: int = 100,
    port: int = 8080,
    request_log_dir: str = "",
    smoke_split: str = "eval",
    smoke_rows: int = 5,
) -> NamedTuple("DeployOutputs", [("endpoint_url", str), ("request_log_dir", str)]):
    """Deploy the model and smoke-test it with real rows before reporting success.

    With ``project`` set: deploys ``registered_model_uri`` (a Vertex model version,
    from register) to a Vertex endpoint named ``endpoint_name`` (created or reused);
    with ``canary_traffic_percentage`` < 100 the new version first takes that share,
    is smoke-tested, then promoted to 100 % or rolled back (the previous version keeps
    serving).
    Otherwise the same flow against the local serving process (the serving image's
    program) on 127.0.0.1:``port``, logging requests to ``request_log_dir`` for
    monitoring: the first deploy starts it; later ones load the new version into it
    next to the serving one, smoke-test it on its own route before it gets any
    traffic, give it ``canary_traffic_percentage`` (100: all of it), smoke-test the
    endpoint, then promote it and undeploy the old version, or roll back.
    A rollback fails the step on both paths, its message saying "rolled back"; the
    endpoint's ``deployed_model_id`` (and locally ``traffic_split`` and ``rollout``)
    are in the ``endpoint`` artifact's metadata.
    """
    from collections import namedtuple

    from cauce.components.deploy.executor import deploy_local, smoke_instances_from

    instances = smoke_instances_from(smoke_dataset.path, smoke_split, model.path, smoke_rows)
    if project:
        from cauce.components.deploy.vertex import deploy_vertex

        result = deploy_vertex(
            model_resource_name=registered_model_uri,
            endpoint_display_name=endpoint_name,
            project=project,
            location=location,
            machine_type=machine_type,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            smoke_instances=instances,
            api_endpoint=api_endpoint,
            traffic_percentage=canary_traffic_percentage,
            promote=True,
        )
        url, log_dir = result["endpoint_url"], ""
    else:
        result = deploy_local(
            model_dir=model.path,
            endpoint_name=endpoint_name,
            port=port,
            request_log_dir=request_log_dir,
            smoke_instances=instances,
            traffic_percentage=canary_traffic_percentage,
            promote=True,
        )
        url, log_dir = result["predict_url"], result["request_log_dir"]
    endpoint.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float, dict))})
    return namedtuple("DeployOutputs", ["endpoint_url", "request_log_dir"])(url, log_dir)
