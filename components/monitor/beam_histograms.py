"""monitor's histograms as Beam combiners: the same drift numbers, on any runner.

``FeatureProfilesFn`` is a ``beam.CombineFn`` over Arrow tables (the baseline split's record
batches, or the serving window's instances) whose output is, per monitored feature, what the
drift measures read (executor.py, TFDV's definitions, docs/architecture.md):

* numeric: the rows, the missing values and the STANDARD histogram, built from the 1001
  quantiles of ``NumericValueCounts``: exact counts of each distinct value (so exactly the
  quantiles the in-process sort gives, and the same histogram and Jensen-Shannon divergence
  bit for bit) up to ``EXACT_VALUES`` distinct values, then validate's quantile summary
  (components/validate/accumulators.py: rank error within ~0.1 % of n, TFDV's own sketch
  allows 1 %);
* categorical: the category counts of validate's ``StringAccumulator`` (exact up to
  ``MAX_TRACKED_VALUES`` categories, then the most frequent ones).

Merging is associative and commutative and exact while those bounds hold, so Beam may combine
partial results from any number of workers in any order. ``drift_on_beam`` runs one pipeline
for the baseline, the serving window and the previous window (JSON Lines request logs, local
or gs://, read file by file through the in-process path's own parsing and window rule), on the
FnApiRunner or on Dataflow through ``cauce.beam_pipelines.run_pipeline`` (the launch, the wait,
a failed job's id and error, cancellation on SIGTERM), writes each side's profiles under
``work_uri`` and builds the report with the in-process path's ``drift_report``.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa

from cauce.artifacts import CauceError
from cauce.components.validate.accumulators import QuantileStream, QuantileSummary, StringAccumulator
from cauce.tfdv_histograms import NUM_QUANTILES, standard_histogram_of

from . import executor

# Distinct values of a numeric feature counted exactly (16 bytes each: 16 MiB at most);
# beyond it the feature's quantiles come from validate's bounded quantile summary.
EXACT_VALUES = 1 << 20
# Instances per Arrow table handed to the combiner from the request logs.
BATCH_INSTANCES = 65_536
SIDES = ("baseline", "current", "previous")


# ------------------------------------------------------------------------ numeric


@dataclass
class NumericValueCounts:
    """One numeric feature of one side: missing values, the finite range, +inf values, and
    the present values as exact (sorted distinct value, count) pairs, or, past
    ``EXACT_VALUES`` distinct values, a quantile summary."""

    rows: int = 0
    missing: int = 0
    count: int = 0
    finite_min: float = math.inf
    finite_max: float = -math.inf
    num_pos_inf: int = 0
    values: np.ndarray | None = field(default_factory=lambda: np.empty(0))
    counts: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    sketch: QuantileStream | None = None

    def add(self, numbers: np.ndarray) -> None:
        """A column of float64 with NaN for missing."""
        present = numbers[~np.isnan(numbers)]
        self.rows += numbers.size
        self.missing += numbers.size - present.size
        if not present.size:
            return
        finite = present[np.isfinite(present)]
        if finite.size:
            self.finite_min = min(self.finite_min, float(finite.min()))
            self.finite_max = max(self.finite_max, float(finite.max()))
        self.num_pos_inf += int(np.isposinf(present).sum())
        self.count += present.size
        distinct, counts = np.unique(present, return_counts=True)
        self._absorb(distinct, counts.astype(np.int64), None)

    def add_missing(self, rows: int) -> None:
        """``rows`` rows that lack the feature altogether."""
        self.rows += rows
        self.missing += rows

    def merge(self, other: NumericValueCounts) -> None:
        self.rows += other.rows
        self.missing += other.missing
        self.count += other.count
        self.finite_min = min(self.finite_min, other.finite_min)
        self.finite_max = max(self.finite_max, other.finite_max)
        self.num_pos_inf += other.num_pos_inf
        self._absorb(other.values, other.counts, other.sketch)

    def _absorb(self, values: np.ndarray | None, counts: np.ndarray | None, sketch: QuantileStream | None) -> None:
        if self.sketch is None and sketch is None:
            merged = np.concatenate([self.values, values])
            if not merged.size:
                return
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            order = np.argsort(merged, kind="stable")
            merged = merged[order]
            weights = np.concatenate([self.counts, counts])[order]
            starts = np.flatnonzero(np.r_[True, merged[1:] != merged[:-1]])
            self.values, self.counts = merged[starts], np.add.reduceat(weights, starts)
            if self.values.size > EXACT_VALUES:
                self.sketch, self.values, self.counts = _stream_of(self.values, self.counts), None, None
            return
        if self.sketch is None:
            self.sketch, self.values, self.counts = _stream_of(self.values, self.counts), None, None
        self.sketch.merge(sketch if sketch is not None else _stream_of(values, counts))

    @property
    def exact(self) -> bool:
        return self.sketch is None

    def quantiles_and_cumulative_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``tfdv_histograms.quantiles_and_cumulative_counts`` of the values: exactly its
        answer while the counts are exact."""
        if self.sketch is not None:
            return self.sketch.summary().quantiles_and_cumulative_counts(NUM_QUANTILES)
        cumulative = np.cumsum(self.counts)
        n = int(cumulative[-1])
        ranks = np.minimum(np.arange(NUM_QUANTILES + 1, dtype=np.int64) * n // NUM_QUANTILES, n - 1)
        index = np.searchsorted(cumulative, ranks, side="right")
        return self.values[index], cumulative[index].astype(np.float64)

    def profile(self) -> executor.NumericProfile:
        if not self.count:
            return executor.NumericProfile(self.rows, self.missing, None)
        if self.finite_min > self.finite_max:  # only infinite values: no quantiles needed
            quantiles, cumulative = np.empty(0), np.empty(0)
        else:
            quantiles, cumulative = self.quantiles_and_cumulative_counts()
        histogram = standard_histogram_of(
            quantiles, cumulative, self.finite_min, self.finite_max, self.num_pos_inf, self.count
        )
        return executor.NumericProfile(self.rows, self.missing, histogram)


def _stream_of(values: np.ndarray, counts: np.ndarray) -> QuantileStream:
    """A quantile stream holding exact (value, count) pairs, compressed to its bound."""
    weights = counts.astype(np.float64)
    cumulative = np.cumsum(weights)
    summary = QuantileSummary(values.astype(np.float64), weights, cumulative - weights, cumulative)
    return QuantileStream(levels=[summary.compress()]) if values.size else QuantileStream()


# ------------------------------------------------------------------------ combiner


@dataclass(frozen=True)
class CategoricalProfile:
    rows: int
    categories: np.ndarray  # object array of strings
    counts: np.ndarray  # float64
    exact: bool


@dataclass
class SideProfiles:
    """What one side contributes to the report."""

    rows: int
    numeric: dict[str, executor.NumericProfile]
    categorical: dict[str, CategoricalProfile]
    seen: list[str]
    endpoints: list[str]
    deployed_model_ids: list[str]
    approximate: list[str]


class FeatureProfilesFn(beam.CombineFn):
    """Arrow tables of one side -> ``SideProfiles`` of the monitored features.

    The accumulator: [rows, {numeric feature: NumericValueCounts}, {categorical feature:
    (rows, StringAccumulator)}, features seen, endpoints, deployed model ids]."""

    def __init__(self, numeric_features: list[str], categorical_features: list[str], side: str):
        self._numeric = list(numeric_features)
        self._categorical = list(categorical_features)
        self._side = side

    def create_accumulator(self):
        return [
            0,
            {name: NumericValueCounts() for name in self._numeric},
            {name: [0, StringAccumulator()] for name in self._categorical},
            set(),
            set(),
            set(),
        ]

    def add_input(self, accumulator, element):
        table, endpoints, models = element if isinstance(element, tuple) else (element, (), ())
        rows = table.num_rows
        accumulator[0] += rows
        names = set(table.schema.names)
        accumulator[3] |= names & (set(self._numeric) | set(self._categorical))
        accumulator[4].update(endpoints)
        accumulator[5].update(models)
        table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        for name, counts in accumulator[1].items():
            if name in names:
                counts.add(executor._numeric_column(table, name, "serving" if self._side != "baseline" else "baseline"))
            else:
                counts.add_missing(rows)
        for name, (_, strings) in accumulator[2].items():
            accumulator[2][name][0] += rows
            if name in names:
                strings.add(executor.category_strings(table.column(name)))
            else:
                strings.num_missing += rows
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged[0] += other[0]
            for name, counts in merged[1].items():
                counts.merge(other[1][name])
            for name, pair in merged[2].items():
                pair[0] += other[2][name][0]
                pair[1].merge(other[2][name][1])
            for index in (3, 4, 5):
                merged[index] |= other[index]
        return merged

    def extract_output(self, accumulator) -> SideProfiles:
        rows, numeric, categorical, seen, endpoints, models = accumulator
        categorical_profiles = {
            name: CategoricalProfile(
                count,
                np.asarray(strings.values.to_numpy(zero_copy_only=False)).astype(object),
                strings.frequencies.astype(np.float64),
                strings.exact,
            )
            for name, (count, strings) in categorical.items()
        }
        approximate = [name for name, counts in numeric.items() if not counts.exact]
        approximate += [name for name, profile in categorical_profiles.items() if not profile.exact]
        return SideProfiles(
            rows,
            {name: counts.profile() for name, counts in numeric.items()},
            categorical_profiles,
            sorted(seen),
            sorted(endpoints - {""}),
            sorted(models - {""}),
            sorted(approximate),
        )


# ------------------------------------------------------------------- request logs


class _WindowInstances(beam.DoFn):
    """One JSON Lines log file -> Arrow tables of the instances logged in the window, through
    the in-process path's own parsing and window rule (``executor._instances_of``)."""

    def __init__(self, start: str, end: str, features: list[str]):
        self._start, self._end, self._features = start, end, features

    def process(self, readable_file):
        import io

        start = executor._parse_time(self._start, "window_start") if self._start else None
        end = executor._parse_time(self._end, "window_end") if self._end else None
        path = readable_file.metadata.path
        instances, endpoints, models = [], set(), set()
        with readable_file.open(compression_type="uncompressed") as raw:
            for where, request in executor.jsonl_file_requests(path, io.TextIOWrapper(raw, encoding="utf-8")):
                in_window = executor._instances_of(request, where, start, end)
                if in_window:
                    instances.extend(in_window)
                    endpoints.add(str(request.get("endpoint") or ""))
                    models.add(str(request.get("deployed_model_id") or ""))
                if len(instances) >= BATCH_INSTANCES:
                    yield executor.instances_table(instances, self._features), tuple(endpoints), tuple(models)
                    instances = []
        if instances:
            yield executor.instances_table(instances, self._features), tuple(endpoints), tuple(models)


def _write_profiles(path: str):
    def write(profiles: SideProfiles) -> str:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as handle:
            handle.write(pickle.dumps(profiles, protocol=pickle.HIGHEST_PROTOCOL))
        return path

    return write


# ------------------------------------------------------------------------- the run


@dataclass
class BeamDrift:
    """The sides' profiles, turned into the in-process path's reports."""

    numeric_features: list[str]
    categorical_features: list[str]
    sides: dict[str, SideProfiles]
    empty_message: str
    log_source: str
    previous_window: tuple[str, str]

    @property
    def baseline_rows(self) -> int:
        return self.sides["baseline"].rows

    @property
    def current_rows(self) -> int:
        return self.sides["current"].rows

    @property
    def sources(self) -> dict:
        current = self.sides["current"]
        return {"endpoints": current.endpoints, "deployed_model_ids": current.deployed_model_ids}

    def report(self, thresholds, default_numeric_threshold=0.3, default_categorical_threshold=0.3) -> dict:
        return self._compare("baseline", "current", thresholds, default_numeric_threshold, default_categorical_threshold)

    def window_report(self, thresholds, default_numeric_threshold=0.3, default_categorical_threshold=0.3) -> dict:
        if not self.sides["previous"].rows:
            start, end = self.previous_window
            raise CauceError(
                f"no logged requests with instances in {self.log_source} in the window {executor._window_text(start, end)}"
            )
        return self._compare("previous", "current", thresholds, default_numeric_threshold, default_categorical_threshold)

    def _compare(self, base_side, current_side, thresholds, default_numeric, default_categorical) -> dict:
        features = executor._validate_features(self.numeric_features, self.categorical_features)
        per_feature = executor._validated_thresholds(thresholds, features, default_numeric, default_categorical)
        base, current = self.sides[base_side], self.sides[current_side]
        for profiles, side in ((base, base_side), (current, current_side)):
            missing = [name for name in features if name not in profiles.seen]
            if missing and side != "baseline":
                raise CauceError(
                    f"feature {missing[0]!r} is not in the serving data; columns present: {profiles.seen}"
                )
        entries = {
            name: executor.numeric_entry(base.numeric[name], current.numeric[name]) for name in self.numeric_features
        }
        for name in self.categorical_features:
            b, c = base.categorical[name], current.categorical[name]
            comparison = executor.compare_category_counts(b.categories, b.counts, c.categories, c.counts)
            entries[name] = executor.categorical_entry(comparison, b.rows, c.rows)
        report = executor.drift_report(
            entries, self.numeric_features, self.categorical_features, per_feature,
            default_numeric, default_categorical, base.rows, current.rows,
        )
        approximate = sorted(set(base.approximate) | set(current.approximate))
        if approximate:
            report["approximate_features"] = approximate
        return report


def _log_files(request_log_dir: str) -> str:
    from cauce.request_logs import is_bigquery_table

    if is_bigquery_table(request_log_dir):
        raise CauceError(
            f"request log {request_log_dir}: on a Beam runner the monitor reads JSON Lines request logs (a folder, "
            "local or gs://); read a BigQuery request-log table with runner='' (its window is narrowed in SQL), or "
            "export the window to gs:// as JSON Lines"
        )
    if "://" not in request_log_dir and not os.path.isdir(request_log_dir):
        raise CauceError(f"request_log_dir {request_log_dir} does not exist or is not a directory")
    return f"{request_log_dir.rstrip('/')}/{executor.REQUEST_LOG_GLOB}"


def drift_on_beam(
    baseline_dir: str,
    baseline_split: str,
    request_log_dir: str,
    numeric_features: list[str],
    categorical_features: list[str],
    window: tuple[str, str] = ("", ""),
    previous_window: tuple[str, str] = ("", ""),
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    work_uri: str = "",
    baseline_uri: str = "",
) -> BeamDrift:
    """The profiles of the baseline split, the serving window and (when given) the previous
    window, computed by one Beam pipeline. ``baseline_dir`` is read here for its columns; the
    workers read ``baseline_uri`` (gs:// on Dataflow; empty = baseline_dir) and write each
    side's profiles under ``work_uri`` (gs:// on Dataflow; empty = a temporary folder, the
    DirectRunner only)."""
    import tempfile

    import pyarrow.dataset as ds
    from apache_beam.io import fileio
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.parquetio import ReadFromParquetBatched

    from cauce.beam_pipelines import run_pipeline
    from cauce.data import split_path

    features = executor._validate_features(numeric_features, categorical_features)
    for name, (start, end) in (("window", window), ("previous window", previous_window)):
        for text, what in ((start, f"{name} start"), (end, f"{name} end")):
            if text:
                executor._parse_time(text, what)
    present = ds.dataset(split_path(baseline_dir, baseline_split), format="parquet").schema.names
    for name in features:
        if name not in present:
            raise CauceError(f"feature {name!r} is not in the baseline data; columns present: {present}")
    log_files = _log_files(request_log_dir)
    temporary = None
    if not work_uri:
        if runner != "DirectRunner":
            raise CauceError(f"runner={runner} needs a work_uri its workers can write (gs://)")
        temporary = tempfile.TemporaryDirectory(prefix="cauce-monitor-")
        work_uri = temporary.name
    work_uri = work_uri.rstrip("/")
    read_root = (baseline_uri or os.fspath(baseline_dir)).rstrip("/")
    with_previous = any(previous_window)
    sides = [side for side in SIDES if side != "previous" or with_previous]

    def build(pipeline):
        tables = {
            "baseline": pipeline
            | "Read baseline" >> ReadFromParquetBatched(f"{read_root}/{baseline_split}/*.parquet", columns=features)
        }
        files = (
            pipeline
            | "Match request logs" >> fileio.MatchFiles(log_files, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Open request logs" >> fileio.ReadMatches()
        )
        tables["current"] = files | "Serving window" >> beam.ParDo(_WindowInstances(*window, features))
        if with_previous:
            tables["previous"] = files | "Previous window" >> beam.ParDo(_WindowInstances(*previous_window, features))
        for side in sides:
            _ = (
                tables[side]
                | f"Profiles {side}" >> beam.CombineGlobally(FeatureProfilesFn(numeric_features, categorical_features, side))
                | f"Write {side}" >> beam.Map(_write_profiles(f"{work_uri}/{side}.pkl"))
            )

    try:
        run_pipeline(build, runner, pipeline_options)
        results = {}
        for side in sides:
            with FileSystems.open(f"{work_uri}/{side}.pkl") as handle:
                results[side] = pickle.loads(handle.read())
    finally:
        if temporary is not None:
            temporary.cleanup()
    return BeamDrift(
        list(numeric_features),
        list(categorical_features),
        results,
        f"no logged requests with instances in {request_log_dir} ({executor.REQUEST_LOG_GLOB}) in the window "
        f"{executor._window_text(*window)}",
        f"{request_log_dir} ({executor.REQUEST_LOG_GLOB})",
        previous_window,
    )
