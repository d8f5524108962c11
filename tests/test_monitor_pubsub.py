"""Monitor alerts on a Pub/Sub topic, through the real google-cloud-pubsub client against
the local Publisher server (tests/fixtures/pubsub_server.py), also inside kfp.local."""

import json
import logging
import socket

import pytest

from cauce.artifacts import CauceError
from cauce.components.monitor.executor import (
    REPORT_JSON,
    alert_attributes,
    alert_payload,
    run_monitor,
)
from tests.fixtures.pubsub_server import pubsub_server  # noqa: F401
from tests.test_monitor import _AlertReceiver, monitored  # noqa: F401

TOPIC = "projects/cauce-test/topics/drift-alerts"


def _run(monitored, **overrides):  # noqa: F811 - the fixture's value, passed in
    arguments = {
        "baseline_dir": str(monitored / "baseline"),
        "baseline_split": "train",
        "request_log_dir": str(monitored / "logs"),
        "output_dir": str(monitored / "report"),
        "numeric_features": ["fare", "hour"],
        "categorical_features": ["payment"],
        **overrides,
    }
    return run_monitor(**arguments)


def test_drift_publishes_one_message_with_the_webhook_payload_and_attributes(
    monitored, pubsub_server  # noqa: F811
):
    pubsub_server.create_topic(TOPIC)
    receiver = _AlertReceiver()
    try:
        report = _run(monitored, alert_webhook=receiver.url, alert_topic=TOPIC)
    finally:
        receiver.close()

    (message,) = pubsub_server.messages
    assert message.topic == TOPIC and message.ordering_key == ""
    payload = json.loads(message.data)
    # One payload for both channels: the webhook got exactly the message's data.
    assert receiver.received == [payload]
    assert payload == alert_payload(report)
    assert payload["drifted_features"] == ["fare"] and payload["skew"]["fare"] > 0.3
    assert payload["serving"]["endpoints"] == ["local"] and payload["serving"]["deployed_model_ids"] == ["m1"]
    assert message.attributes == {
        "source": "cauce.monitor",
        "kind": "skew",
        "features": "fare",
        "skew_features": "fare",
        "endpoint": "local",
        "model": "m1",
        "generated_at": report["generated_at"],
    }
    webhook, pubsub = report["alerts"]
    assert webhook["channel"] == "webhook" and webhook["delivered"] is True
    assert pubsub == {"channel": "pubsub", "target": TOPIC, "delivered": True, "message_id": message.message_id}
    assert json.loads((monitored / "report" / REPORT_JSON).read_text())["alerts"] == report["alerts"]


def test_no_drift_publishes_nothing(monitored, pubsub_server):  # noqa: F811
    pubsub_server.create_topic(TOPIC)
    report = _run(monitored, alert_topic=TOPIC, default_numeric_threshold=1.0, default_categorical_threshold=1.0)
    assert report["flagged"]["drift_detected"] is False
    assert pubsub_server.messages == []
    assert "alerts" not in report
    assert "alerts" not in json.loads((monitored / "report" / REPORT_JSON).read_text())


def test_unknown_topic_is_recorded_not_raised_and_the_report_stands(monitored, pubsub_server, caplog):  # noqa: F811
    with caplog.at_level(logging.ERROR):
        report = _run(monitored, alert_topic=TOPIC)
    (delivery,) = report["alerts"]
    assert delivery["delivered"] is False
    assert delivery["error"] == f"NotFound: 404 Resource not found (resource={TOPIC})."
    assert pubsub_server.messages == []
    written = json.loads((monitored / "report" / REPORT_JSON).read_text())
    assert written["drifted_features"] == ["fare"] and written["alerts"] == [delivery]
    assert any(TOPIC in record.getMessage() and "not published" in record.getMessage() for record in caplog.records)


def test_server_down_gives_up_within_the_alert_timeout(monitored, monkeypatch, free_port):  # noqa: F811
    # Nothing listens on free_port: every attempt is UNAVAILABLE, which the client retries.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", free_port)) != 0
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port}")
    report = _run(monitored, alert_topic=TOPIC, alert_timeout=1.0)
    (delivery,) = report["alerts"]
    assert delivery["delivered"] is False
    # The retries stopped at our deadline, not the client's 10-minute default.
    assert delivery["error"].startswith("RetryError: Timeout of 1.0s exceeded")
    assert "503" in delivery["error"]
    assert json.loads((monitored / "report" / REPORT_JSON).read_text())["alerts"] == [delivery]


@pytest.mark.parametrize(
    "topic",
    [
        "drift-alerts",
        "projects/cauce-test/topics/",
        "projects/cauce-test/subscriptions/drift-alerts",
        "projects/Cauce/topics/drift-alerts",
        "projects/cauce-test/topics/1st",
        "projects/cauce-test/topics/goog-alerts",
        "projects/cauce-test/topics/a b",
        "//pubsub.googleapis.com/projects/cauce-test/topics/drift-alerts",
    ],
)
def test_alert_topic_must_be_a_topic_name(monitored, topic):  # noqa: F811
    with pytest.raises(CauceError, match=r"alert_topic .* must be a Pub/Sub topic name projects/<project>/topics/<topic>"):
        _run(monitored, alert_topic=topic)
    assert not (monitored / "report").exists()


def test_attributes_name_both_kinds_and_fit_pubsub_limits():
    features = [f"feature_{number:04d}_with_a_long_name" for number in range(60)]
    report = {
        "drifted_features": features,
        "window_drift": {"drifted_features": ["payment"]},
        "flagged": {"features": sorted([*features, "payment"])},
        "serving": {"endpoints": ["e1", "e2"], "deployed_model_ids": []},
        "generated_at": "2024-05-01T12:00:00+00:00",
    }
    attributes = alert_attributes(report)
    assert attributes["kind"] == "skew,drift" and attributes["drift_features"] == "payment"
    assert attributes["endpoint"] == "e1,e2" and "model" not in attributes  # empty values are left out
    # 60 long names are over Pub/Sub's 1024-byte limit on a value: cut, marked, the full list in the data.
    assert len(attributes["features"].encode()) == 1024 and attributes["features"].endswith("...")
    assert attributes["features"].startswith("feature_0000_with_a_long_name,feature_0001")


def test_monitoring_pipeline_publishes_from_its_kfp_local_step(monitored, pubsub_server, kfp_local):  # noqa: F811
    from cauce.pipelines.monitoring import monitoring

    pubsub_server.create_topic(TOPIC)
    # kfp.local runs the step in a subprocess: PUBSUB_EMULATOR_HOST reaches it through the
    # inherited environment, like any variable set on the pipeline's container.
    monitoring(
        baseline_uri=str(monitored / "baseline"),
        request_log_dir=str(monitored / "logs"),
        numeric_features=["fare", "hour"],
        categorical_features=["payment"],
        alert_topic=TOPIC,
    )
    (message,) = pubsub_server.messages
    assert message.attributes["kind"] == "skew" and message.attributes["features"] == "fare"
    assert json.loads(message.data)["drifted_features"] == ["fare"]
    (report_json,) = kfp_local.rglob(REPORT_JSON)
    (delivery,) = json.loads(report_json.read_text())["alerts"]
    assert delivery["delivered"] is True and delivery["message_id"] == message.message_id
