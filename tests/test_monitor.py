"""Tests of the monitor step: TFDV's drift numbers, request-log reading, the report, the KFP shell."""

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.monitor.executor import (
    REPORT_HTML,
    REPORT_JSON,
    compute_drift,
    linf_categorical,
    read_request_log,
    report_metadata,
    run_monitor,
)
from cauce.tfdv_histograms import jensen_shannon_numeric

# ----------------------------------------------------------------- helpers


def write_baseline(directory: Path, table: pa.Table, split: str = "train") -> Path:
    with atomic_dir(directory) as out:
        rows = data.write_split(out, split, table)
        data.write_schema(out, table.schema, {split: rows})
    return directory


def write_request_log(
    log_dir: Path, requests: list[tuple[str, list[dict]]], name: str = "requests-a.jsonl"
) -> None:
    """One JSONL line per (logging_time, instances), in the serving process's format."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / name, "a") as handle:
        for number, (logged_at, instances) in enumerate(requests):
            record = {
                "endpoint": "local",
                "deployed_model_id": "m1",
                "logging_time": logged_at,
                "request_id": f"r{number}",
                "request_payload": [json.dumps(instance) for instance in instances],
                "response_payload": [json.dumps({"label": 0, "score": 0.1}) for _ in instances],
            }
            handle.write(json.dumps(record) + "\n")


def kl_to_mixture(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence of two already-aligned, normalized histograms, written out."""
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(distribution):
        return sum(a * math.log2(a / mixture) for a, mixture in zip(distribution, m) if a > 0)

    return (kl(p) + kl(q)) / 2


# ------------------------------------------- reference: TFDV's algorithm on tfx-bsl's sketch
#
# A bucket-by-bucket rendering of what TFDV 1.16 does (basic_stats_generator + quantiles_util
# for the STANDARD histogram, anomalies/metrics.cc for the divergence), fed by the real
# QuantilesSketch(eps=0.01) that TFDV uses. Loops instead of vectorized code, on purpose.


def _sketch_quantiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sketches = pytest.importorskip("tfx_bsl.sketches")
    sketch = sketches.QuantilesSketch(eps=0.01, max_num_elements=1 << 32, num_streams=1)
    sketch.AddValues(pa.array(values))
    quantiles, cumulative = sketch.GetQuantilesAndCumulativeWeights(1000)
    return quantiles.flatten().to_numpy(), cumulative.flatten().to_numpy()


def reference_standard_histogram(values) -> list[tuple[float, float, float]] | None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    quantiles, cumulative = _sketch_quantiles(values)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [(math.inf, -math.inf, float(cumulative[-1]))]
    finite_min, finite_max = float(finite.min()), float(finite.max())
    num_pos_inf = int(np.isposinf(values).sum())
    q, c = [float(x) for x in quantiles], [float(x) for x in cumulative]
    num_neg_inf = 0.0
    while q and q[0] == -math.inf:
        num_neg_inf = c.pop(0)
        q.pop(0)
    c = [x - num_neg_inf for x in c]
    if num_pos_inf:
        finite_count = c[-1] - num_pos_inf
        kept = [i for i, x in enumerate(q) if x != math.inf]
        q, c = [q[i] for i in kept] + [finite_max], [c[i] for i in kept] + [finite_count]

    # QUANTILES histogram: buckets between consecutive quantiles; buckets ending on the same
    # value share their count; the count of the minimum goes to the buckets equal to the first.
    buckets = [[q[i - 1], q[i], c[i] - c[i - 1]] for i in range(1, len(q))]
    start = 0
    while start < len(buckets):
        stop = start
        while stop + 1 < len(buckets) and buckets[stop + 1][1] == buckets[start][1]:
            stop += 1
        shared = sum(bucket[2] for bucket in buckets[start : stop + 1]) / (stop - start + 1)
        for bucket in buckets[start : stop + 1]:
            bucket[2] = shared
        start = stop + 1
    leading = 0
    while leading < len(buckets) and buckets[leading][:2] == buckets[0][:2]:
        leading += 1
    for bucket in buckets[:leading]:
        bucket[2] += c[0] / leading

    # STANDARD histogram: 10 equal-width intervals, each bucket's count spread by overlap.
    edges = (
        [finite_min, finite_max]
        if finite_min == finite_max
        else list(np.linspace(finite_min, finite_max, 11))
    )
    histogram = [(-math.inf, -math.inf, num_neg_inf)] if num_neg_inf else []
    for index, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        total = 0.0
        for low, high, count in buckets:
            if low == high:
                if a < low <= b or (index == 0 and low == a):
                    total += count
            else:
                total += count * max(0.0, min(b, high) - max(a, low)) / (high - low)
        histogram.append((a, b, total))
    if num_pos_inf:
        histogram.append((math.inf, math.inf, float(num_pos_inf)))
    return histogram


def reference_jensen_shannon(baseline, current) -> float:
    histograms = [reference_standard_histogram(baseline), reference_standard_histogram(current)]
    if None in histograms:
        return math.nan
    parts = []
    for histogram in histograms:
        regular, points, infinite = [], {}, 0.0
        for low, high, count in histogram:
            if not (math.isfinite(low) and math.isfinite(high)):
                infinite += count
            elif low == high:
                points[low] = points.get(low, 0.0) + count
            else:
                regular.append((low, high, count))
        parts.append((regular, points, infinite))
    grid = sorted({edge for regular, _, _ in parts for low, high, _ in regular for edge in (low, high)})
    aligned = []
    for regular, _, _ in parts:
        cells = []
        for a, b in zip(grid[:-1], grid[1:]):
            owner = [(low, high, count) for low, high, count in regular if low <= a and b <= high]
            cells.append((b - a) / (owner[0][1] - owner[0][0]) * owner[0][2] if owner else 0.0)
        aligned.append(cells)
    for value in sorted(set(parts[0][1]) | set(parts[1][1])):
        for cells, (_, points, _) in zip(aligned, parts):
            cells.append(points.get(value, 0.0))
    for side, (_, _, infinite) in enumerate(parts):
        if infinite:
            aligned[0].append(infinite if side == 0 else 0.0)
            aligned[1].append(infinite if side == 1 else 0.0)
    totals = [sum(cells) for cells in aligned]
    if 0 in totals:
        return math.nan
    p, q = ([x / total for x in cells] for cells, total in zip(aligned, totals))
    return kl_to_mixture(p, q)


# ------------------------------------------------------------- numeric: JSD


def test_identical_samples_give_zero_and_same_distribution_near_zero():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=20_000)
    assert jensen_shannon_numeric(sample, sample.copy()) == 0.0
    assert jensen_shannon_numeric(sample, rng.permutation(sample)) == 0.0
    # Another sample of the same distribution is near 0 but not 0: each side's buckets span its
    # own min..max, so the sample's extremes move the edges.
    assert jensen_shannon_numeric(sample, rng.normal(size=20_000)) < 0.05


def test_disjoint_ranges_give_one():
    rng = np.random.default_rng(1)
    assert jensen_shannon_numeric(rng.uniform(0, 1, 5000), rng.uniform(2, 3, 5000)) == pytest.approx(
        1.0, abs=1e-12
    )


def test_hand_worked_two_point_example():
    # baseline [0, 0, 10, 10] (n = 4): quantile k = 0..1000 is the value of rank floor(4k/1000),
    # so 0 for k < 500 and 10 from k = 500; cumulative counts are 2 (at 0) and 4 (at 10).
    # Quantile buckets: 499 x (0, 0) weight 0, (0, 10) weight 2, 500 x (10, 10) weight 0.
    # The 501 buckets ending on 10 share the 2 evenly (2/501 each) and the 499 point buckets
    # at 0 take the count of the minimum (2). So: point mass 2 at 0, 2/501 spread uniformly
    # over (0, 10), 1000/501 at 10. Buckets [0,1), ..., [9,10]: the point at 0 falls in the
    # first, the point at 10 in the last, every bucket gets a tenth of 2/501.
    baseline_counts = [2 + 0.2 / 501] + [0.2 / 501] * 8 + [0.2 / 501 + 1000 / 501]
    # current [0, 10, 10, 10]: 0 for k < 250; 249 x (0, 0), (0, 10) weight 3, 750 x (10, 10):
    # 3/751 each for the 751 buckets ending on 10, point mass 1 at 0, 2250/751 at 10.
    current_counts = [1 + 0.3 / 751] + [0.3 / 751] * 8 + [0.3 / 751 + 2250 / 751]
    # Same min and max, so the same edges: no re-bucketing before the divergence.
    expected = kl_to_mixture([c / 4 for c in baseline_counts], [c / 4 for c in current_counts])
    assert expected == pytest.approx(0.0488129, abs=1e-7)  # close to JSD((.5, .5), (.25, .75))
    assert jensen_shannon_numeric(np.array([0, 0, 10, 10.0]), np.array([0, 10, 10, 10.0])) == pytest.approx(
        expected, abs=1e-12
    )


def test_constant_feature_is_a_point_bucket():
    assert jensen_shannon_numeric(np.full(50, 5.0), np.full(80, 5.0)) == 0.0
    assert jensen_shannon_numeric(np.full(50, 5.0), np.full(80, 6.0)) == pytest.approx(1.0)
    # TFDV keeps a point bucket apart from range buckets, even a range starting at the point:
    # a constant baseline against anything spread out is maximal divergence.
    assert jensen_shannon_numeric(np.full(50, 5.0), np.array([5.0, 5.0, 6.0, 7.0])) == pytest.approx(1.0)


def test_missing_values_do_not_change_jsd():
    rng = np.random.default_rng(2)
    baseline, current = rng.normal(size=3000), rng.normal(0.3, 1, size=2000)
    with_missing = np.concatenate([current, np.full(1500, np.nan)])
    expected = jensen_shannon_numeric(baseline, current)
    assert jensen_shannon_numeric(baseline, with_missing) == expected
    as_objects = np.array(list(baseline) + [None] * 10, dtype=object)
    assert jensen_shannon_numeric(as_objects, current) == expected


def test_jsd_not_computable_when_a_side_has_no_values():
    assert math.isnan(jensen_shannon_numeric(np.array([np.nan, np.nan]), np.array([1.0, 2.0])))
    assert math.isnan(jensen_shannon_numeric(np.array([]), np.array([1.0, 2.0])))
    assert math.isnan(jensen_shannon_numeric(np.array([]), np.array([])))


def _gamma(rng, n):
    return rng.gamma(2.0, 2.0, n), rng.gamma(2.6, 2.0, n)


def _normal_shift(rng, n):
    return rng.normal(0, 1, n), rng.normal(0.4, 1.1, n)


def _integer_valued(rng, n):
    return rng.poisson(4.0, n).astype(float), rng.poisson(4.6, n).astype(float)


def _with_infinities(rng, n):
    baseline = np.concatenate([rng.normal(size=n), [np.inf] * (n // 50), [-np.inf] * (n // 100)])
    return baseline, np.concatenate([rng.normal(0.2, 1, n), [np.inf] * (n // 80)])


@pytest.mark.parametrize("distributions", [_normal_shift, _gamma, _integer_valued, _with_infinities])
@pytest.mark.parametrize(
    "rows, tolerance",
    [
        # Up to a few thousand values the sketch keeps every value, so it is exact, and so
        # are we: only float rounding differs.
        (2_000, 1e-12),
        # Beyond that the sketch compresses: its quantile ranks move by about 0.02 % of n
        # (eps = 0.01 allows 1 %), which moved the divergence by at most 1e-4 over normal,
        # gamma and lognormal samples of 1e4 to 1e6 rows. 5e-4 leaves room and is far below
        # any useful threshold. Integer-valued data has few distinct values: still exact.
        (200_000, 5e-4),
    ],
)
def test_matches_tfdv_on_its_quantiles_sketch(distributions, rows, tolerance):
    baseline, current = distributions(np.random.default_rng(rows), rows)
    expected = reference_jensen_shannon(baseline, current)
    if distributions is _integer_valued:
        tolerance = 1e-12
    assert jensen_shannon_numeric(baseline, current) == pytest.approx(expected, abs=tolerance)


# ---------------------------------------------------------- categorical: L-inf


def test_linf_hand_example_with_new_category():
    baseline = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + [None] * 7  # a .5, b .3, c .2
    current = ["a"] * 2 + ["b"] * 2 + ["d"] * 4  # a .25, b .25, d .5 (new)
    # |diff|: a .25, b .05, c .2, d .5
    distance, category = linf_categorical(baseline, current)
    assert category == "d"
    assert distance == pytest.approx(0.5)


def test_linf_ties_go_to_last_category_and_numbers_match_strings():
    distance, category = linf_categorical(["x", "y"], ["y", "y"])  # x .5, y .5: a tie
    assert (distance, category) == (0.5, "y")
    assert linf_categorical(pa.array([1, 2, 2, None]), ["1", "2", "2"]) == (0.0, "2")
    assert linf_categorical([None], []) == (0.0, None)


# ------------------------------------------------------------- compute_drift


def _tables(rows: int = 4000, seed: int = 3):
    rng = np.random.default_rng(seed)
    baseline = pa.table(
        {
            "fare": rng.gamma(2.0, 5.0, rows),
            "hour": rng.integers(0, 24, rows),
            "payment": rng.choice(["card", "cash"], rows, p=[0.5, 0.5]),
        }
    )
    current = pa.table(
        {
            "fare": rng.gamma(2.0, 5.0, rows) + 40.0,  # shifted far: drift
            "hour": rng.integers(0, 24, rows),
            "payment": rng.choice(["card", "cash"], rows, p=[0.5, 0.5]),
        }
    )
    return baseline, current


def test_compute_drift_report():
    baseline, current = _tables()
    report = compute_drift(baseline, current, ["fare", "hour"], ["payment"], thresholds={"hour": 0.1})
    assert report["drift_detected"] is True
    assert report["drifted_features"] == ["fare"]
    assert report["num_features"] == 3 and report["num_drifted"] == 1
    fare, hour, payment = (report["features"][name] for name in ("fare", "hour", "payment"))
    assert fare["metric"] == "jensen_shannon_divergence" and fare["value"] > 0.9 and fare["drifted"]
    assert hour["threshold"] == 0.1 and hour["status"] == "ok"
    assert payment["metric"] == "l_infinity" and payment["category"] in {"card", "cash"}
    assert payment["threshold"] == 0.3
    assert sum(bucket["baseline"] for bucket in fare["histogram"]) == pytest.approx(1.0)
    json.dumps(report, allow_nan=False)  # JSON-ready


def test_threshold_is_strictly_greater():
    baseline = pa.table({"color": ["red"] * 4})
    current = pa.table({"color": ["red"] * 3 + ["blue"]})  # L-inf exactly 0.25
    at_threshold = compute_drift(baseline, current, [], ["color"], default_categorical_threshold=0.25)
    assert at_threshold["features"]["color"]["value"] == 0.25
    assert at_threshold["drift_detected"] is False
    below = compute_drift(baseline, current, [], ["color"], thresholds={"color": 0.2499})
    assert below["drifted_features"] == ["color"]


def test_missing_fraction_and_not_computable_feature():
    baseline = pa.table({"x": [1.0, 2.0, None, 4.0], "c": ["a", None, "b", "b"]})
    current = pa.table({"x": pa.array([None, None], pa.float64()), "c": [None, "a"]})
    report = compute_drift(baseline, current, ["x"], ["c"])
    x = report["features"]["x"]
    assert x["value"] is None and x["status"] == "not_computable" and x["drifted"] is False
    assert "serving" in x["reason"]
    assert x["baseline_missing_fraction"] == 0.25 and x["current_missing_fraction"] == 1.0
    assert report["features"]["c"]["current_missing_fraction"] == 0.5
    assert report["not_computable_features"] == ["x"]


def test_numeric_strings_from_json_are_parsed():
    baseline = pa.table({"x": [1.0, 2.0, 3.0, 4.0]})
    as_text = compute_drift(baseline, pa.table({"x": ["1", "2.0", "3", "4"]}), ["x"], [])
    assert as_text["features"]["x"]["value"] == 0.0


@pytest.mark.parametrize(
    "current, numeric, categorical, thresholds, message",
    [
        (pa.table({"x": ["1", "abc"]}), ["x"], [], None, "'x'"),
        (pa.table({"y": [1.0]}), ["x"], [], None, "columns present: ['y']"),
        (pa.table({"x": [1.0]}), ["x"], [], {"z": 0.1}, "'z'"),
        (pa.table({"x": [1.0]}), ["x"], ["x"], None, "more than once"),
        (pa.table({"x": [1.0]}), [], [], None, "nothing to monitor"),
        (pa.table({"x": [1.0]}), ["x"], [], {"x": "high"}, "thresholds['x']"),
    ],
)
def test_compute_drift_user_errors(current, numeric, categorical, thresholds, message):
    baseline = pa.table({"x": [1.0, 2.0]})
    with pytest.raises(CauceError, match=re.escape(message)):
        compute_drift(baseline, current, numeric, categorical, thresholds)


# -------------------------------------------------------------- request logs


def test_read_request_log_with_and_without_window(tmp_path):
    log_dir = tmp_path / "logs"
    write_request_log(
        log_dir,
        [
            ("2024-05-01T09:59:59+00:00", [{"x": 1, "c": "a"}]),
            ("2024-05-01T10:00:00+00:00", [{"x": 2, "c": "b"}, {"x": "3.5", "c": 7}]),
            ("2024-05-01T11:00:00Z", [{"x": 4}]),
        ],
    )
    write_request_log(
        log_dir, [("2024-05-01T10:30:00", [{"c": "z", "extra": True}])], name="requests-b.jsonl"
    )
    (log_dir / "other.jsonl").write_text("not a request log\n")

    everything = read_request_log(str(log_dir))
    assert everything.num_rows == 5
    assert everything.column_names == ["x", "c", "extra"]
    assert everything.column("c").to_pylist() == ["a", "b", "7", None, "z"]  # 7 and "7" agree as text

    window = read_request_log(str(log_dir), "2024-05-01T10:00:00Z", "2024-05-01T11:00:00+00:00")
    assert window.column("x").to_pylist() == ["2", "3.5", None]  # mixed types kept as text
    assert window.column("c").to_pylist() == ["b", "7", "z"]


def test_read_request_log_skips_a_line_still_being_written(tmp_path):
    write_request_log(tmp_path, [("2024-05-01T10:00:00+00:00", [{"x": 1}])])
    with open(tmp_path / "requests-a.jsonl", "a") as handle:
        handle.write('{"endpoint": "local", "logging_ti')
    assert read_request_log(str(tmp_path)).num_rows == 1


def test_read_request_log_errors(tmp_path):
    write_request_log(tmp_path, [("2024-05-01T10:00:00+00:00", [{"x": 1}])])
    with pytest.raises(CauceError, match=r"no logged requests .* window \[2025-01-01, end\)"):
        read_request_log(str(tmp_path), "2025-01-01")
    with pytest.raises(CauceError, match="window_end"):
        read_request_log(str(tmp_path), "", "yesterday")
    with pytest.raises(CauceError, match="does not exist"):
        read_request_log(str(tmp_path / "missing"))


# ------------------------------------------------------------- run_monitor


@pytest.fixture
def monitored(tmp_path):
    """A baseline dataset and a serving log whose `fare` drifted."""
    rng = np.random.default_rng(11)
    baseline = pa.table(
        {
            "fare": rng.gamma(2.0, 5.0, 3000),
            "hour": rng.integers(0, 24, 3000),
            "payment": rng.choice(["card", "cash", "mobile"], 3000),
        }
    )
    write_baseline(tmp_path / "baseline", baseline)
    instances = [
        {"fare": float(fare), "hour": int(hour), "payment": str(payment)}
        for fare, hour, payment in zip(
            rng.gamma(2.0, 5.0, 600) + 60,
            rng.integers(0, 24, 600),
            rng.choice(["card", "cash", "mobile"], 600),
        )
    ]
    write_request_log(
        tmp_path / "logs",
        [
            (f"2024-05-01T10:{minute:02d}:00+00:00", instances[minute * 10 : minute * 10 + 10])
            for minute in range(60)
        ],
    )
    return tmp_path


def test_run_monitor_writes_report_and_alerts(monitored, caplog):
    output = monitored / "report"
    with caplog.at_level(logging.WARNING):
        report = run_monitor(
            baseline_dir=str(monitored / "baseline"),
            baseline_split="train",
            request_log_dir=str(monitored / "logs"),
            output_dir=str(output),
            numeric_features=["fare", "hour"],
            categorical_features=["payment"],
            window_start="2024-05-01T10:00:00Z",
            window_end="2024-05-01T10:30:00Z",
        )
    assert report["drifted_features"] == ["fare"]
    assert report["current_rows"] == 300
    assert sorted(p.name for p in output.iterdir()) == [REPORT_HTML, REPORT_JSON]
    assert json.loads((output / REPORT_JSON).read_text())["drifted_features"] == ["fare"]
    page = (output / REPORT_HTML).read_text()
    assert page.count("<svg") == 3 and "Drift detected in 1 of 3 features" in page
    assert "<script" not in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert page.index(">fare<") < page.index(">hour<")  # the drifted feature is listed first
    assert any(
        "fare" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"numeric_features": ["fare", "tip"]}, "tip"),
        ({"baseline_split": "eval"}, "split 'eval' not found"),
    ],
)
def test_run_monitor_errors_leave_no_output(monitored, overrides, message):
    output = monitored / "report"
    arguments = {
        "baseline_dir": str(monitored / "baseline"),
        "baseline_split": "train",
        "request_log_dir": str(monitored / "logs"),
        "output_dir": str(output),
        "numeric_features": ["fare"],
        "categorical_features": ["payment"],
        **overrides,
    }
    with pytest.raises(CauceError, match=message):
        run_monitor(**arguments)
    assert not output.exists()
    assert not [p for p in monitored.iterdir() if p.name.startswith(".report")]


def test_a_window_without_requests_is_reported_and_alerts_nothing(monitored, caplog):
    report = run_monitor(
        baseline_dir=str(monitored / "baseline"), baseline_split="train", request_log_dir=str(monitored / "logs"),
        output_dir=str(monitored / "report"), numeric_features=["fare"], categorical_features=["payment"],
        window_start="2030-01-01T00:00:00Z", alert_webhook="http://127.0.0.1:9/never-called",
    )
    assert report["no_requests"].startswith("no logged requests with instances in")
    assert "[2030-01-01T00:00:00Z, end)" in report["no_requests"]
    assert report["flagged"] == {"drift_detected": False, "features": []}
    assert report["current_rows"] == 0 and "alerts" not in report
    assert "nothing compared, no alert" in (monitored / "report" / REPORT_HTML).read_text()
    assert report_metadata(report)["no_requests"] == report["no_requests"]


def test_run_monitor_non_numeric_serving_value_leaves_no_output(monitored):
    write_request_log(
        monitored / "logs", [("2024-05-01T12:00:00+00:00", [{"fare": "n/a", "payment": "card"}])]
    )
    output = monitored / "report"
    with pytest.raises(CauceError, match="'fare'.*not a number"):
        run_monitor(
            str(monitored / "baseline"), "train", str(monitored / "logs"), str(output), ["fare"], ["payment"]
        )
    assert not output.exists()


# ------------------------------------------------------------------ KFP shell


def test_component_runs_under_kfp_local(monitored):
    from kfp import compiler, dsl, local

    from cauce.components.monitor.component import monitor

    compiler.Compiler().compile(monitor, str(monitored / "monitor.yaml"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(monitored / "root"))

    @dsl.pipeline(name="monitor-test")
    def monitor_pipeline(baseline_uri: str, request_log_dir: str) -> bool:
        baseline = dsl.importer(artifact_uri=baseline_uri, artifact_class=dsl.Dataset, reimport=False)
        task = monitor(
            baseline=baseline.output,
            request_log_dir=request_log_dir,
            numeric_features=["fare", "hour"],
            categorical_features=["payment"],
            thresholds={"hour": 0.5},
        )
        return task.outputs["Output"]  # the drift flag: the step's one parameter output

    run = monitor_pipeline(baseline_uri=str(monitored / "baseline"), request_log_dir=str(monitored / "logs"))
    assert run.output is True
    html_copies = [p for p in (monitored / "root").rglob("report_html") if p.is_file()]
    report_dirs = [p for p in (monitored / "root").rglob("drift_report") if p.is_dir()]
    assert len(html_copies) == 1 and html_copies[0].read_text().startswith("<!doctype html>")
    report = json.loads((report_dirs[0] / REPORT_JSON).read_text())
    assert report["features"]["hour"]["threshold"] == 0.5 and report["flagged"]["features"] == ["fare"]

    # The same requests found through a deploy step's endpoint artifact instead of a folder name.
    @dsl.pipeline(name="monitor-endpoint-test")
    def monitor_endpoint_pipeline(baseline_uri: str, request_log_dir: str) -> bool:
        baseline = dsl.importer(artifact_uri=baseline_uri, artifact_class=dsl.Dataset, reimport=False)
        endpoint = dsl.importer(
            artifact_uri="http://127.0.0.1:8080/predict", artifact_class=dsl.Artifact,
            metadata={"request_log_dir": request_log_dir},
        )
        task = monitor(
            baseline=baseline.output,
            endpoint=endpoint.output,
            numeric_features=["fare", "hour"],
            categorical_features=["payment"],
            thresholds={"hour": 0.5},
        )
        return task.outputs["Output"]

    again = monitor_endpoint_pipeline(baseline_uri=str(monitored / "baseline"), request_log_dir=str(monitored / "logs"))
    assert again.output is True


def _window_logs(log_dir: Path, rng) -> None:
    """Minute 0-29: payments half card / half cash; minute 30-59: almost all cash."""
    requests = []
    for minute in range(60):
        share = [0.5, 0.5] if minute < 30 else [0.05, 0.95]
        instances = [
            {"fare": float(fare), "hour": int(hour), "payment": str(payment)}
            for fare, hour, payment in zip(
                rng.gamma(2.0, 5.0, 20), rng.integers(0, 24, 20), rng.choice(["card", "cash"], 20, p=share)
            )
        ]
        requests.append((f"2024-05-01T10:{minute:02d}:00+00:00", instances))
    write_request_log(log_dir, requests)


class _AlertReceiver:
    """A local webhook that records what it receives (loopback only)."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_window_drift_and_webhook_alert(tmp_path):
    rng = np.random.default_rng(5)
    baseline = pa.table({
        "fare": rng.gamma(2.0, 5.0, 3000), "hour": rng.integers(0, 24, 3000),
        "payment": rng.choice(["card", "cash"], 3000, p=[0.05, 0.95]),
    })
    write_baseline(tmp_path / "baseline", baseline)
    _window_logs(tmp_path / "logs", rng)
    receiver = _AlertReceiver()
    try:
        report = run_monitor(
            baseline_dir=str(tmp_path / "baseline"), baseline_split="train", request_log_dir=str(tmp_path / "logs"),
            output_dir=str(tmp_path / "report"), numeric_features=["fare", "hour"], categorical_features=["payment"],
            window_start="2024-05-01T10:30:00Z", window_end="2024-05-01T11:00:00Z",
            previous_window_start="2024-05-01T10:00:00Z", previous_window_end="2024-05-01T10:30:00Z",
            alert_webhook=receiver.url,
        )
    finally:
        receiver.close()
    # The current window matches training (no skew) but moved away from the previous window (drift).
    assert report["drifted_features"] == []
    assert report["window_drift"]["drifted_features"] == ["payment"]
    assert report["flagged"] == {"drift_detected": True, "features": ["payment"]}
    (delivery,) = report["alerts"]
    assert delivery == {"channel": "webhook", "target": receiver.url, "delivered": True, "status": 204}
    (alert,) = receiver.received
    assert alert["drifted_features"] == ["payment"] and alert["drift"]["payment"] > 0.3 and alert["skew"] == {}
    assert "serving window vs previous window" in (tmp_path / "report" / REPORT_HTML).read_text()


def test_an_undeliverable_alert_is_recorded_not_raised(monitored):
    report = run_monitor(
        baseline_dir=str(monitored / "baseline"), baseline_split="train", request_log_dir=str(monitored / "logs"),
        output_dir=str(monitored / "report"), numeric_features=["fare"], categorical_features=[],
        alert_webhook="http://127.0.0.1:9/nobody-listens",
    )
    (delivery,) = report["alerts"]
    assert delivery["delivered"] is False and delivery["error"]
    # The report was written before the alert went out, and records that it was not delivered.
    assert json.loads((monitored / "report" / REPORT_JSON).read_text())["alerts"] == [delivery]
    with pytest.raises(CauceError, match="must be an http:// or https:// URL"):
        run_monitor(
            baseline_dir=str(monitored / "baseline"), baseline_split="train", request_log_dir=str(monitored / "logs"),
            output_dir=str(monitored / "other"), numeric_features=["fare"], categorical_features=[],
            alert_webhook="file:///etc/passwd",
        )
