"""Drift and skew monitoring: serving requests compared with a baseline dataset.

The numbers are the ones TFDV (and so Vertex AI Model Monitoring) reports, computed with
numpy and pyarrow only, because this step runs in the base image without TensorFlow:

* numeric feature -> approximate Jensen-Shannon divergence between TFDV's STANDARD
  histograms (10 equal-width buckets built from 1000 quantiles), log base 2, range 0..1;
* categorical feature -> L-infinity distance between the category frequencies, with the
  category that produced it.

Missing values (null, NaN) are left out of both metrics and reported as a separate
missing fraction, as TFDV does. A feature drifts when its value is strictly greater than
its threshold.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce import reports
from cauce.artifacts import CauceError, atomic_dir, atomic_file
from cauce.data import read_split
from cauce.tfdv_histograms import (
    StandardHistogram,
    align_histograms,
    jensen_shannon,
    present_sorted,
    standard_histogram,
)

logger = logging.getLogger(__name__)

JSD_METRIC = "jensen_shannon_divergence"
LINF_METRIC = "l_infinity"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REQUEST_LOG_GLOB = "requests-*.jsonl"

# How long each alert delivery may take, retries included.
ALERT_TIMEOUT_S = 10.0
ALERT_SOURCE = "cauce.monitor"
# Pub/Sub's rules for topic names: the project id (optionally domain-scoped,
# "example.com:proj"), and a topic id of 3-255 characters starting with a letter.
_PUBSUB_TOPIC = re.compile(
    r"projects/(?P<project>[a-z][-a-z0-9.:]{4,61}[a-z0-9])/topics/(?P<topic>[A-Za-z][-A-Za-z0-9_.~+%]{2,254})"
)
# Pub/Sub rejects a message whose attribute value is longer than 1024 bytes.
_ATTRIBUTE_VALUE_BYTES = 1024

# How many categories the report keeps per feature for its chart; the rest are summed.
CHART_CATEGORIES = 10


# ----------------------------------------------------------------------- categorical


def _text_array(values: list) -> pa.Array:
    """A column whose values disagree on type (42 here, "42" there): keep every value as text."""
    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values])


def _as_arrow(values) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    values = list(values)
    try:
        return pa.array(values, from_pandas=True)  # from_pandas: NaN is missing, as in pandas
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _text_array(values)


def category_strings(values) -> pa.Array | pa.ChunkedArray:
    """The values as category strings (3 and "3" are one category), NaN and None as null."""
    array = _as_arrow(values)
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
    return pc.cast(array, pa.string())


def _category_counts(values) -> tuple[np.ndarray, np.ndarray]:
    """Distinct present values as strings (3 and "3" are one category) and their counts."""
    counted = pc.value_counts(pc.drop_null(category_strings(values)))
    categories = counted.field("values").to_numpy(zero_copy_only=False).astype(object)
    return categories, counted.field("counts").to_numpy().astype(np.float64)


@dataclass(frozen=True)
class _CategoryComparison:
    categories: np.ndarray  # every category of either side, in sorted order
    baseline: np.ndarray  # frequency per category, 0 where the side lacks it
    current: np.ndarray
    baseline_present: int  # count of present values per side
    current_present: int


def _compare_categories(baseline, current) -> _CategoryComparison:
    return compare_category_counts(*_category_counts(baseline), *_category_counts(current))


def compare_category_counts(
    base_categories: np.ndarray, base_counts: np.ndarray, current_categories: np.ndarray, current_counts: np.ndarray
) -> _CategoryComparison:
    """Both sides' frequencies on the union of their categories, from (categories, counts)
    of each side (object arrays of strings, float64 counts of present values)."""
    categories, position = np.unique(
        np.concatenate([base_categories, current_categories]).astype(object), return_inverse=True
    )
    frequencies = []
    for side_position, counts in (
        (position[: base_categories.size], base_counts),
        (position[base_categories.size :], current_counts),
    ):
        frequency = np.zeros(categories.size)
        if counts.size:
            frequency[side_position] = counts / counts.sum()
        frequencies.append(frequency)
    return _CategoryComparison(
        categories, frequencies[0], frequencies[1], int(base_counts.sum()), int(current_counts.sum())
    )


def _linf(comparison: _CategoryComparison) -> tuple[float, str | None]:
    if comparison.categories.size == 0:
        return 0.0, None
    difference = np.abs(comparison.baseline - comparison.current)
    last_max = difference.size - 1 - int(np.argmax(difference[::-1]))
    return float(difference[last_max]), str(comparison.categories[last_max])


def linf_categorical(baseline, current) -> tuple[float, str | None]:
    """L-infinity distance between category frequencies, and the category that produced it.

    Each side is normalized by its own count of present values; a category absent on one
    side counts 0 there, so a new category contributes its full share. Ties go to the
    category that sorts last, as in TFDV (which keeps the last maximum of a sorted map).
    Returns (0.0, None) when neither side has a present value.
    """
    return _linf(_compare_categories(baseline, current))


# ------------------------------------------------------------------------- the report


def _numeric_column(table: pa.Table, feature: str, side: str) -> np.ndarray:
    """The column as float64 with NaN for missing; strings from JSON requests are parsed."""
    column = table.column(feature)
    try:
        numbers = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise CauceError(
            f"numeric feature {feature!r} has a value in the {side} data that is not a number "
            f"({error}); fix the data or list the feature in categorical_features"
        ) from None
    return numbers.to_numpy(zero_copy_only=False)


def _validated_thresholds(
    thresholds: dict[str, float] | None,
    features: list[str],
    default_numeric_threshold: float,
    default_categorical_threshold: float,
) -> dict[str, float]:
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(features))
    if unknown:
        raise CauceError(
            f"thresholds name feature(s) {unknown} that are not monitored; monitored: {features}"
        )
    named = {
        **{f"thresholds[{name!r}]": value for name, value in thresholds.items()},
        "default_numeric_threshold": default_numeric_threshold,
        "default_categorical_threshold": default_categorical_threshold,
    }
    for parameter, value in named.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise CauceError(f"{parameter} must be a number >= 0, got {value!r}")
    return {name: float(value) for name, value in thresholds.items()}


def _validate_features(numeric_features: list[str], categorical_features: list[str]) -> list[str]:
    features = list(numeric_features) + list(categorical_features)
    if not features:
        raise CauceError("numeric_features and categorical_features are both empty: nothing to monitor")
    repeated = sorted({name for name in features if features.count(name) > 1})
    if repeated:
        raise CauceError(
            f"feature(s) {repeated} appear more than once across numeric_features and categorical_features"
        )
    return features


def _require_columns(table: pa.Table, features: list[str], side: str) -> None:
    for feature in features:
        if feature not in table.column_names:
            raise CauceError(
                f"feature {feature!r} is not in the {side} data; columns present: {table.column_names}"
            )


def _missing_fraction(missing: int, rows: int) -> float | None:
    return missing / rows if rows else None


def _category_chart(comparison: _CategoryComparison, linf_category: str | None) -> list[dict]:
    """The categories with the largest share on either side (always the L-inf one), plus the rest."""
    categories, base, current = comparison.categories, comparison.baseline, comparison.current
    order = np.argsort(-np.maximum(base, current), kind="stable")
    shown = list(order[:CHART_CATEGORIES])
    if linf_category is not None:
        linf_index = int(np.searchsorted(categories, linf_category))
        if linf_index not in shown:
            shown[-1] = linf_index
    buckets = [
        {
            "kind": "category",
            "value": str(categories[i]),
            "baseline": float(base[i]),
            "current": float(current[i]),
        }
        for i in shown
    ]
    rest = np.setdiff1d(np.arange(categories.size), shown)
    if rest.size:
        buckets.append(
            {
                "kind": "other",
                "categories": int(rest.size),
                "baseline": float(base[rest].sum()),
                "current": float(current[rest].sum()),
            }
        )
    return buckets


@dataclass(frozen=True)
class NumericProfile:
    """What the drift of a numeric feature needs from one side: its rows, its missing
    values and the STANDARD histogram of the rest (None without one)."""

    rows: int
    missing: int
    histogram: StandardHistogram | None


def _numeric_entry(baseline: pa.Table, current: pa.Table, feature: str) -> dict:
    profiles = []
    for table, side in ((baseline, "baseline"), (current, "serving")):
        values = _numeric_column(table, feature, side)
        profiles.append(
            NumericProfile(values.size, int(np.isnan(values).sum()), standard_histogram(present_sorted(values)))
        )
    return numeric_entry(*profiles)


def numeric_entry(base: NumericProfile, current: NumericProfile) -> dict:
    """A numeric feature's report entry (without threshold) from both sides' profiles."""
    entry = {
        "type": "numeric",
        "metric": JSD_METRIC,
        "baseline_missing_fraction": _missing_fraction(base.missing, base.rows),
        "current_missing_fraction": _missing_fraction(current.missing, current.rows),
    }
    aligned = (
        align_histograms(base.histogram, current.histogram)
        if base.histogram is not None and current.histogram is not None
        else None
    )
    if aligned is None:
        sides_without_values = [
            side for side, profile in (("baseline", base), ("serving", current)) if profile.missing == profile.rows
        ]
        entry["value"] = None
        entry["reason"] = (
            f"no present values in the {' and '.join(sides_without_values)} data"
            if sides_without_values
            else "the values span more than the float64 range"
        )
        entry["histogram"] = []
        return entry
    entry["value"] = jensen_shannon(aligned.baseline, aligned.current)
    entry["histogram"] = [
        {**bucket, "baseline": float(b), "current": float(c)}
        for bucket, b, c in zip(aligned.buckets, aligned.baseline, aligned.current)
    ]
    return entry


def _categorical_entry(baseline: pa.Table, current: pa.Table, feature: str) -> dict:
    base_column, current_column = baseline.column(feature), current.column(feature)
    return categorical_entry(_compare_categories(base_column, current_column), len(base_column), len(current_column))


def categorical_entry(comparison: _CategoryComparison, base_rows: int, current_rows: int) -> dict:
    """A categorical feature's report entry (without threshold) from both sides' frequencies."""
    distance, category = _linf(comparison)
    return {
        "type": "categorical",
        "metric": LINF_METRIC,
        "value": distance,
        "category": category,
        "baseline_missing_fraction": _missing_fraction(base_rows - comparison.baseline_present, base_rows),
        "current_missing_fraction": _missing_fraction(current_rows - comparison.current_present, current_rows),
        "histogram": _category_chart(comparison, category),
    }


def _severity_order(item: tuple[str, dict]) -> tuple:
    """Drifted first, then by how far the value is above (or below) its threshold."""
    entry = item[1]
    if entry["value"] is None:
        return (1, 0.0)
    return (0, -(entry["value"] - entry["threshold"]))


def compute_drift(
    baseline: pa.Table,
    current: pa.Table,
    numeric_features: list[str],
    categorical_features: list[str],
    thresholds: dict[str, float] | None = None,
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
) -> dict:
    """Compare ``current`` (serving) with ``baseline`` per feature; returns a JSON-ready report.

    ``thresholds`` overrides the default threshold per feature name. A feature drifts when its
    value is strictly greater than its threshold; a value that cannot be computed (no present
    values on a side) is reported with a reason and never counts as drift.
    """
    features = _validate_features(numeric_features, categorical_features)
    per_feature_thresholds = _validated_thresholds(
        thresholds, features, default_numeric_threshold, default_categorical_threshold
    )
    _require_columns(baseline, features, "baseline")
    _require_columns(current, features, "serving")

    entries = {feature: _numeric_entry(baseline, current, feature) for feature in numeric_features}
    entries.update({feature: _categorical_entry(baseline, current, feature) for feature in categorical_features})
    return drift_report(
        entries,
        numeric_features,
        categorical_features,
        per_feature_thresholds,
        default_numeric_threshold,
        default_categorical_threshold,
        baseline.num_rows,
        current.num_rows,
    )


def drift_report(
    entries: dict[str, dict],
    numeric_features: list[str],
    categorical_features: list[str],
    per_feature_thresholds: dict[str, float],
    default_numeric_threshold: float,
    default_categorical_threshold: float,
    baseline_rows: int,
    current_rows: int,
) -> dict:
    """The report of ``entries`` (one per feature, from ``numeric_entry`` / ``categorical_entry``):
    thresholds, verdicts and the ranking; shared by the in-process and the Beam paths."""
    features = list(numeric_features) + list(categorical_features)
    for feature in numeric_features:
        entries[feature]["threshold"] = per_feature_thresholds.get(feature, float(default_numeric_threshold))
    for feature in categorical_features:
        entries[feature]["threshold"] = per_feature_thresholds.get(
            feature, float(default_categorical_threshold)
        )
    for entry in entries.values():
        entry["drifted"] = entry["value"] is not None and entry["value"] > entry["threshold"]
        entry["status"] = (
            "not_computable" if entry["value"] is None else "drift" if entry["drifted"] else "ok"
        )

    ranked = sorted(entries.items(), key=_severity_order)
    drifted = [name for name, entry in ranked if entry["drifted"]]
    return {
        "drift_detected": bool(drifted),
        "drifted_features": drifted,
        "not_computable_features": [name for name, entry in ranked if entry["value"] is None],
        "num_features": len(features),
        "num_drifted": len(drifted),
        "numeric_features": list(numeric_features),
        "categorical_features": list(categorical_features),
        "default_thresholds": {
            "numeric": float(default_numeric_threshold),
            "categorical": float(default_categorical_threshold),
        },
        "baseline_rows": baseline_rows,
        "current_rows": current_rows,
        "features": entries,
    }


# ----------------------------------------------------------------------- request logs


def _parse_time(text: str, what: str) -> dt.datetime:
    """ISO-8601 to an aware UTC datetime; a time without offset is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (AttributeError, ValueError):
        raise CauceError(
            f"{what} must be an ISO-8601 time such as 2024-05-01T00:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment


def _instances_of(
    request: dict, where: str, start: dt.datetime | None, end: dt.datetime | None
) -> list[dict]:
    """The instances of one logged request, or none if it was logged outside [start, end)."""
    if start is not None or end is not None:
        logged_at = request.get("logging_time")
        if not isinstance(logged_at, dt.datetime):  # JSON Lines carry text; BigQuery a TIMESTAMP
            logged_at = _parse_time(logged_at, f"logging_time at {where}")
        if (start is not None and logged_at < start) or (end is not None and logged_at >= end):
            return []
    instances = []
    for element in request.get("request_payload") or []:
        try:
            instance = json.loads(element) if isinstance(element, str) else element
        except json.JSONDecodeError as error:
            raise CauceError(
                f"request_payload at {where} has an instance that is not valid JSON ({error})"
            ) from None
        if not isinstance(instance, dict):
            raise CauceError(
                f"request_payload at {where} holds {type(instance).__name__} instances; "
                "the monitor needs named features: one JSON object per instance"
            )
        instances.append(instance)
    return instances


@dataclass(frozen=True)
class BigQueryRead:
    """How a request-log table is read: the extract step's BigQuery read path and its options
    (``project`` runs and pays for the query; empty = the table's project)."""

    project: str = ""
    location: str = "US"
    api_endpoint: str = ""
    read_api: str = "auto"
    storage_api_endpoint: str = ""
    staging_dataset: str = ""
    maximum_bytes_billed: int = 0
    api_retry_timeout_s: float = 120.0
    query_timeout_s: float | None = None


def read_request_log(log_dir: str, start: str = "", end: str = "", bigquery: BigQueryRead | None = None) -> pa.Table:
    """Instances logged in [start, end) from the serving request logs: a folder of
    ``requests-*.jsonl`` files, or a ``bq://project.dataset.table`` request-response log table.

    ``start`` and ``end`` are ISO-8601 times; empty means unbounded. Each ``request_payload``
    element is a JSON string of one instance; the table has one row per instance and one
    column per key seen in any instance (null where an instance lacks it).
    """
    return _read_request_log(log_dir, start, end, bigquery)[0]


def _window_text(start: str, end: str) -> str:
    return f"[{start or 'beginning'}, {end or 'end'})"


def _jsonl_requests(log_dir: str):
    """(where, request record) of every line of the folder's JSON Lines logs, in file order."""
    directory = Path(log_dir)
    if not directory.is_dir():
        raise CauceError(f"request_log_dir {log_dir} does not exist or is not a directory")
    for path in sorted(directory.glob(REQUEST_LOG_GLOB)):
        with open(path) as handle:
            yield from jsonl_file_requests(path, handle)


def jsonl_file_requests(path, lines):
    """(where, request record) of each line of one JSON Lines log (an iterable of text lines)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            if not line.endswith("\n"):
                break  # the serving process is still writing this last line
            raise CauceError(f"{path}:{number} is not valid JSON ({error})") from None
        if not isinstance(request, dict):
            raise CauceError(f"{path}:{number} is not a request record (a JSON object)")
        if "request_payload" not in request:
            # Silently skipping it would report "no requests" (or drift on fewer rows) for a
            # log some other program wrote in another shape.
            raise CauceError(
                f"{path}:{number} is not a request record: it has no request_payload (keys: {sorted(request)[:10]}); "
                "expected the serving process's request log (cauce.request_logs)"
            )
        yield f"{path}:{number}", request


def bigquery_window_query(table_id: str, start: dt.datetime | None, end: dt.datetime | None) -> tuple[str, dict]:
    """The SQL that reads a window of a request-log table, and its TIMESTAMP parameters: the
    window is applied in BigQuery (values as query parameters, never in the SQL text), so only
    the window's rows are scanned past a partition filter and travel."""
    conditions, parameters = [], {}
    if start is not None:
        conditions.append("logging_time >= @window_start")
        parameters["window_start"] = start
    if end is not None:
        conditions.append("logging_time < @window_end")
        parameters["window_end"] = end
    where = f"\nWHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        "SELECT endpoint, deployed_model_id, logging_time, request_payload\n"
        f"FROM `{table_id}`{where}\nORDER BY logging_time"
    )
    return sql, parameters


def _bigquery_requests(uri: str, start: dt.datetime | None, end: dt.datetime | None, options: BigQueryRead):
    """(where, request record) of every row of a request-log table in the window, read
    through the extract step's BigQuery path: dry run, cost guard, Storage Read (or REST)."""
    from cauce.components.extract.bigquery_backend import BigQueryBackend, check_cost
    from cauce.components.extract.local_engine import QueryParameter
    from cauce.request_logs import bigquery_client, check_table, parse_table

    project = options.project or parse_table(uri)[0]
    client = bigquery_client(project, options.location, options.api_endpoint)
    table_id = check_table(client, uri, options.api_retry_timeout_s)
    sql, values = bigquery_window_query(table_id, start, end)
    backend = BigQueryBackend(
        project=project,
        location=options.location,
        api_endpoint=options.api_endpoint,
        parameters=[QueryParameter(name, "TIMESTAMP", value) for name, value in values.items()],
        maximum_bytes_billed=options.maximum_bytes_billed,
        api_retry_timeout_s=options.api_retry_timeout_s,
        query_timeout_s=options.query_timeout_s,
        read_api=options.read_api,
        storage_api_endpoint=options.storage_api_endpoint,
        staging_dataset=options.staging_dataset,
    )
    _, bytes_estimated = backend.dry_run(sql)
    check_cost(bytes_estimated, options.maximum_bytes_billed)
    output = backend.run(sql)
    logger.info("read %d logged requests from %s (%s)", output.table.num_rows, table_id, output.details)
    for number, request in enumerate(output.table.to_pylist(), start=1):
        yield f"{table_id} row {number}", request


def _read_request_log(
    source: str, start: str, end: str, bigquery: BigQueryRead | None = None, allow_empty: bool = False
) -> tuple[pa.Table, dict[str, list[str]]]:
    """``read_request_log`` plus which endpoints and deployed models served those instances
    (``{"endpoints": [...], "deployed_model_ids": [...]}``), for the alert's attributes.

    One code path for both sources: each logged request (a JSON Lines record or a
    BigQuery row, the same six fields) goes through :func:`_instances_of`. With
    ``allow_empty`` a window without instances gives an empty table instead of an error.
    """
    from cauce.request_logs import is_bigquery_table

    start_time = _parse_time(start, "window_start") if start else None
    end_time = _parse_time(end, "window_end") if end else None
    if start_time is not None and end_time is not None and start_time >= end_time:
        raise CauceError(f"window_start {start!r} is not before window_end {end!r}: the window [start, end) holds no time")
    if is_bigquery_table(source):
        requests = _bigquery_requests(source, start_time, end_time, bigquery or BigQueryRead())
    else:
        requests = _jsonl_requests(source)
    instances: list[dict] = []
    endpoints: set[str] = set()
    models: set[str] = set()
    for where, request in requests:
        in_window = _instances_of(request, where, start_time, end_time)
        if in_window:
            instances.extend(in_window)
            endpoints.add(str(request.get("endpoint") or ""))
            models.add(str(request.get("deployed_model_id") or ""))
    sources = {"endpoints": sorted(endpoints - {""}), "deployed_model_ids": sorted(models - {""})}
    if not instances:
        where = source if is_bigquery_table(source) else f"{source} ({REQUEST_LOG_GLOB})"
        message = f"no logged requests with instances in {where} in the window {_window_text(start, end)}"
        if allow_empty:
            return pa.table({}), {**sources, "empty": message}
        raise CauceError(message)
    return instances_table(instances), sources


def instances_table(instances: list[dict], names: list[str] | None = None) -> pa.Table:
    """One row per instance, one column per key seen in any instance (or per name of
    ``names`` seen), null where an instance lacks it; a column whose values disagree on
    type keeps them all as text."""
    seen = dict.fromkeys(name for instance in instances for name in instance)
    columns = {}
    for name in seen if names is None else [name for name in names if name in seen]:
        values = [instance.get(name) for instance in instances]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = _text_array(values)
    return pa.table(columns) if columns else pa.table({"_": pa.nulls(len(instances))}).drop(["_"])


# ------------------------------------------------------------------------------ HTML


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def _bucket_label(bucket: dict) -> str:
    kind = bucket["kind"]
    if kind == "range":
        return f"{_format_number(bucket['low'])}–{_format_number(bucket['high'])}"
    if kind == "point":
        return f"= {_format_number(bucket['value'])}"
    if kind == "infinite":
        return f"±inf ({'baseline' if bucket['side'] == 'baseline' else 'serving'})"
    if kind == "other":
        return f"other ({bucket['categories']})"
    return bucket["value"]


def render_html(report: dict) -> str:
    """A self-contained page (``cauce.reports``' drift template): summary, ranked table, charts."""
    ranked = sorted(report["features"].items(), key=_severity_order)
    facts = []
    if "baseline" in report:
        facts.append(("Baseline", f"{report['baseline']['dir']} (split {report['baseline']['split']})"))
    facts.append(("Baseline rows", f"{report['baseline_rows']:,}"))
    if "serving" in report:
        serving = report["serving"]
        facts.append(("Serving logs", serving["request_log_dir"]))
        facts.append(
            ("Serving window", f"[{serving['window_start'] or 'beginning'}, {serving['window_end'] or 'end'})")
        )
    facts.append(("Serving instances", f"{report['current_rows']:,}"))
    if "generated_at" in report:
        facts.append(("Generated", report["generated_at"]))
    window = report.get("window_drift")
    return reports.render(
        "drift",
        report=report,
        facts=facts,
        features=ranked,
        charts={
            name: [{**bucket, "label": _bucket_label(bucket)} for bucket in entry["histogram"]]
            for name, entry in ranked
            if entry["histogram"]
        },
        window=window,
        window_features=sorted(window["features"].items(), key=_severity_order) if window else [],
    )


# ------------------------------------------------------------------------- the step


def run_monitor(
    baseline_dir: str,
    baseline_split: str,
    request_log_dir: str,
    output_dir: str,
    numeric_features: list[str],
    categorical_features: list[str],
    thresholds: dict[str, float] | None = None,
    default_numeric_threshold: float = 0.3,
    default_categorical_threshold: float = 0.3,
    window_start: str = "",
    window_end: str = "",
    previous_window_start: str = "",
    previous_window_end: str = "",
    alert_webhook: str = "",
    alert_topic: str = "",
    alert_timeout: float = ALERT_TIMEOUT_S,
    bigquery: BigQueryRead | None = None,
    runner: str = "",
    pipeline_options: dict | None = None,
    work_uri: str = "",
    baseline_uri: str = "",
) -> dict:
    """Compare the serving window with the baseline split (skew) and, when a previous
    window is given, with that window (drift); write report.json and report.html.

    ``request_log_dir`` is a folder of the local serving process's JSON Lines logs or
    Vertex AI's request-response log table ``bq://project.dataset.table`` (read with
    ``bigquery``'s options); both are read by one code path and give the same numbers
    for the same requests. A serving window without requests is reported as such
    (``report["no_requests"]``) and alerts nothing.

    ``report["flagged"]`` joins both: the features over their threshold in either
    comparison. When anything is flagged, an alert is logged and sent, once the report is
    written, to ``alert_webhook`` (an http(s) URL: a chat webhook, a Cloud Function) as a
    JSON POST and to ``alert_topic`` (a Pub/Sub topic, ``projects/<project>/topics/<topic>``)
    as one message with the same JSON and filterable attributes. Each delivery waits at
    most ``alert_timeout`` seconds. A failed delivery is logged as an error and recorded in
    ``report["alerts"]`` (also in report.json), not raised: the report and the step's
    outputs stand, and the WARNING log lines still carry the alert.

    ``runner`` empty computes the histograms here, in this process; "DirectRunner" (Beam's
    FnApiRunner) or "DataflowRunner" (with ``pipeline_options`` from
    ``cauce.beam_pipelines.runner_options``) computes them as Beam combiners
    (``beam_histograms.py``), with the same numbers, writing its partial results under
    ``work_uri`` (gs:// on Dataflow) and reading the baseline at ``baseline_uri`` (the
    Dataset as the workers see it; empty = ``baseline_dir``).

    ``output_dir`` appears only if the whole report was written. Returns the report.
    """
    if alert_webhook and not alert_webhook.startswith(("http://", "https://")):
        raise CauceError(f"alert_webhook {alert_webhook!r} must be an http:// or https:// URL")
    if alert_topic:
        validate_alert_topic(alert_topic)
    features = _validate_features(numeric_features, categorical_features)
    if runner:
        from cauce.components.monitor.beam_histograms import drift_on_beam

        on_beam = drift_on_beam(
            baseline_dir, baseline_split, request_log_dir, numeric_features, categorical_features,
            window=(window_start, window_end), previous_window=(previous_window_start, previous_window_end),
            runner=runner, pipeline_options=pipeline_options, work_uri=work_uri, baseline_uri=baseline_uri,
        )
        baseline_rows, sources = on_beam.baseline_rows, on_beam.sources
        empty = None if on_beam.current_rows else on_beam.empty_message
    else:
        baseline = read_split(baseline_dir, baseline_split, columns=features)
        baseline_rows = baseline.num_rows
        current, sources = _read_request_log(request_log_dir, window_start, window_end, bigquery, allow_empty=True)
        empty = sources.pop("empty", None)
    if empty:
        logger.warning("%s: nothing to compare, no alert", empty)
        _validated_thresholds(thresholds, features, default_numeric_threshold, default_categorical_threshold)
        report = _no_requests_report(baseline_rows, numeric_features, categorical_features, empty,
                                     default_numeric_threshold, default_categorical_threshold)
    elif runner:
        report = on_beam.report(thresholds, default_numeric_threshold, default_categorical_threshold)
    else:
        report = compute_drift(
            baseline,
            current,
            numeric_features,
            categorical_features,
            thresholds,
            default_numeric_threshold,
            default_categorical_threshold,
        )
    report["baseline"] = {"dir": os.fspath(baseline_dir), "split": baseline_split}
    report["serving"] = {
        "request_log_dir": os.fspath(request_log_dir),
        "window_start": window_start,
        "window_end": window_end,
        **sources,
    }
    flagged = set(report["drifted_features"])
    if not empty and (previous_window_start or previous_window_end):
        if runner:
            window = on_beam.window_report(thresholds, default_numeric_threshold, default_categorical_threshold)
        else:
            previous = read_request_log(request_log_dir, previous_window_start, previous_window_end, bigquery)
            window = compute_drift(
                previous,
                current,
                numeric_features,
                categorical_features,
                thresholds,
                default_numeric_threshold,
                default_categorical_threshold,
            )
        window["previous_window"] = {"window_start": previous_window_start, "window_end": previous_window_end}
        report["window_drift"] = window
        flagged |= set(window["drifted_features"])
    report["flagged"] = {"drift_detected": bool(flagged), "features": sorted(flagged)}
    report["generated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(output_dir) as staging:
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False))
        (staging / REPORT_HTML).write_text(render_html(report))
    for comparison, part in (("skew vs baseline", report), ("drift vs previous window", report.get("window_drift"))):
        for name in (part or {}).get("drifted_features", []):
            entry = part["features"][name]
            logger.warning(
                "DRIFT ALERT (%s): feature %r %s = %.4f > threshold %.4f",
                comparison,
                name,
                entry["metric"],
                entry["value"],
                entry["threshold"],
            )
    if flagged and (alert_webhook or alert_topic):
        # The alert goes out only once the report it points at is in place; what became
        # of it is added to report.json afterwards (one atomic file replace).
        report["alerts"] = send_alerts(report, alert_webhook, alert_topic, alert_timeout)
        with atomic_file(Path(output_dir) / REPORT_JSON) as handle:
            handle.write(json.dumps(report, indent=2, allow_nan=False))
    return report


def _no_requests_report(
    baseline_rows: int,
    numeric_features: list[str],
    categorical_features: list[str],
    message: str,
    default_numeric_threshold: float,
    default_categorical_threshold: float,
) -> dict:
    """The report of a serving window without requests: nothing compared, nothing flagged."""
    return {
        "drift_detected": False,
        "drifted_features": [],
        "not_computable_features": [],
        "no_requests": message,
        "num_features": len(numeric_features) + len(categorical_features),
        "num_drifted": 0,
        "numeric_features": list(numeric_features),
        "categorical_features": list(categorical_features),
        "default_thresholds": {
            "numeric": float(default_numeric_threshold),
            "categorical": float(default_categorical_threshold),
        },
        "baseline_rows": baseline_rows,
        "current_rows": 0,
        "features": {},
    }


# ---------------------------------------------------------------------------- alerts

def request_log_dir_of(request_log_dir: str, endpoint_metadata: dict | None, request_log_table: str = "") -> str:
    """The request logs to read: ``request_log_dir`` (a folder) or ``request_log_table``
    (``bq://project.dataset.table``), else the connected endpoint's: the local deploy step's
    log folder, or the request-log table ``deploy_vertex`` named."""
    if request_log_dir and request_log_table:
        raise CauceError(
            f"give request_log_dir ({request_log_dir!r}) or request_log_table ({request_log_table!r}), not both"
        )
    if request_log_table:
        from cauce.request_logs import parse_table

        project, dataset, table = parse_table(request_log_table)
        return f"bq://{project}.{dataset}.{table}"
    if request_log_dir:
        return request_log_dir
    for key in ("request_log_table", "request_log_dir"):
        if endpoint_metadata and endpoint_metadata.get(key):
            return endpoint_metadata[key]
    raise CauceError(
        "request_log_dir and request_log_table are empty and no endpoint with request logs is connected: give "
        "the folder of the serving request logs, the request-log table, or the deploy step's endpoint"
    )


def copy_report_page(report_dir: str, page_path: str) -> None:
    """Copy the report's HTML page to a single-file HTML artifact (what the Vertex console renders)."""
    with open(os.path.join(report_dir, REPORT_HTML)) as page, atomic_file(page_path) as copy:
        copy.write(page.read())


def report_metadata(report: dict) -> dict:
    """The summary of a drift report that the report artifact's metadata carries."""
    return {
        "drift_detected": report["flagged"]["drift_detected"],
        "drifted_features": report["flagged"]["features"],
        "skew_detected": report["drift_detected"],
        "window_drift_detected": report.get("window_drift", {}).get("drift_detected", False),
        "num_features": report["num_features"],
        "num_drifted": report["num_drifted"],
        "baseline_rows": report["baseline_rows"],
        "serving_rows": report["current_rows"],
        "no_requests": report.get("no_requests", ""),
        "undelivered_alerts": [
            delivery["target"] for delivery in report.get("alerts", []) if not delivery["delivered"]
        ],
    }


def validate_alert_topic(topic: str) -> None:
    """Raise CauceError unless ``topic`` is a full Pub/Sub topic name."""
    match = _PUBSUB_TOPIC.fullmatch(topic)
    if match is None or match["topic"].startswith("goog"):
        raise CauceError(
            f"alert_topic {topic!r} must be a Pub/Sub topic name projects/<project>/topics/<topic> "
            "(the topic id: 3-255 letters, digits or - _ . ~ + %, starting with a letter, not with 'goog')"
        )


def alert_payload(report: dict) -> dict:
    """The JSON alert every channel sends (webhook body, Pub/Sub message data)."""
    return {
        "source": ALERT_SOURCE,
        "drifted_features": report["flagged"]["features"],
        "skew": {name: report["features"][name]["value"] for name in report["drifted_features"]},
        "drift": {
            name: report["window_drift"]["features"][name]["value"]
            for name in report.get("window_drift", {}).get("drifted_features", [])
        },
        "serving": report.get("serving", {}),
        "generated_at": report["generated_at"],
    }


def _attribute_value(text: str) -> str:
    """``text`` cut to Pub/Sub's limit on an attribute value (the full list is in the data)."""
    encoded = text.encode()
    if len(encoded) <= _ATTRIBUTE_VALUE_BYTES:
        return text
    return encoded[: _ATTRIBUTE_VALUE_BYTES - 3].decode(errors="ignore") + "..."


def alert_attributes(report: dict) -> dict[str, str]:
    """Pub/Sub message attributes that subscriptions can filter on without reading the data.

    ``kind`` is ``skew``, ``drift`` or ``skew,drift``; ``features`` lists every flagged
    feature, ``skew_features`` / ``drift_features`` (present only when not empty) each
    comparison's; ``endpoint`` and ``model`` name what served the requests (from the
    request logs; comma-separated when several). Empty values are left out.
    """
    skew = report["drifted_features"]
    drift = report.get("window_drift", {}).get("drifted_features", [])
    serving = report.get("serving", {})
    attributes = {
        "source": ALERT_SOURCE,
        "kind": ",".join(kind for kind, flagged in (("skew", skew), ("drift", drift)) if flagged),
        "features": ",".join(report["flagged"]["features"]),
        "skew_features": ",".join(skew),
        "drift_features": ",".join(drift),
        "endpoint": ",".join(serving.get("endpoints", [])),
        "model": ",".join(serving.get("deployed_model_ids", [])),
        "generated_at": report["generated_at"],
    }
    return {key: _attribute_value(value) for key, value in attributes.items() if value}


def send_alerts(report: dict, webhook: str = "", topic: str = "", timeout: float = ALERT_TIMEOUT_S) -> list[dict]:
    """Deliver one alert per channel given; one record per delivery (never raises for delivery)."""
    payload = alert_payload(report)
    deliveries = []
    if webhook:
        deliveries.append(post_alert(webhook, payload, timeout))
    if topic:
        deliveries.append(publish_alert(topic, payload, alert_attributes(report), timeout))
    return deliveries


def post_alert(url: str, payload: dict, timeout: float = ALERT_TIMEOUT_S) -> dict:
    """POST the JSON alert to a webhook; return what happened (never raises for delivery)."""
    import urllib.error
    import urllib.request

    record = {"channel": "webhook", "target": url}
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
            return {**record, "delivered": True, "status": response.status}
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        logger.error("drift alert to webhook %s not delivered: %s", url, error)
        return {**record, "delivered": False, "error": str(error)}


def publish_alert(topic: str, payload: dict, attributes: dict[str, str], timeout: float = ALERT_TIMEOUT_S) -> dict:
    """Publish the JSON alert as one Pub/Sub message; return what happened (never raises for delivery).

    The client's own retry policy keeps retrying an unreachable service for 10 minutes;
    here transient errors are retried only within ``timeout`` seconds. Honours
    ``PUBSUB_EMULATOR_HOST`` (the client's emulator switch: no credentials, plain gRPC).
    """
    from google.api_core import exceptions as api_exceptions
    from google.api_core import retry as api_retry
    from google.auth import exceptions as auth_exceptions
    from google.cloud import pubsub_v1

    record = {"channel": "pubsub", "target": topic}
    # The status codes the client itself retries on Publish, within our deadline.
    retry = api_retry.Retry(
        predicate=api_retry.if_exception_type(
            api_exceptions.Aborted,
            api_exceptions.Cancelled,
            api_exceptions.DeadlineExceeded,
            api_exceptions.InternalServerError,
            api_exceptions.ResourceExhausted,
            api_exceptions.ServiceUnavailable,
            api_exceptions.Unknown,
        ),
        initial=0.1,
        maximum=2.0,
        timeout=timeout,
    )
    options = pubsub_v1.types.PublisherOptions(retry=retry, timeout=timeout)
    try:
        with pubsub_v1.PublisherClient(publisher_options=options) as publisher:
            future = publisher.publish(topic, json.dumps(payload).encode(), **attributes)
            # A backstop in case the batch never settles (say, credentials that cannot be
            # refreshed inside the client's commit thread): leaving the block closes the channel.
            message_id = future.result(timeout=timeout + 5)
    except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, TimeoutError) as error:
        message = f"{type(error).__name__}: {error}"
        logger.error("drift alert to Pub/Sub topic %s not published: %s", topic, message)
        return {**record, "delivered": False, "error": message}
    return {**record, "delivered": True, "message_id": message_id}
