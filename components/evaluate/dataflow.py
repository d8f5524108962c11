"""Evaluate's TFMA run as one Beam pipeline, on the FnApiRunner or on Dataflow, writing to a
gs:// URI without the atomicity trap (docs/architecture.md).

The pipeline reads the split's Parquet files, scores each record batch with the model bundle
in the workers (the same ``cauce.model`` code and fitted transform serving uses), collapses
the rows TFMA's plots cannot tell apart into weighted examples as the in-process path does
(``executor.aggregate_for_tfma``, here a ``CombinePerKey``, so any number of workers can
share it), and runs TFMA with evaluate's own ``build_eval_config``: the same example counts,
ROC and calibration plots as ``executor._run_tfma`` (multiclass and regression rows go to
TFMA unaggregated, with weight 1, as in process).

**Publishing.** Cloud Storage has no atomic rename of a folder, so a folder written in place
can be read half-written, and a failed or cancelled job leaves a partial one. Here TFMA writes
under ``<output_uri>/tfma/attempt-<time>-<random>/``, a prefix no reader looks at; only after
the job has succeeded is ``<output_uri>/tfma/_PUBLISHED.json`` written: one object (an
object write is atomic on Cloud Storage; locally it is a rename) naming the attempt and every
file in it with its size. ``published_tfma_dir`` is the one way to read the output: it
refuses a folder without the manifest, or whose listed files are missing or of another size.
A rerun publishes a new attempt by replacing the manifest; earlier attempts stay until
``sweep_attempts`` removes those the manifest does not name.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

from . import executor
from . import metrics as exact_metrics

MANIFEST = "_PUBLISHED.json"
EXACT_FILE = "exact_metrics.json"  # what the pipeline writes into its work folder
ATTEMPT_PREFIX = "attempt-"


# ---------------------------------------------------------------------- publishing


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") if index else part.rstrip("/") for index, part in enumerate(parts))


def new_attempt(tfma_uri: str) -> str:
    """A fresh, unpublished prefix under ``tfma_uri`` for one run to write into."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return _join(tfma_uri, f"{ATTEMPT_PREFIX}{stamp}-{secrets.token_hex(4)}")


def publish(tfma_uri: str, attempt_uri: str) -> dict:
    """Make ``attempt_uri`` the published output of ``tfma_uri``: write the manifest (every
    file of the attempt with its size) as one object. Returns the manifest."""
    from apache_beam.io.filesystems import FileSystems

    (matched,) = FileSystems.match([_join(attempt_uri, "*")])
    files = sorted(
        (metadata.path[len(attempt_uri.rstrip("/")) + 1 :], metadata.size_in_bytes) for metadata in matched.metadata_list
    )
    if not files:
        raise CauceError(f"nothing to publish: {attempt_uri} holds no file")
    manifest = {
        "format": 1,
        "attempt": attempt_uri.rstrip("/").rsplit("/", 1)[1],
        "files": [{"path": path, "size": size} for path, size in files],
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(manifest, indent=2).encode()
    target = _join(tfma_uri, MANIFEST)
    if "://" in tfma_uri:
        with FileSystems.create(target) as handle:  # one object: visible whole or not at all
            handle.write(text)
    else:
        staging = f"{target}.{secrets.token_hex(4)}.partial"
        with open(staging, "wb") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target)
    return manifest


def published_tfma_dir(tfma_uri: str) -> str:
    """The published attempt's folder, after checking it against the manifest; a CauceError
    for an output that was never published (a failed, cancelled or running job's)."""
    from apache_beam.io.filesystems import FileSystems

    target = _join(tfma_uri, MANIFEST)
    try:
        with FileSystems.open(target) as handle:
            manifest = json.loads(handle.read())
    except (OSError, Exception) as error:  # noqa: BLE001 - Beam raises its own IOError/BeamIOError
        if isinstance(error, json.JSONDecodeError):
            raise CauceError(f"{target} is not a publish manifest ({error})") from None
        raise CauceError(
            f"{tfma_uri} has no {MANIFEST}: its writer did not finish (failed, cancelled or still running); "
            "refusing an unpublished output"
        ) from None
    attempt = _join(tfma_uri, manifest["attempt"])
    (matched,) = FileSystems.match([_join(attempt, "*")])
    sizes = {metadata.path[len(attempt) + 1 :]: metadata.size_in_bytes for metadata in matched.metadata_list}
    for entry in manifest["files"]:
        if sizes.get(entry["path"]) != entry["size"]:
            raise CauceError(
                f"{attempt}/{entry['path']} is missing or not the {entry['size']} bytes {MANIFEST} lists: "
                "refusing a damaged output"
            )
    return attempt


def sweep_attempts(tfma_uri: str) -> list[str]:
    """Remove every attempt the manifest does not name (failed runs, superseded ones);
    returns the prefixes removed. Run it when no reader can still hold an old manifest."""
    from apache_beam.io.filesystems import FileSystems

    published = published_tfma_dir(tfma_uri)
    (matched,) = FileSystems.match([_join(tfma_uri, f"{ATTEMPT_PREFIX}*", "*")])
    stale = sorted({m.path.rsplit("/", 1)[0] for m in matched.metadata_list} - {published})
    for prefix in stale:
        (files,) = FileSystems.match([_join(prefix, "*")])
        _delete([m.path for m in files.metadata_list])
    return stale


def _delete(paths: list[str]) -> None:
    """Delete files; gs:// objects one request each (Beam's delete uses the JSON batch API,
    which the Cloud Storage emulator does not serve)."""
    from apache_beam.io.filesystems import FileSystems

    local = [path for path in paths if not path.startswith("gs://")]
    if local:
        FileSystems.delete(local)
    remote = [path for path in paths if path.startswith("gs://")]
    if remote:
        from google.cloud import storage

        client = storage.Client()
        for path in remote:
            bucket, _, name = path[len("gs://") :].partition("/")
            client.bucket(bucket).blob(name).delete()


# ------------------------------------------------------------------------ pipeline


class _ScoreBatches(beam.DoFn):
    """Record batches of the split -> TFMA's rows (binary: partial groups keyed as
    ``aggregate_for_tfma`` groups them; other tasks: Arrow tables with weight 1) as the main
    output; with ``exact``, also ``counts`` (rows kept, rows without a label) and
    ``aggregates``: ``((model, slice), aggregate)`` of every slice of the batch
    (``metrics.slice_aggregates``), for the candidate and, with ``champion_uri``, the champion."""

    def __init__(self, model_uri: str, split: str, slice_features: list[str], exact: bool = False,
                 slicings: list | None = None, champion_uri: str = ""):
        self._model_uri, self._split, self._slice_features = model_uri, split, slice_features
        self._exact, self._slicings, self._champion_uri = exact, [tuple(s) for s in slicings or []], champion_uri
        self._model = self._champion = None

    def setup(self):
        from cauce import model as cauce_model

        self._model = cauce_model.load(cauce_model.fetch_model_dir(self._model_uri))
        if self._champion_uri:
            self._champion = cauce_model.load(cauce_model.fetch_model_dir(self._champion_uri))

    def process(self, batch):
        from cauce.data import drop_missing_labels

        model = self._model
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        # Rows without a label measure nothing: left out and counted, as in process.
        table, missing = drop_missing_labels(table, model.label)
        if self._exact:
            yield beam.pvalue.TaggedOutput("counts", (table.num_rows, missing))
        if not table.num_rows:
            return
        labels = _batch_labels(table, model, self._split)
        outputs = model.predict_scores(table)
        columns = {model.label: labels, executor.PREDICTION_KEY: executor._predictions(outputs, model.task)}
        for feature in self._slice_features:
            columns[feature] = pc.fill_null(
                pc.cast(table.column(feature), pa.string()), executor.MISSING_SLICE_VALUE
            ).combine_chunks()
        if self._exact:
            label_values = labels.to_numpy()
            slice_values = {f: columns[f].to_numpy(zero_copy_only=False) for f in self._slice_features}
            scored = [(executor.CANDIDATE, outputs)]
            if self._champion is not None:
                scored.append((executor.CHAMPION, self._champion.predict_scores(table)))
            for who, who_outputs in scored:
                parts = exact_metrics.slice_aggregates(model.task, label_values, who_outputs, slice_values, self._slicings)
                for key, aggregated in parts.items():
                    yield beam.pvalue.TaggedOutput("aggregates", ((who, key), aggregated))
        rows = pa.table(columns)
        if model.task != "binary":
            yield "rows", rows.append_column(executor.WEIGHT_KEY, pa.array(np.ones(rows.num_rows)))
            return
        keys = [model.label, *self._slice_features]
        grouped = (
            rows.append_column("group", pa.array(executor.plot_groups(rows.column(executor.PREDICTION_KEY).to_numpy())))
            .group_by([*keys, "group"], use_threads=False)
            .aggregate([(executor.PREDICTION_KEY, kind) for kind in ("list", "min", "max", "count")])
        )
        names = [*keys, "group"]
        key_values = [grouped.column(name).to_pylist() for name in names]
        # Each group's sum as exact partials: merged across batches, they give the same
        # correctly rounded sum as the in-process path (executor.group_means).
        partials = [executor.exact_partials(values.values.to_numpy()) for values in grouped.column(f"{executor.PREDICTION_KEY}_list").combine_chunks()]
        stats = [partials] + [grouped.column(f"{executor.PREDICTION_KEY}_{kind}").to_pylist() for kind in ("min", "max", "count")]
        for index in range(grouped.num_rows):
            yield "groups", (tuple(values[index] for values in key_values), tuple(s[index] for s in stats))


def _batch_labels(table: pa.Table, model, split: str) -> pa.Array:
    """``executor._labels`` of one batch: a binary batch may hold one class only (the split's
    both classes are not a batch's to check)."""
    if model.task != "binary" or model.label not in table.column_names or not table.num_rows:
        return executor._labels(table, model, split)
    column = table.column(model.label)
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    if column.null_count or np.setdiff1d(np.unique(values), [0.0, 1.0]).size:
        return executor._labels(table, model, split)  # raises, naming what is wrong
    return pa.array(values.astype(np.int64))


def _merge_groups(values):
    partials, low, high, count = [], np.inf, -np.inf, 0
    for part_partials, part_min, part_max, part_count in values:
        partials = executor.exact_partials(part_partials, partials)
        low, high, count = min(low, part_min), max(high, part_max), count + part_count
    return partials, low, high, count


def _examples(label: str, slice_features: list[str]):
    def build(groups) -> pa.RecordBatch:
        groups = sorted(groups)
        columns = {name: [key[index] for key, _ in groups] for index, name in enumerate([label, *slice_features])}
        sums = np.array([math.fsum(stats[0]) for _, stats in groups], dtype=np.float64)
        low, high, count = (np.array([stats[i] for _, stats in groups], dtype=np.float64) for i in range(1, 4))
        columns[executor.PREDICTION_KEY] = executor.group_means(sums, count, low, high)
        columns[executor.WEIGHT_KEY] = count
        return pa.table(columns).combine_chunks().to_batches()[0]

    return build


def run_tfma_beam(
    model_uri: str,
    dataset_dir: str,
    split: str,
    slice_features: list[str] | tuple[str, ...],
    output_uri: str,
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    dataset_uri: str = "",
) -> dict:
    """Score ``split`` with the model at ``model_uri`` and run TFMA (evaluate's config) in one
    Beam pipeline, publishing its output under ``<output_uri>/tfma``. Returns what
    ``executor._run_tfma`` returns (overall ROC and calibration for binary models, example
    counts by slice), read back from the published output. ``dataset_dir`` is read here for
    the model's task and label; the workers read ``dataset_uri`` (gs:// on Dataflow; empty =
    dataset_dir) and the model at ``model_uri``."""
    return _run(model_uri, dataset_dir, split, slice_features, output_uri, runner, pipeline_options, dataset_uri)


def evaluate_beam(
    model_uri: str,
    dataset_dir: str,
    split: str,
    slice_features: list[str] | tuple[str, ...],
    output_uri: str,
    work_uri: str,
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    dataset_uri: str = "",
    champion_uri: str = "",
) -> dict:
    """Everything ``executor.run_evaluate`` computes from the rows, in one Beam pipeline:
    TFMA's plots and counts (published under ``<output_uri>/tfma``, as ``run_tfma_beam``),
    and the exact metrics of the candidate (and, with ``champion_uri``, of the champion)
    overall and per slice, merged from per-batch aggregates (``metrics.merge``: the same
    numbers, bit for bit, as all rows at once), written as one JSON file into ``work_uri``
    (gs:// on Dataflow) and read back here. Adds to ``run_tfma_beam``'s result ``metrics``,
    ``slices``, ``champion`` (``{"metrics", "slices"}`` or None), ``confusion`` (the overall
    confusion counts), ``rows``, ``rows_missing_label`` and ``tfma_examples``."""
    return _run(model_uri, dataset_dir, split, slice_features, output_uri, runner, pipeline_options, dataset_uri,
                work_uri=work_uri, champion_uri=champion_uri)


def _run(model_uri, dataset_dir, split, slice_features, output_uri, runner, pipeline_options, dataset_uri,
         work_uri: str = "", champion_uri: str = "") -> dict:
    import pyarrow.dataset as ds
    import tensorflow_model_analysis as tfma
    from apache_beam.io.parquetio import ReadFromParquetBatched
    from tfx_bsl.arrow import table_util

    from cauce import model as cauce_model
    from cauce.beam_pipelines import run_pipeline
    from cauce.data import split_path

    exact = bool(work_uri)
    slicings = executor.parse_slicings(slice_features)
    features = sorted({name for slicing in slicings for name in slicing})
    model = cauce_model.load(cauce_model.fetch_model_dir(model_uri))
    split_dataset = ds.dataset(split_path(dataset_dir, split), format="parquet")
    present = split_dataset.schema.names
    executor._check_slice_features(pa.schema([(name, pa.string()) for name in present]).empty_table(), features,
                                   model.label, split)
    if model.label not in present:
        raise CauceError(
            f"label column {model.label!r} (the model's label) not found in split {split!r}; columns present: {present}"
        )
    if not split_dataset.count_rows():
        raise CauceError(f"split {split!r} is empty: there is nothing to evaluate")
    eval_config = executor.build_eval_config(model.label, slicings, model.task)
    tfma_uri = _join(os.fspath(output_uri), executor.TFMA_DIR)
    attempt = new_attempt(tfma_uri)
    read_root = (dataset_uri or os.fspath(dataset_dir)).rstrip("/")
    task = model.task

    def build(pipeline):
        scored = (
            pipeline
            | "Read split" >> ReadFromParquetBatched(f"{read_root}/{split}/*.parquet")
            | "Score" >> beam.ParDo(
                _ScoreBatches(model_uri, split, features, exact, slicings, champion_uri)
            ).with_outputs("counts", "aggregates", main="tfma")
        )
        if task == "binary":
            batches = (
                scored.tfma
                | "Groups" >> beam.Map(lambda kind_and_value: kind_and_value[1])
                | "Merge groups" >> beam.CombinePerKey(_merge_groups)
                | "All groups" >> beam.combiners.ToList()
                | "Examples" >> beam.Map(_examples(model.label, features))
            )
        else:
            batches = scored.tfma | "Rows" >> beam.FlatMap(lambda kind_and_table: kind_and_table[1].to_batches())
        _ = (
            batches
            | "Canonical batches" >> beam.Map(table_util.CanonicalizeRecordBatch)
            | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(eval_config=eval_config, output_path=attempt)
        )
        if exact:
            summaries = (
                scored.aggregates
                | "Merge aggregates" >> beam.CombinePerKey(exact_metrics.merge)
                | "Metrics" >> beam.Map(_slice_summary(task))
            )
            counts = (
                scored.counts
                | "Count rows" >> beam.CombineGlobally(_sum_pairs)
                | "Counts" >> beam.Map(lambda pair: {"rows": pair[0], "rows_missing_label": pair[1]})
            )
            examples = (
                batches
                | "Examples per batch" >> beam.Map(lambda batch: batch.num_rows)
                | "Count examples" >> beam.CombineGlobally(sum)
                | "Examples count" >> beam.Map(lambda count: {"tfma_examples": count})
            )
            _ = (
                (summaries, counts, examples)
                | "Results" >> beam.Flatten()
                | "All results" >> beam.combiners.ToList()
                | "Write results" >> beam.Map(_write_json(_join(work_uri, EXACT_FILE)))
            )

    run_pipeline(build, runner, pipeline_options)
    if exact:
        # Checked before publishing: a split the in-process path refuses is refused here too.
        computed = _read_exact(_join(work_uri, EXACT_FILE), model, split)
    publish(tfma_uri, attempt)
    results = read_tfma_results(tfma_uri, task)
    if exact:
        results.update(computed)
    return results


def _sum_pairs(pairs) -> tuple[int, int]:
    first = second = 0
    for one, two in pairs:
        first, second = first + one, second + two
    return first, second


def _slice_summary(task: str):
    def summarize(keyed) -> dict:
        (who, key), aggregated = keyed
        entry = {"model": who, "slice": list(key) if key is not None else None,
                 "metrics": exact_metrics.metrics_of(task, aggregated)}
        if key is None:
            if task == "binary":
                entry["confusion"] = exact_metrics.binary_confusion(aggregated)
                entry["classes"] = aggregated["counts"].sum(axis=0).tolist()  # negatives, positives
            elif task == "multiclass":
                entry["confusion"] = aggregated["confusion"].tolist()
        return entry

    return summarize


def _write_json(path: str):
    def write(results) -> str:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as handle:
            handle.write(json.dumps(results).encode())
        return path

    return write


def _read_exact(path: str, model, split: str) -> dict:
    """The pipeline's exact results, in ``run_evaluate``'s shapes."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        results = json.loads(handle.read())
    computed = {"champion": None}
    by_model: dict[str, dict] = {}
    for entry in results:
        if "model" not in entry:
            computed.update(entry)
            continue
        place = by_model.setdefault(entry["model"], {"metrics": None, "slices": []})
        if entry["slice"] is None:
            place["metrics"] = entry["metrics"]
            if entry["model"] == executor.CANDIDATE:
                computed["confusion"] = entry.get("confusion")
                computed["classes"] = entry.get("classes")
        else:
            place["slices"].append({"feature": entry["slice"][0], "value": entry["slice"][1], "metrics": entry["metrics"]})
    for place in by_model.values():
        place["slices"].sort(key=lambda item: (item["feature"], item["value"]))
    if not computed.get("rows"):
        raise CauceError(f"split {split!r} is empty: there is nothing to evaluate")
    if model.task == "binary":
        negatives, positives = computed.pop("classes")
        if not (negatives and positives):
            raise CauceError(
                f"label column {model.label!r} holds only the class {int(bool(positives))} in split {split!r}; "
                "evaluating a classifier (AUC, precision, recall) needs examples of both classes"
            )
    computed.pop("classes", None)
    candidate = by_model[executor.CANDIDATE]
    computed["metrics"], computed["slices"] = candidate["metrics"], candidate["slices"]
    if executor.CHAMPION in by_model:
        computed["champion"] = by_model[executor.CHAMPION]
    return computed


def read_tfma_results(tfma_uri: str, task: str) -> dict:
    """Example counts by slice, and for a binary model the overall ROC and calibration, of
    the published TFMA output (refused when unpublished)."""
    import tensorflow_model_analysis as tfma

    folder = published_tfma_dir(tfma_uri)
    counts = {}
    for metrics_for_slice in tfma.load_metrics(folder):
        for item in metrics_for_slice.metric_keys_and_values:
            if item.key.name == "example_count":
                counts[executor._slice_of(metrics_for_slice.slice_key)] = item.value.double_value.value
    overall_plots = None
    if task == "binary":
        (overall_plots,) = (
            plots_for_slice.plot_keys_and_values[0].value
            for plots_for_slice in tfma.load_plots(folder)
            if not plots_for_slice.slice_key.single_slice_keys
        )
    return {
        "roc": executor._roc_points(overall_plots.confusion_matrix_at_thresholds) if overall_plots else None,
        "calibration": executor._calibration_buckets(overall_plots.calibration_histogram_buckets) if overall_plots else None,
        "tfma_output": folder,
        "example_counts": counts,
    }
