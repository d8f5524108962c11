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
import os
import secrets
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError

from . import executor

MANIFEST = "_PUBLISHED.json"
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
    ``aggregate_for_tfma`` groups them; other tasks: Arrow tables with weight 1)."""

    def __init__(self, model_uri: str, split: str, slice_features: list[str]):
        self._model_uri, self._split, self._slice_features = model_uri, split, slice_features
        self._model = None

    def setup(self):
        from cauce import model as cauce_model

        self._model = cauce_model.load(cauce_model.fetch_model_dir(self._model_uri))

    def process(self, batch):
        model = self._model
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        labels = _batch_labels(table, model, self._split)
        outputs = model.predict_scores(table)
        columns = {model.label: labels, executor.PREDICTION_KEY: executor._predictions(outputs, model.task)}
        for feature in self._slice_features:
            columns[feature] = pc.fill_null(
                pc.cast(table.column(feature), pa.string()), executor.MISSING_SLICE_VALUE
            ).combine_chunks()
        rows = pa.table(columns)
        if model.task != "binary":
            yield "rows", rows.append_column(executor.WEIGHT_KEY, pa.array(np.ones(rows.num_rows)))
            return
        keys = [model.label, *self._slice_features]
        grouped = (
            rows.append_column("group", pa.array(executor.plot_groups(rows.column(executor.PREDICTION_KEY).to_numpy())))
            .group_by([*keys, "group"], use_threads=False)
            .aggregate([(executor.PREDICTION_KEY, kind) for kind in ("sum", "min", "max", "count")])
        )
        names = [*keys, "group"]
        key_values = [grouped.column(name).to_pylist() for name in names]
        stats = [grouped.column(f"{executor.PREDICTION_KEY}_{kind}").to_pylist() for kind in ("sum", "min", "max", "count")]
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
    total, low, high, count = 0.0, np.inf, -np.inf, 0
    for part_sum, part_min, part_max, part_count in values:
        total, low, high, count = total + part_sum, min(low, part_min), max(high, part_max), count + part_count
    return total, low, high, count


def _examples(label: str, slice_features: list[str]):
    def build(groups) -> pa.RecordBatch:
        groups = sorted(groups)
        columns = {name: [key[index] for key, _ in groups] for index, name in enumerate([label, *slice_features])}
        total, low, high, count = (np.array([stats[i] for _, stats in groups], dtype=np.float64) for i in range(4))
        # The group's mean, kept inside the group's interval (a rounding error could leave it).
        columns[executor.PREDICTION_KEY] = np.minimum(np.maximum(total / count, low), high)
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
    import tensorflow_model_analysis as tfma
    from apache_beam.io.parquetio import ReadFromParquetBatched
    from tfx_bsl.arrow import table_util

    from cauce import model as cauce_model
    from cauce.beam_pipelines import run_pipeline
    from cauce.data import split_path

    slicings = executor.parse_slicings(slice_features)
    features = sorted({name for slicing in slicings for name in slicing})
    model = cauce_model.load(cauce_model.fetch_model_dir(model_uri))
    import pyarrow.dataset as ds

    present = ds.dataset(split_path(dataset_dir, split), format="parquet").schema.names
    executor._check_slice_features(pa.schema([(name, pa.string()) for name in present]).empty_table(), features,
                                   model.label, split)
    eval_config = executor.build_eval_config(model.label, slicings, model.task)
    tfma_uri = _join(os.fspath(output_uri), executor.TFMA_DIR)
    attempt = new_attempt(tfma_uri)
    read_root = (dataset_uri or os.fspath(dataset_dir)).rstrip("/")

    def build(pipeline):
        scored = (
            pipeline
            | "Read split" >> ReadFromParquetBatched(f"{read_root}/{split}/*.parquet")
            | "Score" >> beam.ParDo(_ScoreBatches(model_uri, split, features))
        )
        if model.task == "binary":
            batches = (
                scored
                | "Groups" >> beam.Map(lambda kind_and_value: kind_and_value[1])
                | "Merge groups" >> beam.CombinePerKey(_merge_groups)
                | "All groups" >> beam.combiners.ToList()
                | "Examples" >> beam.Map(_examples(model.label, features))
            )
        else:
            batches = scored | "Rows" >> beam.FlatMap(lambda kind_and_table: kind_and_table[1].to_batches())
        _ = (
            batches
            | "Canonical batches" >> beam.Map(table_util.CanonicalizeRecordBatch)
            | "TFMA" >> tfma.ExtractEvaluateAndWriteResults(eval_config=eval_config, output_path=attempt)
        )

    run_pipeline(build, runner, pipeline_options)
    publish(tfma_uri, attempt)
    return read_tfma_results(tfma_uri, model.task)


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
