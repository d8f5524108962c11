"""Deploy a registered Vertex AI model version to an endpoint and smoke-test it.

Plain Python over the real ``google.cloud.aiplatform`` SDK (imported inside the
function: it costs about 1.5 s). The SDK is initialised by the register executor's
``init_vertex``, so both steps point at the same service the same way.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from cauce.artifacts import CauceError
from cauce.components.register.executor import check_display_name, init_vertex, newest_resource

log = logging.getLogger(__name__)

# A smoke test answers in well under a minute; without a timeout the SDK would wait forever.
SMOKE_TIMEOUT_S = 120.0
# Vertex routes a prediction only by the endpoint's traffic split (no request can name a
# deployed model), so a new version replacing a serving one is smoke-tested at this share,
# or at the canary's, while the serving version keeps the rest; the answers say which
# deployment served them.
SMOKE_SHARE = 10
# Smoke requests are sent until the new deployment has answered one; this many make
# missing it by chance less likely than 1e-9 at its share.
SMOKE_MISS_PROBABILITY = 1e-9


def _check_deploy_arguments(
    model_resource_name: str,
    endpoint_display_name: str,
    min_replicas: int,
    max_replicas: int,
    traffic_percentage: int,
    smoke_instances: list[Any] | None,
) -> None:
    if not model_resource_name or "/models/" not in model_resource_name:
        raise CauceError(
            f"model_resource_name {model_resource_name!r} is not a Vertex AI model: expected "
            "projects/<p>/locations/<l>/models/<id>[@<version>], the register step's model_uri"
        )
    check_display_name(endpoint_display_name, "endpoint_display_name")
    if not 1 <= min_replicas <= max_replicas:
        raise CauceError(
            f"replicas must satisfy 1 <= min_replicas <= max_replicas, got min_replicas={min_replicas}, "
            f"max_replicas={max_replicas}"
        )
    if not 0 < traffic_percentage <= 100:
        raise CauceError(f"traffic_percentage must be in 1..100, got {traffic_percentage}")
    if smoke_instances is not None and (not isinstance(smoke_instances, list) or not smoke_instances):
        raise CauceError(
            "smoke_instances must be a non-empty list of instances, or None to skip the smoke test"
        )


def deploy_vertex(
    model_resource_name: str,
    endpoint_display_name: str,
    project: str,
    location: str,
    machine_type: str = "n1-standard-2",
    min_replicas: int = 1,
    max_replicas: int = 1,
    traffic_percentage: int = 100,
    smoke_instances: list[Any] | None = None,
    api_endpoint: str = "",
    credentials: Any = None,
    promote: bool = False,
    request_log_table: str = "",
    request_log_sampling_rate: float = 0.0,
) -> dict[str, Any]:
    """Deploy ``model_resource_name`` (``.../models/<id>@<version>``) behind the endpoint
    named ``endpoint_display_name``, creating the endpoint if none has that name.

    The new deployment gets ``traffic_percentage`` of the traffic. If that same model
    version already serves exactly that share, it is reused instead of deployed twice
    (a retried step costs nothing).

    The serving version keeps serving until the new one has passed its checks. Vertex
    health-checks the new container before the deploy operation completes; with
    ``smoke_instances`` the new version then serves a small share (``SMOKE_SHARE`` %,
    or the canary's share) next to the serving one, and predictions go through the
    endpoint until the new deployment has answered one prediction per instance (the
    answers name the deployment that served them). Only then does it take all the
    traffic and are the endpoint's other deployments (now at 0 %) undeployed. If the
    deploy operation, the smoke test or the promotion fails, every deployment this
    call made is undeployed and the previous traffic split restored, and
    :class:`CauceError` says "rolled back"; the endpoint's logging settings are
    changed only after a success. (An endpoint that serves nothing yet gets the new
    version at 100 % and, if it fails, serves nothing again.)

    Canary: with ``traffic_percentage`` < 100 the new version keeps that share after its
    smoke test; with ``promote`` too it is then promoted to 100 % and the others are
    undeployed. A deployment that cannot be undeployed after a promotion (it has no
    traffic) is named in ``left_deployed`` and logged, not an error: the new version serves.

    Request-response logging: with ``request_log_sampling_rate`` in (0, 1] the endpoint
    logs that fraction of its requests into ``request_log_table``
    (``bq://project.dataset.table``, which must exist: :func:`run_deploy_vertex` creates
    it), set when the endpoint is created and patched onto an existing endpoint whose
    logging differs; 0 turns logging off. The result names the table
    (``request_log_table``, empty when logging is off) for the monitor.
    """
    logging_config = _logging_config(request_log_table, request_log_sampling_rate)
    _check_deploy_arguments(
        model_resource_name,
        endpoint_display_name,
        min_replicas,
        max_replicas,
        traffic_percentage,
        smoke_instances,
    )
    aiplatform = init_vertex(project, location, api_endpoint, credentials)
    from google.api_core import exceptions as google_exceptions

    try:
        model = aiplatform.Model(model_resource_name)
    except google_exceptions.NotFound as error:
        raise CauceError(
            f"model_resource_name {model_resource_name!r} not found in Vertex AI: {error}"
        ) from error

    endpoint = newest_resource(aiplatform.Endpoint.list(filter=f'display_name="{endpoint_display_name}"'))
    created = endpoint is None
    if created:
        endpoint = aiplatform.Endpoint.create(
            display_name=endpoint_display_name,
            enable_request_response_logging=logging_config is not None,
            request_response_logging_sampling_rate=logging_config and logging_config["sampling_rate"],
            request_response_logging_bq_destination_table=logging_config and logging_config["table"],
            sync=True,
        )

    deployed_model_id = _serving_deployment(endpoint, model, traffic_percentage)
    left_deployed: list[str] = []
    if deployed_model_id is None:
        deployed_model_id, traffic_percentage, left_deployed = _roll_out(
            endpoint, model, endpoint_display_name, traffic_percentage, promote, smoke_instances,
            machine_type, min_replicas, max_replicas,
        )  # fmt: skip
    elif smoke_instances is not None:
        # This exact version already serves its share: a retried step checks it and changes nothing.
        _smoke_test(endpoint, endpoint_display_name, smoke_instances)
    # Only once the new version serves: its logging settings (a failed deploy changes nothing).
    if not created:
        _apply_logging_config(endpoint, logging_config)

    # The host the SDK's prediction client talks to: the regional one, or api_endpoint.
    host = aiplatform.initializer.global_config.get_client_options(prediction_client=True).api_endpoint
    base_url = host if "://" in host else f"https://{host}"
    return {
        "endpoint_resource_name": endpoint.resource_name,
        "deployed_model_id": deployed_model_id,
        "endpoint_url": f"{base_url}/v1/{endpoint.resource_name}:predict",
        "request_log_table": logging_config["table"] if logging_config else "",
        "request_log_sampling_rate": logging_config["sampling_rate"] if logging_config else 0.0,
        "traffic_percentage": traffic_percentage,
        "left_deployed": left_deployed,
    }


def _roll_out(
    endpoint: Any,
    model: Any,
    endpoint_display_name: str,
    traffic_percentage: int,
    promote: bool,
    smoke_instances: list[Any] | None,
    machine_type: str,
    min_replicas: int,
    max_replicas: int,
) -> tuple[str, int, list[str]]:
    """Deploy ``model`` next to what the endpoint serves, smoke-test it while the serving
    version keeps the rest of the traffic, then give it its share (all of it at 100 % or
    with ``promote``) and undeploy the others. Any failure until then restores the
    previous traffic split and deployments, and raises :class:`CauceError` saying
    "rolled back". Returns (deployed model id, its final share, deployments that could
    not be undeployed after the promotion)."""
    previous_split = dict(endpoint.traffic_split)
    before = {deployed.id for deployed in endpoint.list_models()}
    serving = bool(before) and any(previous_split.values())
    if traffic_percentage < 100 and not serving:
        if not promote:
            raise CauceError(
                f"traffic_percentage={traffic_percentage} but endpoint {endpoint_display_name!r} serves no "
                "model yet: the first deployment must take 100 % of the traffic"
            )
        # A canary protects a serving version; with none there is nothing to protect, and a
        # pipeline configured for canaries must still be able to make its first deployment.
        log.info("endpoint %s serves no model yet: deploying at 100 %% instead of a %d %% canary",
                 endpoint_display_name, traffic_percentage)
        traffic_percentage = 100
    # The share the new version serves while it is smoke-tested: the old one keeps the rest.
    staged = traffic_percentage if traffic_percentage < 100 or not serving or smoke_instances is None else SMOKE_SHARE
    where = f"endpoint {endpoint_display_name!r} ({endpoint.resource_name})"
    deployed_model_id = ""
    try:
        endpoint.deploy(
            model=model,
            deployed_model_display_name=f"{model.display_name}-v{model.version_id}",
            traffic_percentage=staged,
            machine_type=machine_type,
            min_replica_count=min_replicas,
            max_replica_count=max_replicas,
            sync=True,
        )
        # The SDK drops the deploy operation's answer: find the deployment that appeared.
        appeared = [d for d in endpoint.list_models() if d.id not in before and _is_version(d, model)]
        if not appeared:
            raise CauceError(f"the deployment of {model.resource_name}@{model.version_id} did not appear on {where}")
        deployed_model_id = max(appeared, key=lambda deployed: deployed.create_time).id
        if smoke_instances is not None:
            _smoke_test(endpoint, endpoint_display_name, smoke_instances, deployed_model_id, staged)
        if staged < 100 and (traffic_percentage == 100 or promote):
            endpoint.update(traffic_split={deployed_model_id: 100})
    except Exception as error:  # whatever failed, what served before must serve as it did
        detail = _rollback(endpoint, before, previous_split)
        if isinstance(error, CauceError):
            message = str(error)
        elif deployed_model_id:
            message = f"rolling out {model.resource_name}@{model.version_id} on {where} failed: {error}"
        else:
            message = f"deploying {model.resource_name}@{model.version_id} to {where} failed: {error}"
        raise CauceError(f"{message}; {detail}") from error
    final = 100 if staged < 100 and (traffic_percentage == 100 or promote) else staged
    left_deployed = []
    if final == 100:
        for deployed in endpoint.list_models():
            if deployed.id == deployed_model_id:
                continue
            try:
                endpoint.undeploy(deployed_model_id=deployed.id)
            except Exception as error:  # noqa: BLE001 - the new version serves; say what is left
                log.warning("deployment %s of %s (0 %% traffic) could not be undeployed: %s; undeploy it by hand",
                            deployed.id, where, error)
                left_deployed.append(deployed.id)
    return deployed_model_id, final, left_deployed


def _rollback(endpoint: Any, before: set[str], previous_split: dict[str, int]) -> str:
    """Undeploy every deployment that is not in ``before``, restoring ``previous_split``;
    say what the endpoint serves now."""
    try:
        endpoint._sync_gca_resource()
        if dict(endpoint.traffic_split) != previous_split and not (set(endpoint.traffic_split) - before):
            endpoint.update(traffic_split=previous_split)
        undeployed = []
        for deployed in endpoint.list_models():
            if deployed.id not in before:
                endpoint.undeploy(deployed_model_id=deployed.id, traffic_split=previous_split or None)
                undeployed.append(deployed.id)
    except Exception as error:  # noqa: BLE001 - say so: the operator must look
        return (
            f"rolling back failed too ({error}): the endpoint's traffic split is now {dict(endpoint.traffic_split)}, "
            f"it was {previous_split}"
        )
    gone = f"deployment {', '.join(undeployed)} undeployed, " if undeployed else ""
    return f"rolled back: {gone}traffic split restored to {previous_split}"


def _logging_config(table: str, sampling_rate: float) -> dict[str, Any] | None:
    """The wanted request-response logging, or None for none; checked before any request."""
    from cauce.request_logs import parse_table

    if _check_sampling_rate(sampling_rate) == 0:
        return None
    if not table:
        raise CauceError("request_log_sampling_rate > 0 needs request_log_table (bq://project.dataset.table)")
    project, dataset, table_id = parse_table(table)
    return {"table": f"bq://{project}.{dataset}.{table_id}", "sampling_rate": float(sampling_rate)}


def _check_sampling_rate(sampling_rate: float) -> float:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float)) or not 0 <= sampling_rate <= 1:
        raise CauceError(
            f"request_log_sampling_rate must be a fraction in [0, 1] (0: no request-response logging), "
            f"got {sampling_rate!r}"
        )
    return float(sampling_rate)


def _same_logging(have: dict[str, Any] | None, wanted: dict[str, Any] | None) -> bool:
    if have is None or wanted is None:
        return have is wanted
    return have["table"] == wanted["table"] and abs(have["sampling_rate"] - wanted["sampling_rate"]) < 1e-9


def _apply_logging_config(endpoint: Any, wanted: dict[str, Any] | None) -> None:
    """Patch the endpoint's request-response logging when it differs from ``wanted`` (the
    SDK's ``Endpoint.update`` has no such field: the service's update_endpoint does)."""
    from google.protobuf import field_mask_pb2

    current = endpoint.gca_resource.predict_request_response_logging_config
    have = (
        {"table": current.bigquery_destination.output_uri, "sampling_rate": float(current.sampling_rate)}
        if current.enabled
        else None
    )
    if _same_logging(have, wanted):
        return
    updated = endpoint.gca_resource.__class__(endpoint.gca_resource)
    config = updated.predict_request_response_logging_config
    config.enabled = wanted is not None
    config.sampling_rate = wanted["sampling_rate"] if wanted else 0.0
    config.bigquery_destination.output_uri = wanted["table"] if wanted else ""
    log.info("endpoint %s: request-response logging %s", endpoint.resource_name,
             f"into {wanted['table']} at {wanted['sampling_rate']:g}" if wanted else "off")
    endpoint._gca_resource = endpoint.api_client.update_endpoint(
        endpoint=updated,
        update_mask=field_mask_pb2.FieldMask(paths=["predict_request_response_logging_config"]),
    )


def _serving_deployment(endpoint: Any, model: Any, traffic_percentage: int) -> str | None:
    """The id of a deployment of this exact model version that already has the wanted traffic."""
    traffic_split = endpoint.traffic_split
    for deployed in endpoint.list_models():
        if _is_version(deployed, model) and traffic_split.get(deployed.id, 0) == traffic_percentage:
            return deployed.id
    return None


def _is_version(deployed: Any, model: Any) -> bool:
    """Whether a DeployedModel serves this model version (it names them in two fields)."""
    return deployed.model == model.resource_name and deployed.model_version_id == model.version_id


def _smoke_test(
    endpoint: Any, endpoint_display_name: str, instances: list[Any], deployed_model_id: str = "", share: int = 100
) -> None:
    """Predict ``instances`` through the endpoint until ``deployed_model_id`` (any
    deployment when empty) has answered them all. Vertex routes by the traffic split,
    so at ``share`` % that takes a few requests; every answer, from whichever
    deployment, must hold one prediction per instance, and any error fails the test."""
    from google.api_core import exceptions as google_exceptions

    where = f"endpoint {endpoint_display_name!r} ({endpoint.resource_name})"
    attempts = 1 if not deployed_model_id or share >= 100 else math.ceil(
        math.log(SMOKE_MISS_PROBABILITY) / math.log(1 - share / 100)
    )
    deadline = time.monotonic() + SMOKE_TIMEOUT_S
    sent = 0
    while sent < attempts:
        sent += 1
        try:
            response = endpoint.predict(instances=instances, timeout=max(1.0, deadline - time.monotonic()))
        except google_exceptions.GoogleAPICallError as error:
            raise CauceError(
                f"smoke test failed: {where} could not predict {len(instances)} instances: {error}"
            ) from error
        if len(response.predictions) != len(instances):
            raise CauceError(
                f"smoke test failed: {where} returned {len(response.predictions)} predictions "
                f"for {len(instances)} instances" + (f" (deployment {response.deployed_model_id})"
                                                      if response.deployed_model_id else "")
            )
        if not deployed_model_id or response.deployed_model_id == deployed_model_id:
            return
        if time.monotonic() > deadline:
            break
    raise CauceError(
        f"smoke test failed: deployment {deployed_model_id} answered none of {sent} requests to {where} "
        f"within {SMOKE_TIMEOUT_S:.0f} s although it takes {share} % of the traffic"
    )


def run_deploy_vertex(
    model_resource_name: str,
    smoke_dataset_dir: str,
    endpoint_name: str,
    project: str,
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    machine_type: str = "n1-standard-2",
    min_replicas: int = 1,
    max_replicas: int = 1,
    canary_traffic_percentage: int = 100,
    smoke_split: str = "eval",
    smoke_rows: int = 5,
    credentials: Any = None,
    request_log_table: str = "",
    request_log_sampling_rate: float = 1.0,
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    set_champion: bool = False,
) -> dict[str, Any]:
    """What the ``deploy_vertex`` component does: smoke-test rows from ``smoke_dataset_dir``
    holding the model's input features (read from the bundle the Vertex model version
    points at), then :func:`deploy_vertex` with promotion. The result adds ``vertex_uri``,
    the endpoint's REST URL a ``google.VertexEndpoint`` artifact carries.

    With ``set_champion``, once the version serves, the model's ``champion`` version
    alias moves to it (and ``pending`` is dropped): the alias never names a version
    nothing serves (see :func:`cauce.components.deploy.executor.make_champion`).

    With ``request_log_sampling_rate`` > 0 the endpoint logs requests into
    ``request_log_table`` (empty: ``bq://<project>.cauce_request_logs.<endpoint_name>``),
    whose dataset and table are first created in ``bigquery_location`` if missing, in the
    schema Vertex AI writes (:mod:`cauce.request_logs`)."""
    from cauce.artifact_types import vertex_resource_uri
    from cauce.components.deploy.executor import smoke_instances_from
    from cauce.model import fetch_model_dir
    from cauce.request_logs import default_table, ensure_table

    aiplatform = init_vertex(project, vertex_region, vertex_api_endpoint, credentials)
    from google.api_core import exceptions as google_exceptions

    try:
        registered = aiplatform.Model(model_resource_name)
    except google_exceptions.NotFound as error:
        raise CauceError(f"model {model_resource_name!r} not found in Vertex AI: {error}") from error
    artifact_uri = registered.uri
    if not artifact_uri:
        raise CauceError(
            f"Vertex model {model_resource_name!r} has no artifact URI: expected a model uploaded with its "
            "files (a cauce bundle), whose input features the smoke test sends"
        )
    instances = smoke_instances_from(smoke_dataset_dir, smoke_split, fetch_model_dir(artifact_uri), smoke_rows)
    if _check_sampling_rate(request_log_sampling_rate) > 0:
        request_log_table = ensure_table(
            request_log_table or default_table(project, endpoint_name), bigquery_location, bigquery_api_endpoint
        )
    result = deploy_vertex(
        model_resource_name=model_resource_name,
        endpoint_display_name=endpoint_name,
        project=project,
        location=vertex_region,
        machine_type=machine_type,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        smoke_instances=instances,
        api_endpoint=vertex_api_endpoint,
        traffic_percentage=canary_traffic_percentage,
        promote=True,
        credentials=credentials,
        request_log_table=request_log_table,
        request_log_sampling_rate=request_log_sampling_rate,
    )
    if set_champion:
        from cauce.components.deploy.executor import make_champion
        from cauce.model_registry import VertexRegistry

        registry = VertexRegistry(project, vertex_region, vertex_api_endpoint, credentials)
        result["champion"] = make_champion(registry, registered.display_name, registered.version_id, result["endpoint_url"])
    return {**result, "vertex_uri": vertex_resource_uri(result["endpoint_resource_name"], vertex_region)}
