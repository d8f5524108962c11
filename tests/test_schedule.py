"""`cauce schedule`: Vertex AI pipeline schedules through the real aiplatform SDK
(``PipelineJobSchedule``) against the local Vertex stand-in, which checks the schedule
and its PipelineJob as the service does; locally, the crontab entry. Bad cron
expressions and missing required parameters are refused before anything is created."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cauce.artifacts import CauceError
from cauce.cli import app
from cauce.schedules import check_cron, crontab_line
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

runner = CliRunner()


def vertex_args(server) -> list[str]:
    return ["--project", "acme-ml", "--region", "us-central1", "--api-endpoint", server.endpoint]


def test_a_vertex_schedule_round_trips(vertex_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    created = runner.invoke(app, [
        "schedule", "create", "training", "--cron", "TZ=Europe/Madrid 0 3 * * MON-FRI", "--name", "nightly",
        "--pipeline-root", "gs://acme-ml-pipelines/root", "--param", "source=acme-ml.trips.taxi",
        *vertex_args(vertex_server),
    ])  # fmt: skip
    assert created.exit_code == 0, created.output
    [schedule] = vertex_server.schedules.values()
    assert schedule["cron"] == "TZ=Europe/Madrid 0 3 * * MON-FRI" and schedule["displayName"] == "nightly"
    values = schedule["createPipelineJobRequest"]["pipelineJob"]["runtimeConfig"]["parameterValues"]
    assert values["source"] == "acme-ml.trips.taxi" and values["target"] == "google-cloud" and values["project"] == "acme-ml"

    listed = runner.invoke(app, ["schedule", "list", *vertex_args(vertex_server)])
    assert "nightly" in listed.output and "ACTIVE" in listed.output
    assert runner.invoke(app, ["schedule", "pause", "nightly", *vertex_args(vertex_server)]).exit_code == 0
    assert schedule["state"] == "PAUSED"
    again = runner.invoke(app, ["schedule", "pause", "nightly", *vertex_args(vertex_server)])
    assert again.exit_code == 1 and "not active" in again.output
    assert runner.invoke(app, ["schedule", "resume", "nightly", *vertex_args(vertex_server)]).exit_code == 0
    assert schedule["state"] == "ACTIVE"
    assert runner.invoke(app, ["schedule", "delete", "nightly", *vertex_args(vertex_server)]).exit_code == 0
    assert vertex_server.schedules == {}
    gone = runner.invoke(app, ["schedule", "pause", "nightly", *vertex_args(vertex_server)])
    assert gone.exit_code == 1 and "no pipeline schedule named 'nightly'" in gone.output


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 3 * *", "has 4 fields"),
        ("61 3 * * *", "minute '61' is not a value in 0-59"),
        ("0 24 * * *", "hour '24'"),
        ("0 3 * * 1/0", "step '0'"),
        ("0 3 5-1 * *", "runs backwards"),
        ("TZ=Mars/Olympus 0 3 * * *", "unknown time zone"),
        ("0 3 * FOO *", "month 'FOO'"),
    ],
)
def test_a_bad_cron_is_refused_before_anything_is_created(vertex_server, cron, message):  # noqa: F811
    with pytest.raises(CauceError, match=message):
        check_cron(cron)
    refused = runner.invoke(app, [
        "schedule", "create", "training", "--cron", cron, "--pipeline-root", "gs://b/root", *vertex_args(vertex_server),
    ])  # fmt: skip
    assert refused.exit_code == 1 and message.split("'")[0].strip() in refused.output
    assert vertex_server.requests == []  # nothing was sent


def test_missing_required_parameters_are_refused_before_anything_is_created(vertex_server):  # noqa: F811
    refused = runner.invoke(app, [
        "schedule", "create", "monitoring", "--cron", "0 * * * *", "--pipeline-root", "gs://b/root", *vertex_args(vertex_server),
    ])  # fmt: skip
    assert refused.exit_code == 1 and "needs values for its required parameters" in refused.output
    assert "baseline_uri=..." in refused.output
    assert vertex_server.requests == []


def test_locally_the_schedule_is_a_crontab_entry(tmp_path):
    line = crontab_line("training", "TZ=Europe/Madrid 30 2 * * *", ["rows_hint=1%"], "/home/me/.cauce")
    zone, entry = line.split("\n")
    assert zone == "CRON_TZ=Europe/Madrid"
    assert entry.startswith("30 2 * * * CAUCE_HOME=/home/me/.cauce ") and "-m cauce.cli run training --param rows_hint=1\\%" in entry
    crontab = tmp_path / "crontab"
    written = runner.invoke(app, ["schedule", "create", "training", "--cron", "0 3 * * *", "--crontab", str(crontab)])
    assert written.exit_code == 0, written.output
    assert crontab.read_text().startswith("0 3 * * * CAUCE_HOME=")
    refused = runner.invoke(app, ["schedule", "create", "training", "--cron", "0 3 * *"])
    assert refused.exit_code == 1 and "has 4 fields" in refused.output


def test_schedule_pipeline_is_short_for_create(vertex_server, monkeypatch, tmp_path):  # noqa: F811
    """`cauce schedule PIPELINE --cron EXPR` creates, as `cauce schedule create` does; the
    subcommands keep their meaning and a bad cron is still refused before any request."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    created = runner.invoke(app, [
        "schedule", "training", "--cron", "0 3 * * *", "--name", "nightly", "--pipeline-root", "gs://acme-ml-pipelines/root",
        "--param", "source=acme-ml.trips.taxi", *vertex_args(vertex_server),
    ])  # fmt: skip
    assert created.exit_code == 0, created.output
    [schedule] = vertex_server.schedules.values()
    assert schedule["cron"] == "0 3 * * *" and schedule["displayName"] == "nightly"
    listed = runner.invoke(app, ["schedule", "list", *vertex_args(vertex_server)])
    assert listed.exit_code == 0 and "nightly" in listed.output
    count = len(vertex_server.requests)
    refused = runner.invoke(app, ["schedule", "training", "--cron", "0 3 * *", "--pipeline-root", "gs://b/root", *vertex_args(vertex_server)])
    assert refused.exit_code == 1 and "has 4 fields" in refused.output
    assert len(vertex_server.requests) == count
    # Locally: the crontab entry.
    local = runner.invoke(app, ["schedule", "training", "--cron", "30 2 * * *", "--crontab", str(tmp_path / "crontab")])
    assert local.exit_code == 0, local.output
    assert (tmp_path / "crontab").read_text().startswith("30 2 * * * ")
    assert "create" in runner.invoke(app, ["schedule", "--help"]).output
