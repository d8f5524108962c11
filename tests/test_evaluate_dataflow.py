"""Evaluate's TFMA run as one Beam pipeline (components/evaluate/dataflow.py): the same
example counts and plots as the in-process path; its output is published to gs:// (the
Cloud Storage emulator) with a manifest that readers require; a failed Dataflow job (the
stand-in) fails with its id and publishes nothing."""

import json

import pytest

from cauce.artifacts import CauceError
from cauce.components.evaluate import dataflow
from cauce.components.evaluate.executor import TFMA_DIR, run_evaluate
from tests.fixtures.dataflow_server import TEST_BUCKET, dataflow_server_fixture  # noqa: F401
from tests.fixtures.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401
from tests.test_evaluate import SLICE, SLICE_WITH_NULLS, bundle  # noqa: F401

SLICES = [SLICE, SLICE_WITH_NULLS]


def assert_same_plots(on_beam: dict, summary: dict) -> None:
    assert on_beam["roc"] == summary["roc"]
    assert len(on_beam["calibration"]) == len(summary["calibration"])
    for got, want in zip(on_beam["calibration"], summary["calibration"]):
        assert got["count"] == want["count"] and got["positive_rate"] == want["positive_rate"]
        # a group's mean score: a sum over workers here, Arrow's mean in process
        assert got["mean_score"] == pytest.approx(want["mean_score"], rel=1e-12)
    counts = on_beam["example_counts"]
    assert counts[None] == summary["metrics"]["example_count"]
    for slice_entry in summary["slices"]:
        key = (slice_entry["feature"], slice_entry["value"])
        assert counts[key] == slice_entry["metrics"]["example_count"], key


def test_the_beam_run_gives_the_in_process_plots_and_counts(bundle, tmp_path):  # noqa: F811
    model_dir, dataset_dir, _ = bundle
    summary = run_evaluate(model_dir, dataset_dir, tmp_path / "local", slice_features=SLICES, thresholds={"auc": 0.5})
    on_beam = dataflow.run_tfma_beam(model_dir, dataset_dir, "eval", SLICES, str(tmp_path / "beam"))
    assert_same_plots(on_beam, summary)


def test_publishing_on_gcs_and_readers_refuse_anything_else(gcs_bucket):  # noqa: F811
    """The publish protocol on the Cloud Storage emulator. (TFMA's own writer cannot run
    against the emulator: Beam's file sinks finalize with the JSON batch API, which
    fake-gcs-server does not serve; the attempt's files are written here as a worker would.)"""
    from apache_beam.io.filesystems import FileSystems

    tfma_uri = gcs_bucket.uri("evaluation/tfma")

    def write_attempt(contents: dict[str, bytes]) -> str:
        attempt = dataflow.new_attempt(tfma_uri)
        for name, data in contents.items():
            with FileSystems.create(f"{attempt}/{name}") as handle:
                handle.write(data)
        return attempt

    unfinished = write_attempt({"metrics-00000-of-00001": b"partial"})  # a job that died: never published
    with pytest.raises(CauceError, match="refusing an unpublished output"):
        dataflow.published_tfma_dir(tfma_uri)
    first = write_attempt({"metrics-00000-of-00001": b"m" * 100, "plots-00000-of-00001": b"p" * 50})
    manifest = dataflow.publish(tfma_uri, first)
    assert manifest["files"] == [{"path": "metrics-00000-of-00001", "size": 100}, {"path": "plots-00000-of-00001", "size": 50}]
    assert dataflow.published_tfma_dir(tfma_uri) == first
    # A rerun publishes a new attempt by replacing the one manifest object; sweeping then
    # removes the attempts it does not name.
    second = write_attempt({"metrics-00000-of-00001": b"n" * 120})
    dataflow.publish(tfma_uri, second)
    assert dataflow.published_tfma_dir(tfma_uri) == second
    assert dataflow.sweep_attempts(tfma_uri) == sorted([first, unfinished])
    assert FileSystems.match([f"{tfma_uri}/attempt-*/*"])[0].metadata_list[0].path.startswith(second)
    # A published file changed afterwards is refused.
    with FileSystems.create(f"{second}/metrics-00000-of-00001") as handle:
        handle.write(b"truncated")
    with pytest.raises(CauceError, match="refusing a damaged output"):
        dataflow.published_tfma_dir(tfma_uri)


def test_a_local_output_without_its_manifest_is_refused(bundle, tmp_path):  # noqa: F811
    model_dir, dataset_dir, _ = bundle
    on_beam = dataflow.run_tfma_beam(model_dir, dataset_dir, "eval", SLICES, str(tmp_path / "beam"))
    tfma_dir = tmp_path / "beam" / TFMA_DIR
    manifest = json.loads((tfma_dir / dataflow.MANIFEST).read_text())
    assert on_beam["tfma_output"] == str(tfma_dir / manifest["attempt"])
    (tfma_dir / dataflow.MANIFEST).unlink()
    with pytest.raises(CauceError, match="refusing an unpublished output"):
        dataflow.read_tfma_results(str(tfma_dir), "binary")


def test_a_failed_dataflow_job_fails_with_its_id_and_publishes_nothing(bundle, dataflow_server):  # noqa: F811
    model_dir, dataset_dir, _ = bundle
    dataflow_server.job_states = ["JOB_STATE_FAILED"]
    dataflow_server.job_messages = [("JOB_MESSAGE_ERROR", "Workflow failed: quota exceeded")]
    options = {
        "project": "cauce-test", "region": "europe-west4", "temp_location": f"gs://{TEST_BUCKET}/tmp",
        "dataflow_endpoint": dataflow_server.endpoint, "no_auth": True, "job_name": "cauce-evaluate-test",
        "sdk_container_image": "us-docker.pkg.dev/cauce-test/cauce/cauce-tf:test",
    }
    with pytest.raises(CauceError) as failure:
        dataflow.run_tfma_beam(model_dir, dataset_dir, "eval", SLICES, f"gs://{TEST_BUCKET}/evaluation",
                               runner="DataflowRunner", pipeline_options=options)
    [job] = dataflow_server.jobs.values()
    assert job["id"] in str(failure.value) and "quota exceeded" in str(failure.value)
    assert not [uri for uri in dataflow_server.objects if uri.endswith(dataflow.MANIFEST)]
