"""The transform component on Dataflow: its parameters become a checked Dataflow job.

Dataflow cannot run here. The component runs under kfp.local with
``runner="DataflowRunner"`` and Beam's real DataflowRunner submits the analyze
pass to the local Dataflow + Cloud Storage stand-in
(tests/fixtures/dataflow_server.py), which reports the job FAILED: the step
must fail naming the job, after the job carried the worker settings given in
the component's ``dataflow`` parameter.
"""

from __future__ import annotations

import pytest
from kfp import dsl

from cauce.components.transform.component import transform
from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC
from tests.fixtures.dataflow_server import TEST_BUCKET, dataflow_server_fixture  # noqa: F401

IMAGE = "us-docker.pkg.dev/cauce-test/cauce/cauce-beam@sha256:" + "cd" * 32
SERVICE_ACCOUNT = "dataflow-worker@cauce-test.iam.gserviceaccount.com"


def run_on_dataflow(raw_dataset, dataflow_server, beam_image: str = "", **dataflow) -> None:
    """Run the transform component under kfp.local with ``runner="DataflowRunner"`` and
    ``dataflow``'s settings, pointed at the stand-in; the step is expected to fail."""

    @dsl.pipeline
    def on_dataflow():
        raw = dsl.importer(artifact_uri=str(raw_dataset), artifact_class=dsl.Dataset, reimport=False)
        transform(
            dataset=raw.output,
            label=DEMO_LABEL,
            numeric_features=DEMO_NUMERIC,
            categorical_features=DEMO_CATEGORICAL,
            runner="DataflowRunner",
            project="cauce-test",
            # Only what the stand-in needs: its endpoint, and no Google credentials.
            pipeline_options={"dataflow_endpoint": dataflow_server.endpoint, "no_auth": True},
            dataflow=dataflow,
            beam_image=beam_image,
        )

    with pytest.raises(RuntimeError):
        on_dataflow()


def test_transform_launches_a_dataflow_job_with_its_parameters(kfp_local, raw_dataset, dataflow_server, capfd):
    dataflow_server.job_states = ["JOB_STATE_FAILED"]
    dataflow_server.job_messages = [("JOB_MESSAGE_ERROR", "Workflow failed: quota exceeded")]

    run_on_dataflow(
        raw_dataset,
        dataflow_server,
        beam_image=IMAGE,
        region="europe-west4",
        temp_location=f"gs://{TEST_BUCKET}/tmp",
        service_account_email=SERVICE_ACCOUNT,
        machine_type="n2-standard-8",
        max_num_workers=12,
        use_public_ips=False,
    )
    step_log = capfd.readouterr().out

    (job,) = dataflow_server.jobs.values()
    assert job["name"].startswith("cauce-transform-")
    assert job["location"] == "europe-west4"
    environment = job["environment"]
    assert environment["serviceAccountEmail"] == SERVICE_ACCOUNT
    (pool,) = environment["workerPools"]
    assert pool["machineType"] == "n2-standard-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 12
    assert pool["ipConfiguration"] == "WORKER_IP_PRIVATE"
    assert IMAGE in str(environment)
    assert all("authorization" not in {k.lower() for k in r.headers} for r in dataflow_server.requests)
    # The step's error names the job and its final state (kfp.local streams the step's log).
    assert job["id"] in step_log and "FAILED" in step_log


def test_dataflow_parameters_are_checked_before_any_job(kfp_local, raw_dataset, dataflow_server, capfd):
    run_on_dataflow(raw_dataset, dataflow_server, region="europe-west4", temp_location="/tmp/not-cloud-storage")
    assert dataflow_server.jobs == {}
    assert "temp_location" in capfd.readouterr().out
