"""validate: TFDV-style statistics, schema inference, anomalies, policy, HTML, kfp.local.

Statistics are checked against numpy / pyarrow on small hand-made splits; the schema and
anomalies against TFDV's rules and wording; the component under kfp.local, and its gate
in the compiled training pipeline."""


import datetime as dt
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.validate import executor as validate_executor
from cauce.components.validate import statistics as stats_module
from cauce.components.validate.accumulators import QuantileStream, QuantileSummary
from cauce.components.validate.executor import run_validate
from cauce.components.validate.schema import infer_schema, validate_statistics
from cauce.components.validate.statistics import compute_statistics, feature_stats_by_name
from cauce.tfdv_histograms import present_sorted, standard_histogram

ROWS = 600


def _train_table(rows: int = ROWS, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 3.0, rows).round(2)
    amount[rng.random(rows) < 0.1] = np.nan  # NaN counts as missing
    amount_mask = rng.random(rows) < 0.05  # and so do nulls
    color = rng.choice(["red", "green", "blue", "teal"], rows, p=[0.5, 0.3, 0.15, 0.05])
    color_mask = rng.random(rows) < 0.07
    start = np.datetime64("2025-01-01T00:00:00", "s")
    return pa.table({
        "key": pa.array([f"k-{seed}-{i}" for i in range(rows)]),
        "amount": pa.array(amount, pa.float64(), mask=amount_mask),
        "count": pa.array(rng.integers(0, 5, rows), pa.int64()),
        "color": pa.array(color, pa.string(), mask=color_mask),
        "flag": pa.array(rng.random(rows) < 0.3),
        "when": pa.array(start + rng.integers(0, 86400, rows).astype("timedelta64[s]"), pa.timestamp("s")),
    })


def _write_dataset(directory, splits: dict[str, pa.Table]) -> str:
    with atomic_dir(directory) as out:
        rows = {name: data.write_split(out, name, table) for name, table in splits.items()}
        data.write_schema(out, next(iter(splits.values())).schema, rows)
    return str(directory)


def _outputs(tmp_path) -> dict:
    return {
        "statistics_dir": str(tmp_path / "out" / "statistics"),
        "schema_dir": str(tmp_path / "out" / "schema"),
        "anomalies_dir": str(tmp_path / "out" / "anomalies"),
        "html_path": str(tmp_path / "out" / "html"),
    }


@pytest.fixture
def clean_dataset(tmp_path):
    table = _train_table()
    return _write_dataset(tmp_path / "dataset", {"train": table.slice(0, 450), "eval": table.slice(450)})


# ------------------------------------------------------------------------ statistics


def test_numeric_statistics_match_numpy(clean_dataset):
    statistics, details = compute_statistics(clean_dataset)
    assert [d.name for d in statistics.datasets] == ["eval", "train"]
    train = {d.name: d for d in statistics.datasets}["train"]
    assert train.num_examples == 450 == details["train"]["num_examples"]
    amount = feature_stats_by_name(train)["amount"]
    assert amount.type == statistics_pb2.FeatureNameStatistics.FLOAT
    column = data.read_split(clean_dataset, "train").column("amount")
    values = column.to_numpy(zero_copy_only=False)
    present = np.sort(values[~np.isnan(values)])
    stats = amount.num_stats
    assert stats.common_stats.num_missing == 450 - present.size > column.null_count > 0  # nulls and NaN
    assert stats.common_stats.num_non_missing == stats.common_stats.tot_num_values == present.size
    assert stats.mean == pytest.approx(present.mean(), rel=1e-12)
    assert stats.std_dev == pytest.approx(present.std(ddof=0), rel=1e-12)  # population, as TFDV
    assert (stats.min, stats.max) == (present[0], present[-1])
    assert stats.median == present[present.size // 2]  # TFDV: quantile 500 of 1000 = rank floor(n/2)
    assert stats.num_zeros == int((present == 0).sum())

    standard, quantiles = stats.histograms
    assert standard.type == statistics_pb2.Histogram.STANDARD and len(standard.buckets) == 10
    assert standard.buckets[0].low_value == present[0] and standard.buckets[-1].high_value == present[-1]
    # The same TFDV construction as the monitor's (exact quantiles below 4096 distinct values).
    expected = standard_histogram(present_sorted(present))
    np.testing.assert_allclose([b.sample_count for b in standard.buckets], expected.count, rtol=1e-9)
    assert sum(b.sample_count for b in standard.buckets) == pytest.approx(present.size)
    assert quantiles.type == statistics_pb2.Histogram.QUANTILES and len(quantiles.buckets) == 10
    assert sum(b.sample_count for b in quantiles.buckets) == pytest.approx(present.size)
    # QUANTILES bucket edges are the deciles: 0-based rank floor(k * n / 10).
    deciles = [present[min(k * present.size // 10, present.size - 1)] for k in range(11)]
    assert [quantiles.buckets[0].low_value] + [b.high_value for b in quantiles.buckets] == deciles


def test_string_bool_and_timestamp_statistics(clean_dataset):
    statistics, _ = compute_statistics(clean_dataset, ["train"])
    features = feature_stats_by_name(statistics.datasets[0])
    color = features["color"]
    assert color.type == statistics_pb2.FeatureNameStatistics.STRING
    column = data.read_split(clean_dataset, "train").column("color")
    counted = pc.value_counts(pc.drop_null(column)).to_pylist()
    expected = sorted(((c["counts"], c["values"]) for c in counted), reverse=True)
    stats = color.string_stats
    assert stats.common_stats.num_missing == column.null_count > 0
    assert stats.unique == len(counted)
    assert [(v.frequency, v.value) for v in stats.top_values] == [(float(c), v) for c, v in expected]
    assert [b.label for b in stats.rank_histogram.buckets] == [v for _, v in expected]
    assert [b.low_rank for b in stats.rank_histogram.buckets] == list(range(len(expected)))
    lengths = pc.binary_length(pc.drop_null(column)).to_numpy()
    assert stats.avg_length == pytest.approx(lengths.mean())
    # Booleans and timestamps are INT, as TFDV encodes them.
    assert features["flag"].type == features["when"].type == statistics_pb2.FeatureNameStatistics.INT
    flags = data.read_split(clean_dataset, "train").column("flag").to_numpy(zero_copy_only=False)
    assert features["flag"].num_stats.mean == pytest.approx(flags.mean())
    assert features["when"].num_stats.min == data.read_split(clean_dataset, "train").column("when").cast(pa.int64()).to_numpy().min()
    # Every feature of a column present in every example has the TFDV num_values histogram.
    common = features["count"].num_stats.common_stats
    assert (common.min_num_values, common.max_num_values, common.avg_num_values) == (1, 1, 1.0)
    assert sum(b.sample_count for b in common.num_values_histogram.buckets) == pytest.approx(450)


def test_batches_merge_to_the_single_pass_result(clean_dataset, monkeypatch):
    whole, _ = compute_statistics(clean_dataset, ["train"])
    monkeypatch.setattr(stats_module, "BATCH_ROWS", 37)  # 13 batches, merged accumulators
    batched, _ = compute_statistics(clean_dataset, ["train"])
    for name, feature in feature_stats_by_name(whole.datasets[0]).items():
        other = feature_stats_by_name(batched.datasets[0])[name]
        if feature.HasField("num_stats"):
            a, b = feature.num_stats, other.num_stats
            assert (a.min, a.max, a.median, a.num_zeros) == (b.min, b.max, b.median, b.num_zeros)
            assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std_dev == pytest.approx(b.std_dev, rel=1e-9)
            for ha, hb in zip(a.histograms, b.histograms):
                np.testing.assert_allclose([x.sample_count for x in ha.buckets], [x.sample_count for x in hb.buckets])
        else:
            assert feature.string_stats == other.string_stats


def test_compressed_quantile_summary_stays_within_half_a_percent_in_rank():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1, 200_000)
    stream = QuantileStream()
    for chunk in np.array_split(values, 50):  # 50 summaries of 4000 distinct values: compressions
        stream.add(chunk)
    quantiles, cumulative = stream.summary().quantiles_and_cumulative_counts(1000)
    ordered = np.sort(values)
    assert quantiles[0] == ordered[0] and quantiles[-1] == ordered[-1]
    true_rank = np.searchsorted(ordered, quantiles, side="right")
    target = np.minimum(np.arange(1001) * values.size // 1000, values.size - 1)
    assert np.max(np.abs(true_rank - target)) / values.size < 0.005
    assert np.max(np.abs(cumulative - true_rank)) / values.size < 0.005
    # Exact while small: the summary of a few values holds each with its exact ranks.
    exact = QuantileSummary.of(np.array([3.0, 1.0, 3.0, 2.0]))
    assert exact.values.tolist() == [1, 2, 3] and exact.rank_max.tolist() == [1, 2, 4]


def test_high_cardinality_strings_stay_bounded_with_exact_heavy_hitters(monkeypatch):
    from cauce.components.validate import accumulators

    monkeypatch.setattr(accumulators, "MAX_TRACKED_VALUES", 200)  # tiny bounds, same code path
    monkeypatch.setattr(accumulators, "KMV_SIZE", 256)
    rng = np.random.default_rng(1)
    heavy = accumulators.StringAccumulator()
    ids = [f"id-{i}" for i in range(5000)]
    for start in range(0, 5000, 500):  # 10 batches of unique ids plus one frequent value
        heavy.add(pa.array(ids[start : start + 500] + ["common"] * 100 + [None] * 3))
    assert not heavy.exact and len(heavy.values) <= 400  # memory bounded
    assert heavy.top(1) == [("common", 1000)]  # the frequent value is counted exactly
    assert heavy.unique == pytest.approx(5001, rel=0.2)  # K-minimum-values estimate
    assert (heavy.count, heavy.num_missing) == (6000, 30)
    small = accumulators.StringAccumulator()
    small.add(pa.array(rng.choice(["a", "b", "c"], 1000)))
    assert small.exact and small.unique == 3


# ------------------------------------------------------------------------------ schema


def test_schema_inference_follows_tfdv_rules(clean_dataset):
    statistics, _ = compute_statistics(clean_dataset, ["train"])
    schema = infer_schema(statistics.datasets[0], max_string_domain_size=100)
    features = {f.name: f for f in schema.feature}
    assert features["amount"].type == schema_pb2.FLOAT and features["count"].type == schema_pb2.INT
    assert features["key"].type == features["color"].type == schema_pb2.BYTES
    # No missing value in training -> required; missing values -> optional with one value.
    assert features["count"].presence.min_fraction == 1.0 and features["count"].shape.dim[0].size == 1
    assert not features["amount"].presence.HasField("min_fraction")
    assert (features["amount"].value_count.min, features["amount"].value_count.max) == (1, 1)
    # A few distinct strings -> a domain; one value per row (an id) -> none.
    assert features["color"].domain == "color"
    assert list(schema.string_domain[0].value) == ["blue", "green", "red", "teal"]
    assert not features["key"].domain
    limited = infer_schema(statistics.datasets[0], max_string_domain_size=3)
    assert not limited.string_domain  # 4 colors > 3: no domain, as TFDV's enum threshold


# --------------------------------------------------------------------------- anomalies


def _drifted_eval(rows: int = 200) -> pa.Table:
    table = _train_table(rows, seed=9)
    colors = np.array([c or "red" for c in table.column("color").to_pylist()], dtype=object)  # all present
    colors[:20] = "purple"  # 10 % of rows: out of the domain
    colors[20:24] = "<b>"
    counts = table.column("count").to_pylist()
    counts[30:40] = [None] * 10  # a required feature with missing values
    return pa.table({
        "key": table.column("key"),
        "amount": pa.array(table.column("amount").cast(pa.string())),  # wrong type
        "count": pa.array(counts, pa.int64()),
        "color": pa.array(colors.tolist(), pa.string()),
        "flag": table.column("flag"),
        # "when" dropped; "extra" new
        "extra": pa.array(np.ones(rows)),
    })


def test_each_anomaly_kind_is_detected_with_a_clear_description(tmp_path):
    dataset = _write_dataset(tmp_path / "dataset", {"train": _train_table(), "eval": _drifted_eval()})
    statistics, _ = compute_statistics(dataset)
    by_split = {d.name: d for d in statistics.datasets}
    schema = infer_schema(by_split["train"])
    found = {(a.feature, a.kind_name): a for a in validate_statistics(by_split["eval"], schema)}
    assert set(found) == {
        ("when", "missing_column"),
        ("amount", "wrong_type"),
        ("color", "out_of_domain"),
        ("count", "too_many_missing"),
        ("extra", "new_column"),
    }
    assert found["when", "missing_column"].description == "Column is completely missing"
    assert found["amount", "wrong_type"].description == "Expected data of type: FLOAT but got BYTES"
    domain = found["color", "out_of_domain"].description
    assert "'purple' (20, 10.00%)" in domain and "'<b>' (4, 2.00%)" in domain
    assert "12.00% of present values are outside the domain (allowed: 0.00%)" in domain
    assert "missing in 10 of 200 examples (5.00%)" in found["count", "too_many_missing"].description
    # The threshold travels in the schema (distribution_constraints.min_domain_mass): a share
    # of out-of-domain values below it is tolerated, above it is not.
    tolerant = infer_schema(by_split["train"], max_out_of_domain_fraction=0.2)
    assert tolerant.feature[3].distribution_constraints.min_domain_mass == pytest.approx(0.8)
    assert "out_of_domain" not in {a.kind_name for a in validate_statistics(by_split["eval"], tolerant)}
    strict = infer_schema(by_split["train"], max_out_of_domain_fraction=0.05)
    assert "out_of_domain" in {a.kind_name for a in validate_statistics(by_split["eval"], strict)}
    # A baseline schema without constraints takes the parameter.
    schema.feature[3].ClearField("distribution_constraints")
    assert "out_of_domain" not in {
        a.kind_name for a in validate_statistics(by_split["eval"], schema, max_out_of_domain_fraction=0.2)
    }


def test_fail_policy_raises_after_writing_every_output(tmp_path):
    dataset = _write_dataset(tmp_path / "dataset", {"train": _train_table(), "eval": _drifted_eval()})
    outputs = _outputs(tmp_path)
    with pytest.raises(CauceError) as error:
        run_validate(dataset, **outputs, on_anomaly="fail")
    message = str(error.value)
    assert "5 anomalies" in message
    assert message.splitlines()[0].endswith(
        # schema order, then the new column
        "eval/amount: wrong_type; eval/count: too_many_missing; eval/color: out_of_domain; "
        "eval/when: missing_column; eval/extra: new_column"
    )
    assert "eval / when: missing_column: Column is completely missing" in message
    assert "eval / color: out_of_domain: Examples contain values missing from the schema: 'purple'" in message
    # Everything is there to inspect, in TFDV's formats.
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(
        (tmp_path / "out/statistics/FeatureStats.pb").read_bytes()
    )
    assert [d.name for d in stats.datasets] == ["eval", "train"]
    one = statistics_pb2.DatasetFeatureStatisticsList.FromString(
        (tmp_path / "out/statistics/Split-eval/FeatureStats.pb").read_bytes()
    )
    assert one.datasets[0].num_examples == 200
    text_format.Parse((tmp_path / "out/schema/schema.pbtxt").read_text(), schema_pb2.Schema())
    anomalies = text_format.Parse(
        (tmp_path / "out/anomalies/Split-eval/anomalies.pbtxt").read_text(), anomalies_pb2.Anomalies()
    )
    assert set(anomalies.anomaly_info) == {"when", "amount", "color", "count", "extra"}
    assert anomalies.anomaly_info["when"].reason[0].type == anomalies_pb2.AnomalyInfo.SCHEMA_MISSING_COLUMN
    summary = json.loads((tmp_path / "out/anomalies/anomalies.json").read_text())
    assert summary["anomalies_found"] == 5 and summary["validated_splits"] == ["eval"]
    assert "Column dropped" in (tmp_path / "out/html").read_text()


def test_warn_policy_logs_and_returns(tmp_path, caplog):
    dataset = _write_dataset(tmp_path / "dataset", {"train": _train_table(), "eval": _drifted_eval()})
    with caplog.at_level(logging.WARNING):
        result = run_validate(dataset, **_outputs(tmp_path), on_anomaly="warn")
    assert result.anomalies_found == 5
    assert "eval / amount: wrong_type" in caplog.text


def test_clean_data_passes_and_a_baseline_schema_validates_every_split(clean_dataset, tmp_path):
    first = run_validate(clean_dataset, **_outputs(tmp_path / "first"))
    assert first.anomalies_found == 0 and list(first.anomalies) == ["eval"]
    # A previous run's schema artifact (the folder) is the baseline: train is validated too.
    schema_dir = tmp_path / "first/out/schema"
    baseline_run = run_validate(clean_dataset, **_outputs(tmp_path / "second"), baseline_schema=str(schema_dir))
    assert baseline_run.anomalies_found == 0 and list(baseline_run.anomalies) == ["eval", "train"]
    assert (tmp_path / "second/out/schema/schema.pbtxt").read_text() == (schema_dir / "schema.pbtxt").read_text()
    # A hand-edited baseline (a file) that requires another column fails every split.
    edited = text_format.Parse((schema_dir / "schema.pbtxt").read_text(), schema_pb2.Schema())
    edited.feature.add(name="tip", type=schema_pb2.FLOAT).presence.min_count = 1
    edited_path = tmp_path / "edited.pbtxt"
    edited_path.write_text(text_format.MessageToString(edited))
    with pytest.raises(CauceError, match="train / tip: missing_column"):
        run_validate(clean_dataset, **_outputs(tmp_path / "third"), baseline_schema=str(edited_path))


def test_bad_parameters_and_inputs_name_what_was_expected(clean_dataset, tmp_path):
    outputs = _outputs(tmp_path)
    with pytest.raises(CauceError, match="on_anomaly must be one of"):
        run_validate(clean_dataset, **outputs, on_anomaly="ignore")
    with pytest.raises(CauceError, match=r"max_out_of_domain_fraction must be a number in \[0, 1\]"):
        run_validate(clean_dataset, **outputs, max_out_of_domain_fraction=1.5)
    with pytest.raises(CauceError, match="schema_split 'training' not found .* available splits: \\['eval', 'train'\\]"):
        run_validate(clean_dataset, **outputs, schema_split="training")
    with pytest.raises(CauceError, match="baseline schema .*missing.pbtxt not found"):
        run_validate(clean_dataset, **outputs, baseline_schema=str(tmp_path / "missing.pbtxt"))
    garbage = tmp_path / "garbage.pbtxt"
    garbage.write_text("feature { nonsense: 1 }")
    with pytest.raises(CauceError, match="not a tensorflow_metadata Schema text proto"):
        run_validate(clean_dataset, **outputs, baseline_schema=str(garbage))
    assert not (tmp_path / "out").exists()  # nothing written for a rejected input


def test_a_failure_while_writing_leaves_no_half_written_artifact(clean_dataset, tmp_path, monkeypatch):
    def broken_page(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(validate_executor, "render_html", broken_page)
    with pytest.raises(OSError, match="disk full"):
        run_validate(clean_dataset, **_outputs(tmp_path))
    out = tmp_path / "out"
    assert not (out / "html").exists()
    assert not list(out.glob(".*partial*"))  # no temporary file or folder left behind
    # The outputs written before the failure are complete, never partial.
    assert (out / "anomalies" / "anomalies.json").exists() and (out / "schema" / "schema.pbtxt").exists()


def test_html_escapes_values_and_highlights_anomalies(tmp_path):
    train = _train_table()
    colors = train.column("color").to_pylist()
    colors[:5] = ['<script>alert("x")</script>'] * 5
    train = train.set_column(train.schema.get_field_index("color"), "color", pa.array(colors, pa.string()))
    dataset = _write_dataset(tmp_path / "dataset", {"train": train, "eval": _drifted_eval()})
    run_validate(dataset, **_outputs(tmp_path), on_anomaly="warn")
    page = (tmp_path / "out/html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert 'class="anomalous"' in page and "<svg" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


# ------------------------------------------------------------------------------ kfp.local


def test_component_under_kfp_local_with_a_baseline_artifact(kfp_local, clean_dataset):
    from kfp import dsl

    from cauce.components.validate.component import validate

    @dsl.pipeline
    def validation(dataset_uri: str):
        raw = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset, reimport=False)
        first = validate(dataset=raw.output)
        validate(dataset=raw.output, baseline_schema=first.outputs["schema"]).set_display_name("again")

    validation(dataset_uri=clean_dataset)
    runs = list(kfp_local.iterdir())
    first_dir = next(p for p in runs[0].iterdir() if p.name == "validate")
    second_dir = next(p for p in runs[0].iterdir() if p.name == "validate-2")
    outputs = json.loads((second_dir / "executor_output.json").read_text())
    assert outputs["parameterValues"]["Output"] == 0
    anomalies_meta = outputs["artifacts"]["anomalies"]["artifacts"][0]["metadata"]
    assert anomalies_meta["by_split"] == {"eval": 0, "train": 0}  # the baseline: every split
    assert (first_dir / "statistics" / "FeatureStats.pb").exists()
    assert "Data validation" in (first_dir / "html").read_text()


def test_training_pipeline_stops_at_validate_when_the_data_breaks_the_baseline(tmp_path):
    """The compiled training spec: a baseline schema the data does not meet stops the run
    at validate, before transform (Beam) and train start."""
    from cauce import demo, spec
    from cauce.local import PipelineFailed, run_spec

    database = tmp_path / "local.duckdb"
    demo.ensure_demo_table(database, rows=400, seed=5)
    # The baseline: the schema of earlier demo data, curated to require one more column.
    earlier = _write_dataset(tmp_path / "earlier", {"train": demo.generate_taxi_trips(3000, seed=6)})
    statistics, _ = compute_statistics(earlier)
    baseline = infer_schema(statistics.datasets[0], max_out_of_domain_fraction=0.05)
    baseline.feature.add(name="dropoff_latitude", type=schema_pb2.FLOAT).presence.min_count = 1
    (tmp_path / "schema.pbtxt").write_text(text_format.MessageToString(baseline))
    from cauce.demo import DEMO_PARAMETERS

    compiled = spec.compile_pipeline("training", tmp_path / "specs")
    with pytest.raises(PipelineFailed, match=r"2 anomalies .*: eval/dropoff_latitude: missing_column; train/dropoff_latitude: missing_column\n"):
        run_spec(
            compiled,
            {**DEMO_PARAMETERS, "local_database": str(database), "baseline_schema_uri": str(tmp_path),
             "endpoint_name": "validate-gate"},
            pipeline_root=tmp_path / "runs",
        )
    run_dir = next(p for p in (tmp_path / "runs").glob("cauce-training-*") if p.is_dir())
    assert (run_dir / "validate" / "anomalies" / "anomalies.json").exists()  # kept for inspection
    assert not (run_dir / "transform").exists() and not (run_dir / "train").exists()


def test_timestamp_helper_dates_are_ints(tmp_path):
    table = pa.table({"day": pa.array([dt.date(2025, 1, 1), None, dt.date(2025, 1, 3)])})
    dataset = _write_dataset(tmp_path / "dataset", {"train": table})
    statistics, _ = compute_statistics(dataset)
    day = feature_stats_by_name(statistics.datasets[0])["day"]
    assert day.type == statistics_pb2.FeatureNameStatistics.INT
    assert (day.num_stats.min, day.num_stats.max, day.num_stats.common_stats.num_missing) == (20089, 20091, 1)
