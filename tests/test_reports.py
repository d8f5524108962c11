"""cauce.reports: the one report module (Jinja2 templates, one stylesheet) renders each
component's page: validate's, evaluate's and monitor's, self-contained and escaped."""

import re

import numpy as np
import pyarrow as pa
import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce import reports
from cauce.components.evaluate.executor import render_report
from cauce.components.monitor.executor import compute_drift
from cauce.components.monitor.executor import render_html as render_drift
from cauce.components.validate.executor import render_html as render_validation
from cauce.components.validate.schema import Anomaly

HOSTILE = '<script>alert("x")</script>'
STYLESHEET = (reports.TEMPLATES / "style.css").read_text()


def _self_contained(page: str) -> None:
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</body></html>")
    assert "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert page.count("<style>") == 1 and STYLESHEET.strip() in page  # the one stylesheet, inlined
    assert not re.search(r"\{\{|\{%|Undefined", page)  # every template expression was filled


def _validation_statistics() -> statistics_pb2.DatasetFeatureStatisticsList:
    statistics = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = statistics.datasets.add(name="train", num_examples=100)
    fare = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.FLOAT)
    fare.path.step.append("fare")
    numbers = fare.num_stats
    numbers.common_stats.num_non_missing, numbers.common_stats.num_missing = 90, 10
    numbers.mean, numbers.std_dev, numbers.min, numbers.median, numbers.max = 12.5, 3.25, 1.0, 11.0, 40.0
    histogram = numbers.histograms.add(type=statistics_pb2.Histogram.STANDARD)
    for low, count in ((1.0, 30), (14.0, 50), (27.0, 10)):
        histogram.buckets.add(low_value=low, high_value=low + 13, sample_count=count)
    color = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    color.path.step.append("color")
    strings = color.string_stats
    strings.common_stats.num_non_missing = 100
    strings.unique, strings.avg_length = 3, 4.0
    for value, frequency in (("red", 60), (HOSTILE, 30), ("blue", 10)):
        strings.top_values.add(value=value, frequency=frequency)
    return statistics


def test_validation_report():
    anomalies = {
        "train": [
            Anomaly("color", 0, "Unexpected string values", f"Examples contain {HOSTILE}"),
            Anomaly("dropped", 0, "Column dropped", "Column is completely missing"),
        ]
    }
    page = render_validation(_validation_statistics(), anomalies, "inferred from split train")
    _self_contained(page)
    assert "<title>Data validation</title>" in page and "2 anomalies found" in page
    assert "Schema: inferred from split train. Validated splits: train." in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "mean 12.5 · std 3.25 · zeros 0" in page and "10.00%" in page  # fare: 10 of 100 missing
    assert page.count("<svg") == 2 and page.count('<rect class="bar"') == 6
    assert page.count('class="anomalous"') == 4  # two in the summary, color's row, the absent column's row
    assert '<td colspan="5">absent</td>' in page

    clean = render_validation(_validation_statistics(), {"train": []}, "baseline schema")
    assert "No anomalies" in clean and 'class="anomalous"' not in clean


def _evaluation_summary(**overrides) -> dict:
    summary = {
        "blessed": False,
        "reasons": ["auc (overall) 0.8123 < 0.9"],
        "label": "tips",
        "task": "binary",
        "split": "eval",
        "rows": 12345,
        "metrics": {"example_count": 12345, "auc": 0.8123, "precision": None},
        "thresholds": {"auc": {"lower_bound": 0.9}},
        "confusion_matrix": {"threshold": 0.5, "labels": ["0", HOSTILE], "matrix": [[9000, 345], [1000, 2000]]},
        "roc": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.7, 1.0], "threshold": [1.0, 0.5, 0.0]},
        "calibration": [{"lower": 0.0, "upper": 0.5, "count": 10000, "mean_score": 0.21, "positive_rate": 0.2}],
        "champion": {
            "comparisons": [
                {"where": "overall", "metric": "auc", "candidate": 0.8123, "champion": 0.8, "margin": 0.0, "passed": True}
            ]
        },
        "slices": [{"feature": "payment_type", "value": HOSTILE, "metrics": {"example_count": 7, "auc": 0.5}}],
    }
    return {**summary, **overrides}


def test_evaluation_report():
    page = render_report(_evaluation_summary())
    _self_contained(page)
    assert "Not blessed: auc (overall) 0.8123 &lt; 0.9" in page
    assert page.index("Not blessed") < page.index("Overall metrics")
    assert "<td>auc</td><td class=\"num\">0.8123</td><td>≥ 0.9</td><td><span class=\"fail\">fail</span></td>" in page
    assert '<td class="num">–</td>' in page  # precision undefined
    assert "12,345 rows" in page and "cut-off 0.5" in page and "predicted &lt;script&gt;" in page
    assert page.count("<svg") == 1 and 'points="40.0,360.0 72.0,136.0 360.0,40.0"' in page
    for heading in ("Confusion matrix", "ROC curve", "Calibration", "Challenger vs champion", "Metrics per slice"):
        assert f"<h2>{heading}</h2>" in page

    regression = render_report(
        _evaluation_summary(
            blessed=True, reasons=[], task="regression", confusion_matrix=None, roc=None, champion=None, slices=[]
        )
    )
    _self_contained(regression)
    assert "Blessed: every threshold passed" in regression and "<svg" not in regression
    assert "ROC curve" not in regression and "Challenger vs champion" not in regression


def test_drift_report():
    rng = np.random.default_rng(7)
    baseline = pa.table({"fare": rng.normal(10, 2, 2000), "payment": rng.choice(["cash", "card"], 2000)})
    current = pa.table({"fare": rng.normal(16, 2, 500), "payment": rng.choice(["cash", HOSTILE], 500)})
    report = compute_drift(baseline, current, ["fare"], ["payment"])
    report.update(baseline_rows=2000, current_rows=500, generated_at="2024-05-01T10:00:00Z")
    page = render_drift(report)
    _self_contained(page)
    assert "<title>cauce drift report</title>" in page
    assert "Drift detected in 2 of 2 features" in page and page.count("<svg") == 2
    assert "<tr><th>Serving instances</th><td>500</td></tr>" in page
    assert "&lt;script&gt;" in page and HOSTILE not in page
    assert page.index('id="f-fare"') > page.index("<h2>Distributions</h2>")

    window = {
        "previous_window": {"window_start": "", "window_end": "2024-05-01T09:00:00Z"},
        "drift_detected": False,
        "drifted_features": [],
        "features": {"fare": {"metric": "jensen_shannon_divergence", "value": None, "threshold": 0.3,
                              "status": "not_computable"}},
    }
    windowed = render_drift({**report, "window_drift": window})
    assert "serving window vs previous window [beginning, 2024-05-01T09:00:00Z)" in windowed
    assert "No drift between the windows" in windowed


def test_render_names_the_reports():
    with pytest.raises(ValueError, match="unknown report 'audit'; reports: validation, evaluation, drift"):
        reports.render("audit")
