"""Tests of the Vertex AI side of the deploy step.

Vertex AI has no emulator: the real ``google-cloud-aiplatform`` SDK talks to the local
stand-in in ``tests/fixtures/vertex_server.py`` over its REST transport (no mocks of
the SDK). Models are registered through the register executor, as in a pipeline.
"""

from http import HTTPStatus

import pytest

from cauce.artifacts import CauceError
from cauce.components.deploy.vertex import deploy_vertex
from cauce.components.register.executor import register_vertex
from tests.fixtures.vertex_server import VertexServerError, vertex_server  # noqa: F401

PROJECT = "test-project"
LOCATION = "us-central1"
INSTANCES = [{"tenure": 3, "plan": "basic"}, {"tenure": 40, "plan": "pro"}]


def register_version(server, model_uri: str) -> str:
    """Register a version of the "churn" model; return its ``<resource>@<version>`` name."""
    result = register_vertex(
        model_uri=model_uri,
        display_name="churn",
        project=PROJECT,
        location=LOCATION,
        serving_image="ghcr.io/cauce-ml/cauce-serving:test",
        api_endpoint=server.endpoint,
    )
    return result["model_uri"]


def deploy(server, model_resource_name: str, **kwargs) -> dict:
    return deploy_vertex(
        model_resource_name=model_resource_name,
        endpoint_display_name="churn-endpoint",
        project=PROJECT,
        location=LOCATION,
        api_endpoint=server.endpoint,
        **kwargs,
    )


def test_first_deploy_creates_the_endpoint_and_passes_the_smoke_test(vertex_server):  # noqa: F811
    model_uri = register_version(vertex_server, "gs://bucket/churn/v1")

    result = deploy(
        vertex_server, model_uri, smoke_instances=INSTANCES, machine_type="n1-standard-4", max_replicas=3
    )

    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["displayName"] == "churn-endpoint"
    assert result["endpoint_resource_name"] == endpoint["name"]
    assert result["endpoint_url"] == f"{vertex_server.endpoint}/v1/{endpoint['name']}:predict"
    [deployed] = endpoint["deployedModels"]
    assert result["deployed_model_id"] == deployed["id"]
    model_name, version = model_uri.split("@")
    assert (deployed["model"], deployed["modelVersionId"]) == (model_name, version)
    assert endpoint["trafficSplit"] == {deployed["id"]: 100}
    resources = deployed["dedicatedResources"]
    assert resources["machineSpec"]["machineType"] == "n1-standard-4"
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (1, 3)
    [smoke] = vertex_server.requests_to("POST", ":predict")
    assert smoke.body["instances"] == INSTANCES


def test_second_deploy_reuses_the_endpoint_and_retires_the_previous_version(vertex_server):  # noqa: F811
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"))
    version_2 = register_version(vertex_server, "gs://bucket/churn/v2")

    second = deploy(vertex_server, version_2, smoke_instances=INSTANCES)

    assert second["endpoint_resource_name"] == first["endpoint_resource_name"]
    assert len(vertex_server.requests_to("POST", "/endpoints")) == 1
    [endpoint] = vertex_server.endpoints.values()
    [deployed] = endpoint["deployedModels"]
    assert (deployed["id"], deployed["modelVersionId"]) == (second["deployed_model_id"], "2")
    assert endpoint["trafficSplit"] == {second["deployed_model_id"]: 100}
    [undeploy] = vertex_server.requests_to("POST", ":undeployModel")
    assert undeploy.body["deployedModelId"] == first["deployed_model_id"]


def test_redeploying_the_serving_version_deploys_nothing(vertex_server):  # noqa: F811
    model_uri = register_version(vertex_server, "gs://bucket/churn/v1")

    first = deploy(vertex_server, model_uri)
    again = deploy(vertex_server, model_uri)

    assert again == first
    assert len(vertex_server.requests_to("POST", ":deployModel")) == 1


def test_canary_deploy_keeps_the_previous_version_serving(vertex_server):  # noqa: F811
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"))
    canary = deploy(
        vertex_server, register_version(vertex_server, "gs://bucket/churn/v2"), traffic_percentage=20
    )

    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["trafficSplit"] == {first["deployed_model_id"]: 80, canary["deployed_model_id"]: 20}
    assert vertex_server.requests_to("POST", ":undeployModel") == []


def test_canary_promoted_after_its_smoke_test(vertex_server):  # noqa: F811
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"))
    canary = deploy(
        vertex_server, register_version(vertex_server, "gs://bucket/churn/v2"),
        traffic_percentage=10, promote=True, smoke_instances=INSTANCES,
    )
    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["trafficSplit"] == {canary["deployed_model_id"]: 100}
    assert [d["id"] for d in endpoint["deployedModels"]] == [canary["deployed_model_id"]]
    [deploy_request] = vertex_server.requests_to("POST", ":deployModel")[1:]
    assert deploy_request.body["trafficSplit"][first["deployed_model_id"]] == 90  # the canary share came first


def test_broken_canary_rolls_back_and_the_old_version_keeps_serving(vertex_server):  # noqa: F811
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"))
    version_2 = register_version(vertex_server, "gs://bucket/churn/v2")
    answers = vertex_server.predict_handler

    def broken(instances):
        raise RuntimeError("model file is corrupt")

    vertex_server.predict_handler = broken
    with pytest.raises(CauceError, match="rolled back"):
        deploy(vertex_server, version_2, traffic_percentage=10, promote=True, smoke_instances=INSTANCES)
    vertex_server.predict_handler = answers
    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["trafficSplit"] == {first["deployed_model_id"]: 100}
    assert vertex_server.requests_to("PATCH", "") == []  # never promoted
    assert [d["id"] for d in endpoint["deployedModels"]] == [first["deployed_model_id"]]  # still serving


def test_failing_smoke_test_names_the_endpoint_and_rolls_back(vertex_server):  # noqa: F811
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"))
    version_2 = register_version(vertex_server, "gs://bucket/churn/v2")

    def crashing_model(instances):
        raise RuntimeError("model file is corrupt")

    vertex_server.predict_handler = crashing_model
    with pytest.raises(CauceError, match=r"endpoint 'churn-endpoint' .*model file is corrupt.*rolled back"):
        deploy(vertex_server, version_2, smoke_instances=INSTANCES)

    # Version 1 serves all the traffic again; the broken version 2 is gone.
    [endpoint] = vertex_server.endpoints.values()
    [deployed] = endpoint["deployedModels"]
    assert (deployed["id"], deployed["modelVersionId"]) == (first["deployed_model_id"], "1")
    assert endpoint["trafficSplit"] == {first["deployed_model_id"]: 100}


def test_smoke_test_rejects_a_wrong_number_of_predictions(vertex_server):  # noqa: F811
    model_uri = register_version(vertex_server, "gs://bucket/churn/v1")
    vertex_server.predict_handler = lambda instances: instances[:1]

    with pytest.raises(CauceError, match="'churn-endpoint' .* returned 1 predictions for 2 instances"):
        deploy(vertex_server, model_uri, smoke_instances=INSTANCES)
    # The first deployment failed, so the endpoint serves nothing rather than a broken model.
    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["deployedModels"] == []


def test_failing_smoke_test_of_the_serving_version_undeploys_nothing(vertex_server):  # noqa: F811
    model_uri = register_version(vertex_server, "gs://bucket/churn/v1")
    deploy(vertex_server, model_uri)
    vertex_server.predict_handler = lambda instances: []

    with pytest.raises(CauceError, match="returned 0 predictions"):
        deploy(vertex_server, model_uri, smoke_instances=INSTANCES)
    assert vertex_server.requests_to("POST", ":undeployModel") == []


def test_smoke_test_reports_a_service_error(vertex_server):  # noqa: F811
    def overloaded(instances):
        raise VertexServerError(HTTPStatus.TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", "quota exceeded")

    vertex_server.predict_handler = overloaded
    with pytest.raises(CauceError, match="churn-endpoint.*quota exceeded"):
        deploy(
            vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"), smoke_instances=INSTANCES
        )


def test_unknown_model_raises_cauce_error(vertex_server):  # noqa: F811
    missing = f"projects/{PROJECT}/locations/{LOCATION}/models/404@1"

    with pytest.raises(CauceError, match=f"model_resource_name '{missing}' not found"):
        deploy(vertex_server, missing)
    assert vertex_server.requests_to("POST", "/endpoints") == []


def test_partial_traffic_on_an_empty_endpoint_raises(vertex_server):  # noqa: F811
    with pytest.raises(CauceError, match="first deployment must take 100 %"):
        deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"), traffic_percentage=50)
    assert vertex_server.requests_to("POST", ":deployModel") == []


def test_a_promoted_canary_on_an_empty_endpoint_deploys_at_100_percent(vertex_server):  # noqa: F811
    deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"), traffic_percentage=10, promote=True)
    (request,) = vertex_server.requests_to("POST", ":deployModel")
    assert list(request.body["trafficSplit"].values()) == [100]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_resource_name": "churn"}, "is not a Vertex AI model"),
        ({"endpoint_display_name": ""}, "endpoint_display_name is empty"),
        ({"min_replicas": 2, "max_replicas": 1}, "min_replicas <= max_replicas"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"traffic_percentage": 0}, "traffic_percentage must be in 1..100"),
        ({"smoke_instances": []}, "smoke_instances must be a non-empty list"),
    ],
)
def test_bad_arguments_raise_before_any_request(vertex_server, overrides, message):  # noqa: F811
    arguments = {
        "model_resource_name": f"projects/{PROJECT}/locations/{LOCATION}/models/1@1",
        "endpoint_display_name": "churn-endpoint",
        "project": PROJECT,
        "location": LOCATION,
        "api_endpoint": vertex_server.endpoint,
        **overrides,
    }
    with pytest.raises(CauceError, match=message):
        deploy_vertex(**arguments)
    assert vertex_server.requests == []
