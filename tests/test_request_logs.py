"""Request-response logging: deploy_vertex turns it on into a BigQuery table of the shape
Vertex AI writes, and the local serving process writes the same row shape.

The real aiplatform SDK talks to the Vertex stand-in (tests/fixtures/vertex_server.py),
which checks ``predictRequestResponseLoggingConfig`` as the service does; the real
google-cloud-bigquery client talks to the BigQuery emulator.
"""

import json

import pytest

from cauce.artifacts import CauceError
from cauce.components.deploy.vertex import deploy_vertex
from cauce.request_logs import REQUEST_LOG_SCHEMA, ensure_table
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture
from tests.fixtures.vertex_server import vertex_server  # noqa: F401 - pytest fixture
from tests.test_deploy_vertex import INSTANCES, LOCATION, PROJECT, register_version

TABLE = "bq://test-project.serving_logs.churn"


def _deploy(server, model_uri, **kwargs):
    return deploy_vertex(
        model_resource_name=model_uri, endpoint_display_name="churn-endpoint", project=PROJECT,
        location=LOCATION, api_endpoint=server.endpoint, smoke_instances=INSTANCES, **kwargs,
    )


def test_deploy_creates_the_endpoint_with_request_response_logging(vertex_server):  # noqa: F811
    result = _deploy(vertex_server, register_version(vertex_server, "gs://b/churn/v1"),
                     request_log_table=TABLE, request_log_sampling_rate=0.25)

    [create] = vertex_server.requests_to("POST", "/endpoints")
    assert create.body["predictRequestResponseLoggingConfig"] == {
        "enabled": True, "samplingRate": 0.25, "bigqueryDestination": {"outputUri": TABLE},
    }
    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["predictRequestResponseLoggingConfig"]["bigqueryDestination"]["outputUri"] == TABLE
    assert (result["request_log_table"], result["request_log_sampling_rate"]) == (TABLE, 0.25)


def test_redeploy_patches_logging_only_when_it_differs(vertex_server):  # noqa: F811
    _deploy(vertex_server, register_version(vertex_server, "gs://b/churn/v1"))  # an endpoint without logging
    assert "predictRequestResponseLoggingConfig" not in next(iter(vertex_server.endpoints.values()))

    second = register_version(vertex_server, "gs://b/churn/v2")
    _deploy(vertex_server, second, request_log_table=TABLE, request_log_sampling_rate=1.0)
    [patch] = [r for r in vertex_server.requests_to("PATCH", "") if "predict" in r.query.get("updateMask", "").lower()]
    assert patch.body["predictRequestResponseLoggingConfig"]["samplingRate"] == 1.0
    [endpoint] = vertex_server.endpoints.values()
    assert endpoint["predictRequestResponseLoggingConfig"]["enabled"] is True

    _deploy(vertex_server, second, request_log_table=TABLE, request_log_sampling_rate=1.0)
    patches = [r for r in vertex_server.requests_to("PATCH", "") if "predict" in r.query.get("updateMask", "").lower()]
    assert len(patches) == 1  # the same logging: nothing patched

    result = _deploy(vertex_server, second, request_log_sampling_rate=0.0)
    assert result["request_log_table"] == ""
    assert not endpoint["predictRequestResponseLoggingConfig"].get("enabled")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_log_sampling_rate": 1.5}, r"request_log_sampling_rate must be a fraction in \[0, 1\]"),
        ({"request_log_sampling_rate": 0.5}, "needs request_log_table"),
        ({"request_log_sampling_rate": 0.5, "request_log_table": "bq://p/x"}, "must be a BigQuery table"),
    ],
)
def test_bad_logging_arguments_raise_before_any_request(vertex_server, overrides, message):  # noqa: F811
    with pytest.raises(CauceError, match=message):
        _deploy(vertex_server, "projects/p/locations/l/models/1", **overrides)
    assert vertex_server.requests == []


def test_the_stand_in_refuses_what_the_service_refuses(vertex_server):  # noqa: F811
    """Through the SDK itself: a zero sampling rate and a destination that is not bq:// are refused."""
    from google.api_core import exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    aiplatform.init(project=PROJECT, location=LOCATION, api_endpoint=vertex_server.endpoint,
                    api_transport="rest", credentials=AnonymousCredentials())
    for rate, table in ((0.0, TABLE), (0.5, "gs://bucket/logs")):
        with pytest.raises(exceptions.BadRequest, match="predict_request_response_logging_config"):
            aiplatform.Endpoint.create(display_name="x", enable_request_response_logging=True,
                                       request_response_logging_sampling_rate=rate,
                                       request_response_logging_bq_destination_table=table, sync=True)
    assert vertex_server.endpoints == {}


def test_the_log_table_is_created_in_the_schema_vertex_writes(bigquery_emulator):  # noqa: F811
    uri = f"bq://{bigquery_emulator.project}.logs_created.churn"
    assert ensure_table(uri, "US", bigquery_emulator.endpoint) == uri
    assert ensure_table(uri, "US", bigquery_emulator.endpoint) == uri  # exists: reused
    table = bigquery_emulator.client().get_table(uri.removeprefix("bq://"), timeout=10)
    assert [(f.name, f.field_type, f.mode) for f in table.schema] == list(REQUEST_LOG_SCHEMA)


def test_an_existing_table_of_another_shape_is_refused(bigquery_emulator):  # noqa: F811
    import pyarrow as pa

    bigquery_emulator.load_table("logs_wrong.churn", pa.table({"endpoint": ["e"], "payload": ["{}"]}))
    with pytest.raises(CauceError, match=r"logs_wrong\.churn .*missing columns \['deployed_model_id', 'logging_time', "
                                         r"'request_payload'\]"):
        ensure_table(f"bq://{bigquery_emulator.project}.logs_wrong.churn", "US", bigquery_emulator.endpoint)


def test_the_local_serving_log_writes_the_same_row_shape(tmp_path):
    from cauce.serving.app import RequestLog

    log = RequestLog(tmp_path, "churn")
    log.write("m1", [{"tenure": 3}], [{"label": 1, "score": 0.9}])
    log.close()
    [line] = (tmp_path / next(p.name for p in tmp_path.iterdir())).read_text().splitlines()
    row = json.loads(line)
    assert list(row) == [name for name, _, _ in REQUEST_LOG_SCHEMA]
    assert isinstance(row["request_id"], int)  # a NUMERIC's value, as Vertex logs it
    assert json.loads(row["request_payload"][0]) == {"tenure": 3}
