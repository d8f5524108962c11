"""monitor's histograms as Beam combiners give the in-process drift numbers, on the
FnApiRunner, whatever order Beam merges partial results in; past the exact bound they are
TFDV-approximate; the Dataflow launch goes through run_pipeline against the Dataflow
stand-in (bench/bench_scale.py compares the two paths on 5 M rows)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from cauce.artifacts import CauceError
from cauce.components.monitor import beam_histograms
from cauce.components.monitor.beam_histograms import FeatureProfilesFn, NumericValueCounts, drift_on_beam
from cauce.components.monitor.executor import REPORT_JSON, run_monitor
from cauce.tfdv_histograms import present_sorted, standard_histogram
from tests.fixtures.dataflow_server import TEST_BUCKET, dataflow_server_fixture  # noqa: F401
from tests.test_monitor import write_baseline, write_request_log

NUMERIC, CATEGORICAL = ["fare", "miles", "hour"], ["payment", "area"]


def baseline_table(rows: int, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    fare = rng.gamma(2.0, 6.0, rows)  # continuous: every value distinct
    fare[rng.random(rows) < 0.03] = np.nan
    miles = np.round(rng.exponential(3.0, rows), 2)
    miles[:3] = [np.inf, -np.inf, np.inf]
    return pa.table({
        "fare": fare,
        "miles": miles,
        "hour": rng.integers(0, 24, rows),
        "payment": pa.array(rng.choice(["card", "cash", "mobile", None], rows, p=[0.5, 0.3, 0.15, 0.05])),
        "area": pa.array([str(i) for i in rng.integers(0, 77, rows)]),
    })


def write_logs(log_dir, rows: int, seed: int = 9) -> None:
    """Requests over two hours in three files: the second hour drifts, some instances lack
    a feature, hours come as numbers and as text, areas as numbers (one category with "7")."""
    rng = np.random.default_rng(seed)
    for file_number in range(3):
        requests = []
        for number in range(rows // 30):
            hour = 10 + (number % 2)
            instances = []
            for _ in range(10):
                instance = {
                    "fare": float(rng.gamma(2.0, 6.0 if hour == 10 else 9.0)),
                    "miles": round(float(rng.exponential(3.0)), 2),
                    "hour": int(rng.integers(0, 24)) if rng.random() < 0.8 else str(int(rng.integers(0, 24))),
                    "payment": str(rng.choice(["card", "cash", "mobile"] if hour == 10 else ["cash", "mobile"])),
                    "area": int(rng.integers(0, 77)),
                }
                if rng.random() < 0.05:
                    del instance["payment"]
                instances.append(instance)
            requests.append((f"2024-05-01T{hour}:{number % 60:02d}:00Z", instances))
        write_request_log(log_dir, requests, name=f"requests-{file_number}.jsonl")


@pytest.fixture
def monitored(tmp_path):
    baseline = write_baseline(tmp_path / "baseline", baseline_table(40_000))
    write_logs(tmp_path / "logs", 6_000)
    return baseline, tmp_path / "logs"


def run_both(tmp_path, baseline, logs, **kwargs):
    reports = []
    for runner in ("", "DirectRunner"):
        out = tmp_path / f"out-{runner or 'local'}"
        run_monitor(str(baseline), "train", str(logs), str(out), NUMERIC, CATEGORICAL, runner=runner, **kwargs)
        report = json.loads((out / REPORT_JSON).read_text())
        report.pop("generated_at")
        reports.append(report)
    return reports


def test_the_beam_path_gives_the_in_process_report(tmp_path, monitored):
    baseline, logs = monitored
    local, on_beam = run_both(
        tmp_path, baseline, logs,
        window_start="2024-05-01T11:00:00Z", previous_window_start="2024-05-01T10:00:00Z",
        previous_window_end="2024-05-01T11:00:00Z", thresholds={"hour": 0.05},
    )
    assert local["flagged"]["drift_detected"]  # the second hour drifts
    assert on_beam == local  # every number, histogram and verdict, bit for bit


def test_an_empty_window_is_reported_on_beam_too(tmp_path, monitored):
    baseline, logs = monitored
    local, on_beam = run_both(tmp_path, baseline, logs, window_start="2030-01-01T00:00:00Z")
    assert on_beam["no_requests"] and on_beam == local


def test_merging_is_order_independent_and_exact():
    table = baseline_table(30_000)
    fn = FeatureProfilesFn(NUMERIC, CATEGORICAL, "baseline")
    batches = table.to_batches(max_chunksize=4_000)
    partials = [fn.add_input(fn.create_accumulator(), batch) for batch in batches]
    forward = fn.extract_output(fn.merge_accumulators([fn.merge_accumulators(partials[:3]), *partials[3:]]))
    partials = [fn.add_input(fn.create_accumulator(), batch) for batch in reversed(batches)]
    backward = fn.extract_output(fn.merge_accumulators(partials[::2] + partials[1::2]))
    for name in NUMERIC:
        want = standard_histogram(present_sorted(table.column(name).to_numpy(zero_copy_only=False)))
        for got in (forward.numeric[name].histogram, backward.numeric[name].histogram):
            for field in ("low", "high", "count", "point_values", "point_counts"):
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
            assert got.infinite_count == want.infinite_count
    assert forward.approximate == backward.approximate == []


def test_past_the_exact_bound_the_histogram_is_tfdv_approximate(monkeypatch):
    monkeypatch.setattr(beam_histograms, "EXACT_VALUES", 5_000)
    values = np.random.default_rng(1).normal(10, 3, 200_000)
    counts = NumericValueCounts()
    for chunk in np.array_split(values, 40):
        counts.add(chunk)
    assert not counts.exact
    got, want = counts.profile().histogram, standard_histogram(np.sort(values))
    np.testing.assert_array_equal(got.low, want.low)
    assert np.abs(got.count - want.count).max() < 0.01 * values.size  # TFDV's sketch: eps = 1 %


def test_bad_input_is_named_before_any_pipeline(tmp_path, monitored):
    baseline, logs = monitored
    with pytest.raises(CauceError, match="'tip' is not in the baseline data"):
        drift_on_beam(str(baseline), "train", str(logs), ["tip"], [])
    with pytest.raises(CauceError, match="does not exist"):
        drift_on_beam(str(baseline), "train", str(tmp_path / "nowhere"), ["fare"], [])
    with pytest.raises(CauceError, match="JSON Lines"):
        drift_on_beam(str(baseline), "train", "bq://p.d.t", ["fare"], [])


def test_a_failed_dataflow_job_fails_with_its_id_and_error(tmp_path, monitored, dataflow_server):  # noqa: F811
    baseline, logs = monitored
    dataflow_server.job_states = ["JOB_STATE_FAILED"]
    dataflow_server.job_messages = [("JOB_MESSAGE_ERROR", "Workflow failed: quota exceeded")]
    options = {
        "project": "cauce-test", "region": "europe-west4", "temp_location": f"gs://{TEST_BUCKET}/tmp",
        "dataflow_endpoint": dataflow_server.endpoint, "no_auth": True, "job_name": "cauce-monitor-test",
        "sdk_container_image": "us-docker.pkg.dev/cauce-test/cauce/cauce-beam:test",
    }
    with pytest.raises(CauceError) as failure:
        run_monitor(str(baseline), "train", str(logs), str(tmp_path / "out"), NUMERIC, CATEGORICAL,
                    runner="DataflowRunner", pipeline_options=options, work_uri=f"gs://{TEST_BUCKET}/work")
    [job] = dataflow_server.jobs.values()
    assert job["id"] in str(failure.value) and "quota exceeded" in str(failure.value)
    assert job["name"] == "cauce-monitor-test"
    assert not (tmp_path / "out").exists()
