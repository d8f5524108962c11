"""evaluate with a Beam runner (``runner="DirectRunner"`` / ``"DataflowRunner"``): the same
evaluation as in process, the exact metrics included, merged from per-batch aggregates
(components/evaluate/metrics.py); and the Dataflow launch against the Dataflow stand-in."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cauce import data
from cauce.artifacts import CauceError
from cauce.beam_pipelines import runner_options
from cauce.components.evaluate import dataflow
from cauce.components.evaluate import metrics as exact
from cauce.components.evaluate.executor import EVALUATION_FILE, TFMA_DIR, run_evaluate
from cauce.demo import DEMO_LABEL, generate_taxi_trips
from tests.fixtures.dataflow_server import TEST_BUCKET, dataflow_server_fixture  # noqa: F401
from tests.test_evaluate import SLICE, SLICE_WITH_NULLS, build_model_bundle

SLICES = [SLICE, SLICE_WITH_NULLS, f"{SLICE_WITH_NULLS},{SLICE}"]
# Where the two paths' outputs may differ: the Beam path's TFMA output is the published attempt.
PATH_ONLY = {"tfma_output"}


def split_in_files(directory, table: pa.Table, rows_per_file: int) -> str:
    """A cauce Dataset with one split, ``eval``, in several Parquet files (so Beam merges
    partial aggregates of several batches)."""
    (directory / "eval").mkdir(parents=True)
    for index, start in enumerate(range(0, table.num_rows, rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), directory / "eval" / f"part-{index:05d}.parquet")
    data.write_schema(directory, table.schema, {"eval": table.num_rows})
    return str(directory)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-beam")
    candidate = build_model_bundle(root / "candidate", generate_taxi_trips(3000, seed=1))
    champion = build_model_bundle(root / "champion", generate_taxi_trips(3000, seed=5), coefficient_scale=0.3)
    return str(candidate), str(champion)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_merged_aggregates_give_the_metrics_of_all_rows_bit_for_bit(task):
    rng = np.random.default_rng(7)
    rows = 5000
    if task == "binary":
        labels = rng.integers(0, 2, rows)
        outputs = np.round(rng.random(rows), 3)  # repeated scores: ties across parts
    elif task == "multiclass":
        labels = rng.integers(0, 3, rows)
        outputs = rng.dirichlet([1, 1, 1], rows)
        outputs[::7] = outputs[0]
    else:
        labels = rng.normal(size=rows)
        outputs = np.round(labels + rng.normal(size=rows), 2)
    whole = exact.metrics_of(task, exact.aggregate(task, labels, outputs))
    cuts = [0, 13, 900, 901, 2500, rows]
    parts = [exact.aggregate(task, labels[a:b], outputs[a:b]) for a, b in zip(cuts, cuts[1:])]
    forward = exact.merge([exact.merge(parts[:2]), exact.merge(parts[2:])])
    backward = exact.merge(parts[::-1])
    for merged in (forward, backward):
        assert exact.metrics_of(task, merged) == whole  # identical, not approximately equal
    np.testing.assert_array_equal(forward["counts"], backward["counts"])


def test_the_direct_runner_writes_what_the_in_process_run_writes(models, tmp_path):
    candidate, champion = models
    table = generate_taxi_trips(4000, seed=2)
    labels = table.column(DEMO_LABEL).to_pylist()
    for index in range(0, len(labels), 97):
        labels[index] = None  # rows without a label: left out and counted on both paths
    table = table.set_column(table.schema.get_field_index(DEMO_LABEL), DEMO_LABEL, pa.array(labels, pa.int64()))
    dataset = split_in_files(tmp_path / "dataset", table, 700)
    arguments = dict(
        slice_features=SLICES, thresholds={"auc": 0.6}, slice_thresholds={"binary_accuracy": 0.3},
        champion_model_dir=champion, change_thresholds={"auc": 0.0},
    )
    local = run_evaluate(candidate, dataset, tmp_path / "local", **arguments)
    on_beam = run_evaluate(candidate, dataset, tmp_path / "beam", runner="DirectRunner", **arguments)

    assert on_beam["rows_missing_label"] == local["rows_missing_label"] == 42
    assert {key: value for key, value in on_beam.items() if key not in PATH_ONLY} == {
        key: value for key, value in local.items() if key not in PATH_ONLY
    }
    written = {
        name: json.loads((tmp_path / name / EVALUATION_FILE).read_text()) for name in ("local", "beam")
    }
    assert written["beam"] == json.loads(json.dumps(on_beam, default=str))
    assert {k: v for k, v in written["beam"].items() if k not in PATH_ONLY} == {
        k: v for k, v in written["local"].items() if k not in PATH_ONLY
    }
    # TFMA's output is published by its manifest, and that is what evaluation.json names.
    manifest = json.loads((tmp_path / "beam" / TFMA_DIR / dataflow.MANIFEST).read_text())
    assert on_beam["tfma_output"] == f"{TFMA_DIR}/{manifest['attempt']}"
    assert (tmp_path / "beam" / "report.html").is_file()


def test_the_direct_runner_refuses_what_the_in_process_run_refuses(models, tmp_path):
    candidate, _ = models
    table = generate_taxi_trips(500, seed=3)
    one_class = table.set_column(
        table.schema.get_field_index(DEMO_LABEL), DEMO_LABEL, pa.array(np.ones(table.num_rows, dtype=np.int64))
    )
    dataset = split_in_files(tmp_path / "dataset", one_class, 200)
    for runner in ("", "DirectRunner"):
        with pytest.raises(CauceError, match="holds only the class 1 in split 'eval'"):
            run_evaluate(candidate, dataset, tmp_path / f"out-{runner}", thresholds={"auc": 0.5}, runner=runner)
        assert not (tmp_path / f"out-{runner}").exists()


def test_a_failed_dataflow_job_fails_the_step_with_its_id_and_error(models, tmp_path, dataflow_server):  # noqa: F811
    candidate, _ = models
    dataflow_server.job_states = ["JOB_STATE_FAILED"]
    dataflow_server.job_messages = [("JOB_MESSAGE_ERROR", "Workflow failed: quota exceeded")]
    dataset = split_in_files(tmp_path / "dataset", generate_taxi_trips(600, seed=4), 300)
    settings = {
        "region": "europe-west4", "temp_location": f"gs://{TEST_BUCKET}/tmp",
        "sdk_container_image": "us-docker.pkg.dev/cauce-test/cauce/cauce-tf:test",
    }
    # The component's mapping of its parameters (runner_options), to the stand-in.
    options = runner_options(
        "DataflowRunner", {"dataflow_endpoint": dataflow_server.endpoint, "no_auth": True},
        job_name_prefix="cauce-evaluate", project="cauce-test", dataflow=settings,
    )
    with pytest.raises(CauceError) as failure:
        run_evaluate(
            candidate, dataset, tmp_path / "evaluation", slice_features=[SLICE], thresholds={"auc": 0.5},
            runner="DataflowRunner", pipeline_options=options, work_uri=f"gs://{TEST_BUCKET}/tmp/work",
            output_uri=f"gs://{TEST_BUCKET}/evaluation",
        )
    [job] = dataflow_server.jobs.values()
    assert job["id"] in str(failure.value) and "quota exceeded" in str(failure.value)
    assert job["name"].startswith("cauce-evaluate-")
    assert not [uri for uri in dataflow_server.objects if uri.endswith(dataflow.MANIFEST)]  # nothing published
    assert not (tmp_path / "evaluation" / EVALUATION_FILE).exists()


def test_dataflow_needs_gcs_locations(models, tmp_path):
    candidate, _ = models
    dataset = split_in_files(tmp_path / "dataset", generate_taxi_trips(300, seed=4), 300)
    with pytest.raises(CauceError, match="runner=DataflowRunner needs a work_uri and an output_uri"):
        run_evaluate(candidate, dataset, tmp_path / "out", thresholds={"auc": 0.5}, runner="DataflowRunner")


def test_group_sums_are_the_same_number_however_beams_batches_merge():
    """The plots' group means: exact partials merged in any grouping and order give
    math.fsum of all the values (float64 scores, whose plain sums depend on the order)."""
    from cauce.components.evaluate.executor import exact_partials

    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random(5000), rng.random(50) * 1e-12, 1 - rng.random(50) * 1e-15])
    expected = math.fsum(scores)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(scores)
        cuts = sorted(np.random.default_rng(seed + 10).choice(len(order), 7, replace=False))
        merged: list[float] = []
        for part in np.split(order, cuts)[::-1]:
            merged = exact_partials(exact_partials(part), merged)
        assert math.fsum(merged) == expected
    assert sum(np.random.default_rng(1).permutation(scores)) != expected or sum(scores) != expected  # plain sums do differ
