"""validate's statistics as a Beam combiner equal the in-process statistics, on the
FnApiRunner, whatever order Beam merges the partial results in; and the Dataflow launch
goes through transform's run_pipeline against the Dataflow stand-in (bench/bench_scale.py
compares the two paths on 5 M rows)."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce import data
from cauce.components.validate.beam_statistics import SplitStatisticsFn, compute_statistics_beam
from cauce.components.validate.statistics import compute_statistics, split_columns, split_statistics
from tests.fixtures.dataflow_server import TEST_BUCKET, dataflow_server_fixture  # noqa: F401


def make_dataset(root, rows: int, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    fare = np.round(rng.gamma(2.0, 6.0, rows), 1)
    fare[rng.random(rows) < 0.02] = np.nan
    table = pa.table({
        "fare": fare,  # ~1000 distinct values: below SUMMARY_SIZE, so quantiles are exact
        "hour": rng.integers(0, 24, rows),
        "payment": pa.array(rng.choice(["card", "cash", "mobile", None], rows, p=[0.5, 0.3, 0.15, 0.05])),
        "company": pa.array([f"c{i}" for i in rng.integers(0, 300, rows)]),
    })
    counts = {}
    for split, part in (("train", table.slice(0, rows * 4 // 5)), ("eval", table.slice(rows * 4 // 5))):
        # Several files and batches, so Beam really combines partial accumulators.
        for index, start in enumerate(range(0, part.num_rows, 30_000)):
            data.write_split(root / f"s{index}", split, part.slice(start, 30_000))
        counts[split] = part.num_rows
    merged = root / "dataset"
    for split in counts:
        (merged / split).mkdir(parents=True)
        for index, shard_dir in enumerate(sorted(root.glob("s*"))):
            for part in sorted((shard_dir / split).glob("*.parquet")):
                part.rename(merged / split / f"part-{index:05d}-{part.name}")
    data.write_schema(merged, table.schema, counts)
    return str(merged)


def assert_statistics_equal(beam_stats, local_stats):
    assert [d.name for d in beam_stats.datasets] == [d.name for d in local_stats.datasets]
    for got, want in zip(beam_stats.datasets, local_stats.datasets):
        assert got.num_examples == want.num_examples
        for got_feature, want_feature in zip(got.features, want.features):
            if want_feature.HasField("num_stats"):
                g, w = got_feature.num_stats, want_feature.num_stats
                # Parallel mean/variance updates may round differently in the last bits.
                assert g.mean == pytest.approx(w.mean, rel=1e-12)
                assert g.std_dev == pytest.approx(w.std_dev, rel=1e-9)
                g.mean = w.mean
                g.std_dev = w.std_dev
            assert got_feature == want_feature  # everything else: identical


def test_the_combiner_gives_the_in_process_statistics(tmp_path):
    dataset = make_dataset(tmp_path, 150_000)
    local, _ = compute_statistics(dataset)
    on_beam = compute_statistics_beam(dataset, str(tmp_path / "work"))
    assert_statistics_equal(on_beam, local)


def test_merging_is_order_independent(tmp_path):
    dataset = make_dataset(tmp_path, 60_000)
    columns = split_columns(dataset, "train")[0]
    fn = SplitStatisticsFn(columns)
    batches = list(ds.dataset(f"{dataset}/train", format="parquet").to_batches(batch_size=7_000))
    partials = [fn.add_input(fn.create_accumulator(), batch) for batch in batches]
    forward = fn.merge_accumulators([fn.merge_accumulators(partials[:3]), *partials[3:]])
    partials = [fn.add_input(fn.create_accumulator(), batch) for batch in reversed(batches)]
    backward = fn.merge_accumulators(partials)
    as_list = statistics_pb2.DatasetFeatureStatisticsList
    assert_statistics_equal(
        as_list(datasets=[split_statistics("train", backward[0], columns, backward[1])]),
        as_list(datasets=[split_statistics("train", forward[0], columns, forward[1])]),
    )


def test_a_failed_dataflow_job_fails_with_its_id_and_error(tmp_path, dataflow_server):  # noqa: F811
    from cauce.artifacts import CauceError

    dataflow_server.job_states = ["JOB_STATE_FAILED"]
    dataflow_server.job_messages = [("JOB_MESSAGE_ERROR", "Workflow failed: quota exceeded")]
    dataset = make_dataset(tmp_path, 2_000)
    options = {
        "project": "cauce-test", "region": "europe-west4", "temp_location": f"gs://{TEST_BUCKET}/tmp",
        "dataflow_endpoint": dataflow_server.endpoint, "no_auth": True, "job_name": "cauce-statistics-test",
        "sdk_container_image": "us-docker.pkg.dev/cauce-test/cauce/cauce-beam:test",
    }
    with pytest.raises((CauceError, RuntimeError)) as failure:
        compute_statistics_beam(dataset, f"gs://{TEST_BUCKET}/work", runner="DataflowRunner",
                                pipeline_options=options)
    [job] = dataflow_server.jobs.values()
    assert job["id"] in str(failure.value) and "quota exceeded" in str(failure.value)
    assert job["name"] == "cauce-statistics-test"


def test_run_validate_on_beam_writes_what_the_in_process_run_writes(tmp_path):
    import json

    from cauce.components.validate.executor import run_validate

    dataset = make_dataset(tmp_path, 90_000)
    results = {}
    for runner in ("", "DirectRunner"):
        out = tmp_path / (runner or "local")
        results[runner] = run_validate(
            dataset, str(out / "statistics"), str(out / "schema"), str(out / "anomalies"), str(out / "view.html"),
            on_anomaly="warn", runner=runner,
        )
    local, on_beam = results[""], results["DirectRunner"]
    assert on_beam.details == local.details and on_beam.split_rows == local.split_rows
    assert json.dumps(on_beam.summary(), sort_keys=True) == json.dumps(local.summary(), sort_keys=True)
    read = statistics_pb2.DatasetFeatureStatisticsList.FromString
    assert_statistics_equal(
        read((tmp_path / "DirectRunner" / "statistics" / "FeatureStats.pb").read_bytes()),
        read((tmp_path / "local" / "statistics" / "FeatureStats.pb").read_bytes()),
    )
    for name in ("schema/schema.pbtxt", "anomalies/Split-eval/anomalies.pbtxt"):
        assert (tmp_path / "DirectRunner" / name).read_text() == (tmp_path / "local" / name).read_text()
