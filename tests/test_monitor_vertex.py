"""The Vertex AI Model Monitoring job, through the real aiplatform SDK against the local
Vertex REST server (tests/fixtures/vertex_server.py): created once per endpoint, then
updated in place with the same thresholds our monitor uses."""

import pytest

from cauce.artifacts import CauceError
from cauce.components.monitor.vertex import ensure_monitoring_job
from tests.fixtures.vertex_server import vertex_server  # noqa: F401
from tests.test_deploy_vertex import INSTANCES, LOCATION, PROJECT, deploy, register_version


def _ensure(server, endpoint, **overrides):
    arguments = dict(
        endpoint_resource_name=endpoint, display_name="churn-monitoring", project=PROJECT, location=LOCATION,
        training_data_source="bq://acme.trips.taxi", target_field="churned",
        numeric_features=["tenure"], categorical_features=["plan"], thresholds={"plan": 0.2},
        api_endpoint=server.endpoint,
    )
    return ensure_monitoring_job(**{**arguments, **overrides})


def test_job_is_created_then_updated_with_our_thresholds(vertex_server):  # noqa: F811
    deployed = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"), smoke_instances=INSTANCES)
    first = _ensure(vertex_server, deployed["endpoint_resource_name"])
    second = _ensure(vertex_server, deployed["endpoint_resource_name"], default_numeric_threshold=0.1, sample_rate=0.5)
    assert (first["action"], second["action"]) == ("created", "updated")
    assert first["resource_name"] == second["resource_name"]
    [job] = vertex_server.monitoring_jobs.values()
    [objective] = job["modelDeploymentMonitoringObjectiveConfigs"]
    assert objective["deployedModelId"] == deployed["deployed_model_id"]
    config = objective["objectiveConfig"]
    skew = config["trainingPredictionSkewDetectionConfig"]["skewThresholds"]
    drift = config["predictionDriftDetectionConfig"]["driftThresholds"]
    assert skew == drift == {"tenure": {"value": 0.1}, "plan": {"value": 0.2}}
    assert config["trainingDataset"]["bigquerySource"]["inputUri"] == "bq://acme.trips.taxi"
    assert job["loggingSamplingStrategy"]["randomSampleConfig"]["sampleRate"] == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training_data_source": "gs://bucket/train.parquet"}, "must be a BigQuery table"),
        ({"thresholds": {"ghost": 0.1}}, r"feature\(s\) \['ghost'\] that are not monitored"),
        ({"sample_rate": 0}, "sample_rate must be in"),
    ],
)
def test_bad_settings_are_refused(vertex_server, overrides, message):  # noqa: F811
    with pytest.raises(CauceError, match=message):
        _ensure(vertex_server, "projects/p/locations/l/endpoints/1", **overrides)
