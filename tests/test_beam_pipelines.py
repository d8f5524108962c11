"""Launching Beam pipelines on Dataflow: options, waiting, cancellation.

Dataflow cannot run here; these tests drive Beam's real DataflowRunner against
the local Dataflow + Cloud Storage stand-in (tests/fixtures/dataflow_server.py):
the real job submission, staging upload, state polling and cancel calls.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cauce.artifacts import CauceError
from cauce.beam_pipelines import dataflow_options, default_job_name, pipeline_flags, run_pipeline
from tests.fixtures.dataflow_server import TEST_BUCKET, DataflowServer, dataflow_server_fixture  # noqa: F401

PROJECT = "cauce-test"
REGION = "europe-west4"
SERVICE_ACCOUNT = "beam-runner@cauce-test.iam.gserviceaccount.com"


def options_for(server: DataflowServer, **overrides) -> dict:
    """Dataflow options pointed at the stand-in, without credentials (``no_auth``)."""
    arguments = {"project": PROJECT, "region": REGION, "temp_location": f"gs://{TEST_BUCKET}/tmp"}
    arguments.update(overrides)
    return dataflow_options(**arguments, extra={"dataflow_endpoint": server.endpoint, "no_auth": True})


def double(pipeline):
    import apache_beam as beam

    _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2)


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def job_polled(server: DataflowServer) -> bool:
    """The runner has submitted a job and is polling it (it is in the waiting loop)."""
    return any(request.method == "GET" and "/jobs/" in request.path for request in server.requests)


def test_submitted_job_carries_our_image_and_worker_settings(dataflow_server, caplog):
    image = "europe-docker.pkg.dev/cauce-test/cauce/cauce-beam@sha256:" + "ab" * 32
    options = options_for(
        dataflow_server,
        service_account_email=SERVICE_ACCOUNT,
        machine_type="n2-standard-4",
        max_num_workers=7,
        sdk_container_image=image,
        job_name="cauce-transform-test",
        labels={"team": "ml"},
        use_public_ips=False,
    )
    caplog.set_level("INFO", logger="cauce.beam_pipelines")
    run_pipeline(double, "DataflowRunner", options, poll_seconds=0.01)

    (creation,) = [r for r in dataflow_server.requests if r.method == "POST" and r.path.endswith("/jobs")]
    assert creation.path == f"/v1b3/projects/{PROJECT}/locations/{REGION}/jobs"
    job = creation.body
    assert job["name"] == "cauce-transform-test"
    assert job["labels"] == {"team": "ml"}
    environment = job["environment"]
    assert environment["serviceAccountEmail"] == SERVICE_ACCOUNT
    assert "use_runner_v2" in environment["experiments"]
    (pool,) = environment["workerPools"]
    assert pool["machineType"] == "n2-standard-4"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 7
    assert pool["ipConfiguration"] == "WORKER_IP_PRIVATE"
    # Our image is the SDK harness of every environment, and nothing but the
    # pipeline itself is staged: no Beam SDK tarball, no requirements.
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    assert pool.get("packages", []) == []
    sent_options = environment["sdkPipelineOptions"]["options"]
    assert sent_options["sdk_location"] == "container"
    assert sent_options["sdk_container_image"] == image
    (staged,) = dataflow_server.objects
    assert staged.startswith(f"gs://{TEST_BUCKET}/tmp/cauce-transform-test.") and staged.endswith("/pipeline.pb")

    from apache_beam.portability.api import beam_runner_api_pb2

    pipeline_proto = beam_runner_api_pb2.Pipeline.FromString(dataflow_server.objects[staged])
    environments = pipeline_proto.components.environments.values()
    assert {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image for e in environments} == {image}

    # No credential travels: every request is anonymous, no option names one.
    assert dataflow_server.requests and not any("authorization" in r.headers for r in dataflow_server.requests)
    assert not [key for key in sent_options if any(word in key.lower() for word in ("credential", "token", "secret", "password"))]

    job_id = next(iter(dataflow_server.jobs))
    assert f"https://console.cloud.google.com/dataflow/jobs/{REGION}/{job_id}?project={PROJECT}" in caplog.text
    assert dataflow_server.cancel_requests(job_id) == []


@pytest.mark.parametrize(
    ("final_state", "messages", "expected"),
    [
        (
            "JOB_STATE_FAILED",
            [
                ("JOB_MESSAGE_BASIC", "Workers started."),
                (
                    "JOB_MESSAGE_ERROR",
                    "Traceback (most recent call last):\n  File \"executor.py\", line 9\n"
                    "cauce.artifacts.CauceError: numeric feature 'fare' holds 'abc': expected numbers",
                ),
            ],
            "ended FAILED: numeric feature 'fare' holds 'abc': expected numbers",
        ),
        ("JOB_STATE_FAILED", [("JOB_MESSAGE_ERROR", "Workflow failed. Causes: quota exceeded")], "quota exceeded"),
        ("JOB_STATE_CANCELLED", [], "ended CANCELLED"),
    ],
)
def test_job_that_does_not_finish_is_an_error_naming_it(dataflow_server, final_state, messages, expected):
    dataflow_server.job_states = ["JOB_STATE_RUNNING", final_state]
    dataflow_server.job_messages = messages
    with pytest.raises(CauceError) as raised:
        run_pipeline(double, "DataflowRunner", options_for(dataflow_server), poll_seconds=0.01)
    (job_id,) = dataflow_server.jobs
    assert f"DataflowRunner job {job_id} " in str(raised.value)
    assert expected in str(raised.value)
    assert f"dataflow/jobs/{REGION}/{job_id}?project={PROJECT}" in str(raised.value)


_WAITING_STEP = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import apache_beam as beam
    from cauce.beam_pipelines import dataflow_options, run_pipeline
    options = dataflow_options("cauce-test", "europe-west4", sys.argv[2],
                               extra={"dataflow_endpoint": sys.argv[1], "no_auth": True})
    run_pipeline(lambda p: p | beam.Create([1]) | beam.Map(str), "DataflowRunner", options, poll_seconds=0.05)
    """
)


def test_sigterm_to_the_step_cancels_the_job(dataflow_server):
    """What Vertex/Kubeflow does when a step is cancelled: SIGTERM to its process."""
    dataflow_server.job_states = ["JOB_STATE_RUNNING"]  # runs until cancelled
    step = subprocess.Popen(
        [sys.executable, "-c", _WAITING_STEP, dataflow_server.endpoint, f"gs://{TEST_BUCKET}/tmp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STORAGE_EMULATOR_HOST": dataflow_server.storage_host},
    )
    try:
        wait_for(lambda: job_polled(dataflow_server) or step.poll() is not None, "the step to wait on its job")
        step.send_signal(signal.SIGTERM)
        _, stderr = step.communicate(timeout=60)
    finally:
        if step.poll() is None:
            step.kill()
    (job_id,) = dataflow_server.jobs
    assert step.returncode == 1, stderr[-3000:]
    assert len(dataflow_server.cancel_requests(job_id)) == 1
    assert dataflow_server.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"
    assert f"CauceError: the step was stopped (SIGTERM): DataflowRunner job {job_id} cancelled" in stderr
    assert f"cancelling job {job_id}: SIGTERM" in stderr


def test_sigterm_during_submission_cancels_the_job_once_it_has_an_id(dataflow_server):
    dataflow_server.job_states = ["JOB_STATE_RUNNING"]
    dataflow_server.create_delay = 0.3  # the signal lands while jobs.create is in flight

    def terminate_during_create():
        wait_for(lambda: any(r.method == "POST" and r.path.endswith("/jobs") for r in dataflow_server.requests), "jobs.create")
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_during_create, daemon=True).start()
    with pytest.raises(CauceError, match="stopped \\(SIGTERM\\)"):
        run_pipeline(double, "DataflowRunner", options_for(dataflow_server), poll_seconds=0.01)
    (job_id,) = dataflow_server.jobs
    assert len(dataflow_server.cancel_requests(job_id)) == 1
    assert signal.getsignal(signal.SIGTERM) is previous


def test_interrupt_while_waiting_cancels_the_job(dataflow_server):
    dataflow_server.job_states = ["JOB_STATE_RUNNING"]

    def interrupt_once_waiting():
        wait_for(lambda: job_polled(dataflow_server), "the job to be polled")
        _thread.interrupt_main()  # Ctrl-C in the main thread

    threading.Thread(target=interrupt_once_waiting, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(double, "DataflowRunner", options_for(dataflow_server), poll_seconds=0.01)
    (job_id,) = dataflow_server.jobs
    assert len(dataflow_server.cancel_requests(job_id)) == 1
    assert dataflow_server.jobs[job_id]["currentState"] == "JOB_STATE_CANCELLED"


def test_options_parse_into_beams_dataflow_settings(monkeypatch):
    from apache_beam.options.pipeline_options import (
        DebugOptions,
        GoogleCloudOptions,
        PipelineOptions,
        SetupOptions,
        WorkerOptions,
    )

    override = "us-docker.pkg.dev/acme/cauce/cauce-beam:1.2.3"
    monkeypatch.setenv("CAUCE_IMAGE_BEAM", override)
    options = dataflow_options(
        "acme-ml",
        "us-central1",
        "gs://acme-tmp/beam",
        staging_location="gs://acme-tmp/staging",
        max_num_workers=12.0,  # as KFP delivers numbers inside dicts
        network="beam-vpc",
        subnetwork="regions/us-central1/subnetworks/beam",
        use_public_ips=False,
    )
    parsed = PipelineOptions(pipeline_flags(options))
    cloud, worker = parsed.view_as(GoogleCloudOptions), parsed.view_as(WorkerOptions)
    assert (cloud.project, cloud.region, cloud.temp_location, cloud.staging_location) == (
        "acme-ml",
        "us-central1",
        "gs://acme-tmp/beam",
        "gs://acme-tmp/staging",
    )
    assert cloud.job_name.startswith("cauce-") and cloud.service_account_email is None
    assert worker.sdk_container_image == override
    assert (worker.max_num_workers, worker.network, worker.subnetwork, worker.use_public_ips) == (
        12,
        "beam-vpc",
        "regions/us-central1/subnetworks/beam",
        False,
    )
    assert parsed.view_as(SetupOptions).sdk_location == "container"
    assert "use_runner_v2" in parsed.view_as(DebugOptions).experiments


def test_default_job_names_are_unique_and_valid():
    names = {default_job_name("Transform_Taxi") for _ in range(20)}
    assert len(names) == 20
    assert all(name.startswith("transform-taxi-") for name in names)
    long_name = default_job_name("p" * 100)
    assert len(long_name) <= 63 and dataflow_options("acme-ml", "us-central1", "gs://acme-tmp/t", job_name=long_name)
    assert dataflow_options("acme-ml", "us-central1", "gs://acme-tmp/t")["job_name"] != dataflow_options("acme-ml", "us-central1", "gs://acme-tmp/t")["job_name"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"project": "Acme ML"}, "project"),
        ({"project": "ab"}, "project"),
        ({"region": "us central"}, "region"),
        ({"region": "us-central1-a"}, "region"),
        ({"temp_location": "/tmp/beam"}, "temp_location"),
        ({"temp_location": "gs://"}, "temp_location"),
        ({"staging_location": "s3://bucket/staging"}, "staging_location"),
        ({"service_account_email": "beam-runner"}, "service_account_email"),
        ({"machine_type": "big machine"}, "machine_type"),
        ({"max_num_workers": -1}, "max_num_workers"),
        ({"max_num_workers": 2.5}, "max_num_workers"),
        ({"sdk_container_image": "Not An Image!"}, "sdk_container_image"),
        ({"job_name": "Transform_Taxi"}, "job_name"),
        ({"job_name": "7-transform"}, "job_name"),
        ({"job_name": "t" * 64}, "job_name"),
        ({"job_name": "transform-"}, "job_name"),
        ({"job_name_prefix": "2024"}, "job_name_prefix"),
        ({"subnetwork": "a subnet"}, "subnetwork"),
        ({"use_public_ips": "no"}, "use_public_ips"),
        ({"labels": {"Team": "ml"}}, "labels"),
        ({"labels": {"team": "Machine Learning"}}, "labels"),
        ({"extra": {"credentials_file": "/secrets/key.json"}}, "credentials_file"),
        ({"extra": {"access_token": "ya29.x"}}, "access_token"),
        ({"extra": {"project": "other-project"}}, "project"),
    ],
)
def test_invalid_options_are_errors_naming_the_parameter(arguments, named):
    base = {"project": "acme-ml", "region": "us-central1", "temp_location": "gs://acme-tmp/beam"}
    with pytest.raises(CauceError, match=rf"^{named}|'{named}'"):
        dataflow_options(**{**base, **arguments})


def test_direct_runner_leaves_signal_handling_alone():
    from apache_beam.testing.util import assert_that, equal_to

    previous = signal.getsignal(signal.SIGTERM)

    def build(pipeline):
        import apache_beam as beam

        assert_that(pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2), equal_to([2, 4, 6]))

    run_pipeline(build, "DirectRunner", {})
    assert signal.getsignal(signal.SIGTERM) is previous


def test_one_options_dict_serves_consecutive_pipelines_of_a_step(dataflow_server):
    """A step may run several pipelines with one options dict (and job name), e.g. a retried
    step: Dataflow takes a job name again once the job that had it has ended."""
    options = options_for(dataflow_server, job_name="cauce-transform-run")
    run_pipeline(double, "DataflowRunner", options, poll_seconds=0.01)
    run_pipeline(double, "DataflowRunner", options, poll_seconds=0.01)
    assert [job["name"] for job in dataflow_server.jobs.values()] == ["cauce-transform-run"] * 2
    assert all(job["currentState"] == "JOB_STATE_DONE" for job in dataflow_server.jobs.values())


def test_a_job_name_taken_by_a_running_job_is_an_error_naming_it(dataflow_server):
    dataflow_server.add_running_job(PROJECT, REGION, "cauce-transform-run")  # another step's job
    with pytest.raises(CauceError, match="job_name 'cauce-transform-run' is taken"):
        run_pipeline(double, "DataflowRunner", options_for(dataflow_server, job_name="cauce-transform-run"))
    assert len(dataflow_server.jobs) == 1


def test_runner_options_pass_direct_runner_options_through_and_check_dataflow_ones():
    from cauce.beam_pipelines import runner_options

    direct = {"direct_num_workers": 2}
    assert runner_options("DirectRunner", direct, job_name_prefix="cauce-x") == direct
    dataflow = {"region": REGION, "temp_location": f"gs://{TEST_BUCKET}/tmp"}
    options = runner_options(
        "DataflowRunner",
        {"number_of_worker_harness_threads": 4},
        job_name_prefix="cauce-predict",
        project=PROJECT,
        dataflow=dataflow,
        beam_image="europe-docker.pkg.dev/cauce-test/cauce/cauce-beam:1.0",
    )
    assert options["job_name"].startswith("cauce-predict-") and options["project"] == PROJECT
    assert options["number_of_worker_harness_threads"] == 4
    assert options["sdk_container_image"] == "europe-docker.pkg.dev/cauce-test/cauce/cauce-beam:1.0"
    named = runner_options(
        "DataflowRunner", {}, job_name_prefix="cauce-x", project=PROJECT,
        dataflow={**dataflow, "sdk_container_image": "example.com/beam:2"}, beam_image="example.com/beam:1",
    )  # fmt: skip
    assert named["sdk_container_image"] == "example.com/beam:2"
    with pytest.raises(CauceError, match="temp_location"):
        runner_options("DataflowRunner", {}, job_name_prefix="cauce-x", project=PROJECT, dataflow={"region": REGION})
    with pytest.raises(CauceError, match="temp_location"):
        runner_options("DataflowRunner", {}, job_name_prefix="cauce-x", project=PROJECT, dataflow={**dataflow, "temp_location": "/tmp"})
    # A misspelt field is refused on every runner, before any job.
    with pytest.raises(CauceError, match="max_workers"):
        runner_options("DirectRunner", {}, job_name_prefix="cauce-x", dataflow={"max_workers": 3})


def test_the_dataflow_fields_are_dataflow_options_own():
    import inspect

    from cauce.beam_pipelines import DATAFLOW_FIELDS

    parameters = set(inspect.signature(dataflow_options).parameters) - {"project", "job_name_prefix", "extra"}
    assert set(DATAFLOW_FIELDS) == parameters
