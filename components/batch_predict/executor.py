"""Batch prediction: apply a model bundle to a cauce Dataset split or a BigQuery
table/query, in Arrow record batches through a Beam pipeline, and write the
predictions with each row's key.

Input is one of:

* a cauce Dataset (``input_dataset_dir`` + ``input_split``), read straight from Parquet;
* a BigQuery table or query (``source``), read with the extract step's own code
  (``run_extract`` into a staging Dataset with one split): the same table/query
  checks, query parameters, local engine and BigQuery client, no second SQL path.

The model bundle is loaded once per Beam worker (``DoFn.setup``) with
``cauce.model.load(..., serving=True)``: the fitted transform and the bundle's
``model.onnx`` in ONNX Runtime, or for a linear model its fused scorer (the
coefficients folded into the transform, ``cauce.features.LinearScorer``), exactly what
the prediction server runs: a row's score here is bit for bit the number the server
answers for it (rounded there to 6 places). Output: a cauce Dataset with one split
``predictions`` holding the key column and, by task,

* binary: ``label`` (int64, score >= the bundle's decision threshold) and ``score`` (p(class 1));
* multiclass: ``label`` (the class value) and ``score_<class>`` per class, in the bundle's class order;
* regression: ``value``.

Rows without a label are scored like any other: predicting them is what batch prediction
is for. When the input holds the model's label column, those rows are counted by the
rule every phase uses (``cauce.data.missing_label_mask``) as ``rows_missing_label``:
the rows evaluate left out, should the predictions be compared with the labels.

On the DirectRunner the output is written atomically (``atomic_dir``). On another
runner (Dataflow) the shards go straight to ``output_uri`` (Beam finalizes each
write) and ``_schema.json`` is written last, as the transform step does, so a failed
job leaves nothing that reads as a complete Dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.features import FittedTransform
from cauce.targets import TARGETS

log = logging.getLogger(__name__)

SPLIT = "predictions"


# --------------------------------------------------------------------------- model side
def model_signature(model_dir: str) -> dict:
    """Task, classes, input features and decision threshold of a bundle, read from its
    JSON files only (no framework import: the launcher checks inputs before Beam starts)."""
    from cauce.model import METADATA_FILE, normalize_task

    root = Path(model_dir)
    meta_path = root / METADATA_FILE
    if not meta_path.exists():
        raise CauceError(f"{meta_path} not found: {root} is not a cauce model directory")
    metadata = json.loads(meta_path.read_text())
    task = normalize_task(metadata.get("task"), where=f"task in {meta_path}")
    classes = list(metadata.get("classes") or ([0, 1] if task == "binary" else []))
    if task == "multiclass" and len(classes) < 2:
        raise CauceError(f"{meta_path} names no 'classes' for its multiclass model")
    return {
        "task": task,
        "classes": classes,
        "features": FittedTransform.load(root).input_features,
        "threshold": float(metadata.get("decision_threshold", 0.5)),
        "label": metadata.get("label", ""),
    }


def prediction_fields(signature: dict) -> list[pa.Field]:
    task = signature["task"]
    if task == "binary":
        return [pa.field("label", pa.int64()), pa.field("score", pa.float64())]
    if task == "multiclass":
        classes = signature["classes"]
        return [pa.field("label", pa.array(classes).type)] + [
            pa.field(f"score_{value}", pa.float64()) for value in classes
        ]
    return [pa.field("value", pa.float64())]


def prediction_columns(scores: np.ndarray, signature: dict) -> dict[str, pa.Array]:
    """``predict_scores`` output -> the prediction columns of the task."""
    task = signature["task"]
    if task == "binary":
        scores = np.asarray(scores, dtype=np.float64)
        return {
            "label": pa.array((scores >= signature["threshold"]).astype(np.int64)),
            "score": pa.array(scores),
        }
    if task == "multiclass":
        classes = signature["classes"]
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(classes))
        columns = {"label": pa.array([classes[i] for i in np.argmax(scores, axis=1)], pa.array(classes).type)}
        columns.update({f"score_{value}": pa.array(scores[:, j]) for j, value in enumerate(classes)})
        return columns
    return {"value": pa.array(np.asarray(scores, dtype=np.float64))}


def _make_predict_fn(model_uri: str, key_column: str, signature: dict, batch_size: int):
    import apache_beam as beam

    class PredictBatches(beam.DoFn):
        """Record batch in, (key + predictions) table out; the bundle loads once per worker."""

        def setup(self):
            from cauce import model

            self._model_dir = model.fetch_model_dir(model_uri)
            self._model = model.load(self._model_dir, serving=True)  # the served path: linear scorer or model.onnx

        def teardown(self):
            # A gs:// bundle is downloaded to a temporary folder per DoFn instance; a
            # long-lived Dataflow worker would otherwise keep one copy per instance.
            if getattr(self, "_model_dir", model_uri) != model_uri:
                shutil.rmtree(self._model_dir, ignore_errors=True)

        def process(self, batch):
            for start in range(0, batch.num_rows, batch_size):
                chunk = batch.slice(start, batch_size)
                if chunk.num_rows == 0:
                    continue
                scores = self._model.predict_scores(chunk)
                columns = {key_column: chunk.column(key_column)}
                columns.update(prediction_columns(scores, signature))
                yield pa.table(columns)

    return PredictBatches()


# --------------------------------------------------------------------------- input side
def _check_input_columns(schema: pa.Schema, key_column: str, signature: dict, where: str) -> None:
    present, features = schema.names, signature["features"]
    if key_column not in present:
        raise CauceError(f"key_column {key_column!r} is not a column of {where}; columns present: {present}")
    missing = [name for name in features if name not in present]
    if missing:
        raise CauceError(
            f"{where} lacks the model's feature column(s) {missing}; the model reads {features}; "
            f"columns present: {present}"
        )
    outputs = [field.name for field in prediction_fields(signature)]
    if key_column in outputs:
        raise CauceError(f"key_column {key_column!r} has the name of a prediction column {outputs}: rename it")


def _stage_source(source, key_column, staging_dir, target, local_database, project, bigquery_location,
                  bigquery_api_endpoint, query_parameters, timeouts, identifiers=None):
    from cauce.components.extract.executor import run_extract

    result = run_extract(
        **timeouts,
        source=source,
        key_column=key_column,
        output_dir=staging_dir,
        splits={SPLIT: 1.0},
        target=target,
        local_database=local_database,
        project=project,
        bigquery_location=bigquery_location,
        bigquery_api_endpoint=bigquery_api_endpoint,
        query_parameters=query_parameters,
        identifiers=identifiers,
    )
    return result.metadata


# --------------------------------------------------------------------------- the step
def run_batch_predict(
    model_dir: str,
    output_dir: str,
    key_column: str,
    input_dataset_dir: str = "",
    input_split: str = "",
    source: str = "",
    target: str = "local",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    batch_size: int = 65536,
    query_parameters: dict | None = None,
    input_dataset_uri: str = "",
    output_uri: str = "",
    api_retry_timeout_s: float = 120.0,
    query_timeout_s: float | None = None,
    identifiers: dict | None = None,
) -> dict:
    """Predict every row of the input with the bundle at ``model_dir``; write a Dataset.

    Args:
        model_dir: the model bundle (a local directory or a ``gs://`` folder).
        output_dir: the predictions Dataset (split ``predictions``) this process writes.
        key_column: the input column copied next to each prediction.
        input_dataset_dir: a cauce Dataset to score (with ``input_split``) ...
        input_split: ... the split of it to score; empty = its only split.
        source: ... or a BigQuery table (``dataset.table``) or query (SELECT/WITH).
        target, local_database, project, bigquery_location, bigquery_api_endpoint, query_parameters,
            identifiers: how ``source`` is read, exactly as the extract step reads it.
        runner, pipeline_options: the Beam runner (``cauce.beam_pipelines.make_pipeline``).
        batch_size: rows per model call.
        input_dataset_uri, output_uri: the same locations as Beam workers on Dataflow
            must see them (``gs://``); locally they are the directories.
        api_retry_timeout_s, query_timeout_s: BigQuery retry and job timeouts (as extract's).
    Returns:
        metadata: rows, task, columns, model, input.
    """
    from cauce.beam_pipelines import run_pipeline
    from cauce.model import fetch_model_dir

    if bool(input_dataset_dir) == bool(source):
        raise CauceError(
            "give exactly one input: input_dataset (a cauce Dataset) or source (a BigQuery table or query); "
            f"got {'both' if source else 'neither'}"
        )
    if not isinstance(key_column, str) or not key_column:
        raise CauceError("key_column is empty: name the input column to copy next to each prediction")
    if target not in TARGETS:
        raise CauceError(f"target must be one of {TARGETS}, got {target!r}")
    if int(batch_size) < 1:
        raise CauceError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    if not model_dir:
        raise CauceError("model_dir is empty: no model to apply (is the alias set in the registry?)")

    local = runner == "DirectRunner"
    local_model = model_dir
    staging_dir = staging_uri = ""
    try:
        local_model = fetch_model_dir(model_dir)
        signature = model_signature(local_model)
        # In-process workers use the copy fetched here; Dataflow workers fetch gs:// themselves.
        worker_model = local_model if local else model_dir

        if source:
            # A staging Dataset beside the output: on Vertex that is the pipeline root,
            # which Dataflow workers can read (a local temp folder they could not).
            parent = Path(output_dir).parent
            parent.mkdir(parents=True, exist_ok=True)
            staging_dir = tempfile.mkdtemp(prefix=".batch-input-", dir=parent)
            os.rmdir(staging_dir)  # run_extract writes it atomically
            staging_uri = staging_dir if local or not output_uri else f"{output_uri.rsplit('/', 1)[0]}/{Path(staging_dir).name}"
            input_info = {"source": source, "backend": "local" if target == "local" else "bigquery"}
            input_info.update(
                {k: v for k, v in _stage_source(
                    source, key_column, staging_dir, target, local_database, project, bigquery_location,
                    bigquery_api_endpoint,
                    query_parameters or {},
                    {"api_retry_timeout_s": api_retry_timeout_s, "query_timeout_s": query_timeout_s},
                    identifiers or {},
                ).items() if k in ("job_id", "bytes_processed")}
            )
            dataset_dir, split, read_root = staging_dir, SPLIT, staging_uri
            where = f"the result of source {source!r}"
        else:
            splits = data.split_names(input_dataset_dir)
            if not input_split:
                if len(splits) != 1:
                    raise CauceError(
                        f"input_split is empty and {input_dataset_dir} has splits {splits}: name the one to score"
                    )
                input_split = splits[0]
            data.split_path(input_dataset_dir, input_split)  # names the splits present if absent
            dataset_dir, split = input_dataset_dir, input_split
            read_root = input_dataset_dir if local or not input_dataset_uri else input_dataset_uri
            input_info = {"dataset": input_dataset_uri or input_dataset_dir, "split": split}
            where = f"split {split!r} of {input_dataset_dir}"

        source_data = ds.dataset(data.split_path(dataset_dir, split), format="parquet")
        _check_input_columns(source_data.schema, key_column, signature, where)
        rows_in = source_data.count_rows()
        if rows_in == 0:
            raise CauceError(f"{where} has no rows: nothing to predict")
        label = signature["label"]
        rows_missing_label = data.count_missing_labels(dataset_dir, split, label) if label else 0

        schema = pa.schema([source_data.schema.field(key_column), *prediction_fields(signature)])
        read_columns = [key_column] + [f for f in signature["features"] if f != key_column]
        glob = f"{str(read_root).rstrip('/')}/{split}/*.parquet"

        def predict_into(root: str) -> None:
            import apache_beam as beam
            from apache_beam.io.parquetio import ReadFromParquetBatched, WriteToParquetBatched

            def build(pipeline):
                _ = (
                    pipeline
                    | "Read" >> ReadFromParquetBatched(glob, columns=read_columns)
                    | "Predict" >> beam.ParDo(_make_predict_fn(worker_model, key_column, signature, batch_size))
                    | "Write"
                    >> WriteToParquetBatched(
                        f"{root.rstrip('/')}/{SPLIT}/part", schema=schema, file_name_suffix=".parquet", codec="zstd"
                    )
                )

            run_pipeline(build, runner, pipeline_options)

        extra = {
            "key_column": key_column,
            "task": signature["task"],
            "model": model_dir,
            "input": input_info,
            "prediction_columns": [f.name for f in prediction_fields(signature)],
            "rows_missing_label": rows_missing_label,
        }

        def finish(out: str) -> int:
            rows = ds.dataset(Path(out) / SPLIT, format="parquet").count_rows()
            if rows != rows_in:
                raise CauceError(f"batch prediction wrote {rows} rows for {rows_in} input rows")
            data.write_schema(out, schema, {SPLIT: rows}, **extra)
            return rows

        if local:
            with atomic_dir(output_dir) as out:
                predict_into(str(out))
                rows = finish(str(out))
        else:
            predict_into(output_uri or output_dir)
            rows = finish(output_dir)
    finally:
        if staging_dir:
            shutil.rmtree(staging_dir, ignore_errors=True)
        if local_model != model_dir:
            shutil.rmtree(local_model, ignore_errors=True)

    log.info("predicted %d rows of %s with %s", rows, where, model_dir)
    return {"rows": rows, "columns": schema.names, **extra}


def run_batch_predict_from_registry(
    model_name: str,
    alias: str = "champion",
    target: str = "local",
    mlflow_tracking_uri: str = "",
    registry_project: str = "",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    **kwargs,
) -> dict:
    """Resolve ``model_name@alias`` (MLflow for ``target="local"``, Vertex AI Model Registry
    for ``"google-cloud"``) and run batch prediction."""
    from cauce.components.champion.executor import resolve_champion

    model_dir = resolve_champion(
        model_name, alias, target, mlflow_tracking_uri, registry_project, vertex_region, vertex_api_endpoint
    )
    if not model_dir:
        where = f"Vertex project {registry_project!r}" if target == "google-cloud" else "the MLflow registry"
        raise CauceError(f"model {model_name!r} has no version with alias {alias!r} in {where}")
    result = run_batch_predict(model_dir, target=target, **kwargs)
    return {**result, "model_name": model_name, "alias": alias}
