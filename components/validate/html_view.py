"""A self-contained HTML page of the statistics and anomalies, for the Vertex AI / KFP UI.

The UI shows an HTML artifact in a sandboxed frame without internet access: no external
script or style sheet, charts as inline SVG, and every value from the data escaped.
"""

from __future__ import annotations

import html

from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce.components.validate.schema import Anomaly
from cauce.components.validate.statistics import common_stats, feature_stats_by_name

_BAR_COLOR = "#4e79a7"
_CHART_VALUES = 10

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 13px; }
th { background: #f3f3f3; }
tr.anomalous td { background: #fde8e8; }
.anomaly { color: #b00020; font-weight: 600; }
.ok { color: #1b7f3b; font-weight: 600; }
.axis { font-size: 9px; fill: #555; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _bars_svg(labels: list[str], counts: list[float]) -> str:
    """Small vertical bars with escaped labels as tooltips (titles)."""
    width, height, bottom = 240, 70, 12
    tallest = max(counts + [1e-12])
    slot = width / max(len(counts), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for index, (label, count) in enumerate(zip(labels, counts)):
        bar_height = (height - bottom) * count / tallest
        x = index * slot + slot * 0.1
        parts.append(
            f'<rect x="{x:.1f}" y="{height - bottom - bar_height:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{bar_height:.1f}" fill="{_BAR_COLOR}"><title>{_esc(label)}: {_number(count)}</title></rect>'
        )
    if labels:
        parts.append(f'<text x="0" y="{height - 1}" class="axis">{_esc(labels[0])[:24]}</text>')
        parts.append(
            f'<text x="{width}" y="{height - 1}" text-anchor="end" class="axis">{_esc(labels[-1])[:24]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _numeric_chart(stats: statistics_pb2.NumericStatistics) -> str:
    for histogram in stats.histograms:
        if histogram.type == statistics_pb2.Histogram.STANDARD and histogram.buckets:
            labels = [f"{_number(b.low_value)}–{_number(b.high_value)}" for b in histogram.buckets]
            return _bars_svg(labels, [b.sample_count for b in histogram.buckets])
    return ""


def _feature_row(name: str, feature: statistics_pb2.FeatureNameStatistics, num_examples: int, problems) -> str:
    common = common_stats(feature)
    missing = common.num_missing / num_examples if num_examples else 0.0
    kind = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type)
    if feature.WhichOneof("stats") == "num_stats":
        stats = feature.num_stats
        summary = (
            f"mean {_number(stats.mean)} · std {_number(stats.std_dev)} · zeros {stats.num_zeros}<br>"
            f"min {_number(stats.min)} · median {_number(stats.median)} · max {_number(stats.max)}"
        )
        chart = _numeric_chart(stats)
    else:
        stats = feature.string_stats
        top = ", ".join(f"{_esc(v.value)} ({_number(v.frequency)})" for v in stats.top_values[:5])
        summary = f"unique {stats.unique} · avg length {_number(stats.avg_length)}<br>top: {top}"
        shown = stats.top_values[:_CHART_VALUES]
        chart = _bars_svg([v.value for v in shown], [v.frequency for v in shown])
    anomaly_cell = "<br>".join(
        f'<span class="anomaly">{_esc(p.short_description)}</span>: {_esc(p.description)}' for p in problems
    )
    row_class = ' class="anomalous"' if problems else ""
    return (
        f"<tr{row_class}><td>{_esc(name)}</td><td>{kind}</td><td>{common.num_non_missing}</td>"
        f"<td>{missing:.2%}</td><td>{summary}</td><td>{chart}</td><td>{anomaly_cell}</td></tr>"
    )


def render_html(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    anomalies: dict[str, list[Anomaly]],
    schema_source: str,
) -> str:
    """The page: a summary of anomalies, then per split a table of every feature."""
    total = sum(len(items) for items in anomalies.values())
    verdict = (
        f'<p class="anomaly">{total} anomal{"y" if total == 1 else "ies"} found</p>'
        if total
        else '<p class="ok">No anomalies</p>'
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Data validation</title>",
        f"<style>{_STYLE}</style></head><body><h1>Data validation</h1>",
        f"<p>Schema: {_esc(schema_source)}. Validated splits: {_esc(', '.join(anomalies) or 'none')}.</p>",
        verdict,
    ]
    if total:
        parts.append("<table><tr><th>split</th><th>feature</th><th>anomaly</th><th>detail</th></tr>")
        for split, items in anomalies.items():
            for item in items:
                parts.append(
                    f'<tr class="anomalous"><td>{_esc(split)}</td><td>{_esc(item.feature)}</td>'
                    f"<td>{_esc(item.short_description)}</td><td>{_esc(item.description)}</td></tr>"
                )
        parts.append("</table>")
    for dataset in statistics.datasets:
        split_anomalies = anomalies.get(dataset.name, [])
        parts.append(f"<h2>Split {_esc(dataset.name)}: {dataset.num_examples} examples</h2>")
        parts.append(
            "<table><tr><th>feature</th><th>type</th><th>present</th><th>missing</th>"
            "<th>statistics</th><th>histogram / top values</th><th>anomalies</th></tr>"
        )
        features = feature_stats_by_name(dataset)
        for name, feature in features.items():
            problems = [a for a in split_anomalies if a.feature == name]
            parts.append(_feature_row(name, feature, dataset.num_examples, problems))
        for item in split_anomalies:
            if item.feature not in features:  # a column the split lacks
                parts.append(
                    f'<tr class="anomalous"><td>{_esc(item.feature)}</td><td colspan="5">absent</td>'
                    f'<td><span class="anomaly">{_esc(item.short_description)}</span>: {_esc(item.description)}</td></tr>'
                )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
