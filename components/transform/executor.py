"""Transform executor: fit the feature transform on the training split with a
full pass in Apache Beam, then encode every split with it.

Beam runs on the DirectRunner locally and on Dataflow at scale (``runner`` and
``pipeline_options`` are parameters). Work is done per Arrow record batch,
never per row: about 60x apart on the DirectRunner (docs/architecture.md,
"Measured facts").

What is fitted and encoded is a recipe (:mod:`cauce.recipe`): either the one
given as ``recipe`` or the shorthand ``numeric_features`` (z-score) +
``categorical_features`` (one-hot over ``top_k``).

One Beam pipeline does both halves: *analyze* (the recipe's mergeable
accumulators over the analyze split, combined globally; one pass per recipe phase,
usually one) and *encode* (every file of every split through the fitted transform,
the same code serving runs), the fitted state reaching the encode as a side input.
The encode's Parquet writer takes its schema (the fitted vocabularies) from that
side input at run time, which is why the DoFns read and write Parquet themselves.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.beam_pipelines import run_pipeline
from cauce.features import FittedTransform, PhaseAccumulator
from cauce.recipe import Recipe, numeric_values
from cauce.tasks import TASKS

log = logging.getLogger(__name__)


@dataclass
class TransformResult:
    split_rows: dict[str, int]
    dropped_rows: dict[str, int]
    feature_names: list[str]
    metadata: dict


def resolve_recipe(
    recipe: dict | str | None, numeric: list[str], categorical: list[str], top_k: int, label: str
) -> Recipe:
    """The recipe to fit: ``recipe`` when given, else the shorthand of the feature lists."""
    if recipe:
        if numeric or categorical:
            raise CauceError(
                "pass either a recipe or numeric_features/categorical_features, not both "
                "(the feature lists are a shorthand for a zscore + vocabulary recipe)"
            )
        return Recipe.parse(recipe, label)
    return Recipe.shorthand(numeric, categorical, top_k, label)


def validate_source(dataset_dir: str, label: str, recipe: Recipe, analyze_split: str) -> list[str]:
    """Check columns and the recipe's column flow before any Beam job starts (and before
    any Dataflow spend)."""
    splits = data.split_names(dataset_dir)
    if analyze_split not in splits:
        raise CauceError(f"analyze split {analyze_split!r} not found in {dataset_dir}; splits present: {splits}")
    for split in splits:
        schema = ds.dataset(data.split_path(dataset_dir, split), format="parquet").schema
        where = f"split {split!r} of {dataset_dir}"
        if label not in schema.names:
            raise CauceError(f"label column {label!r} not found in {where}; columns present: {schema.names}")
        missing = [c for c in recipe.input_columns if c not in schema.names]
        if missing:
            raise CauceError(f"feature column(s) {missing} not found in {where}; columns present: {schema.names}")
        recipe.check_schema(schema, where)
    if ds.dataset(data.split_path(dataset_dir, analyze_split), format="parquet").count_rows() == 0:
        raise CauceError(f"split {analyze_split!r} of {dataset_dir} is empty: nothing to fit the transform on")
    return splits


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise CauceError(f"task {task!r} is not supported; expected one of {list(TASKS)}")


def encode_batch(
    batch: pa.RecordBatch | pa.Table,
    fitted: FittedTransform,
    passthrough: list[str],
    task: str = "binary",
    schema: pa.Schema | None = None,
    buffer: np.ndarray | None = None,
) -> pa.Table:
    """Raw batch -> encoded float32 feature columns + label + passthrough columns
    (typed as ``schema`` when given: the writer's schema). With ``buffer`` the feature
    columns are views of it (see ``FittedTransform.transform_columns``): the table is
    valid until the buffer takes the next batch.

    The label by task: binary -> int64 0/1; regression -> float64; multiclass ->
    the class values as they are (the trainer numbers the classes). Rows without
    a label (``cauce.data.missing_label_mask``: null or NaN) are left out: they
    cannot train or evaluate anything.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    table, _ = data.drop_missing_labels(table, fitted.label)
    if task == "multiclass":
        label_column = table.column(fitted.label)
    else:
        label = numeric_values(table.column(fitted.label), fitted.label)  # float64, NaN where missing
        if task == "binary":
            if not ((label == 0.0) | (label == 1.0)).all():  # np.unique sorts: only for the message
                unique = np.unique(label)
                raise CauceError(
                    f"label column {fitted.label!r} must be binary 0/1 (or boolean) for task 'binary'; found values "
                    f"{unique[:10].tolist()} (use task 'multiclass' or 'regression' for other labels)"
                )
            label_column = pa.array(label.astype(np.int64))
        else:
            label_column = pa.array(label, pa.float64())
    features = fitted.transform_columns(table, buffer)  # feature-major: each row is one output column, no copy
    arrays = [pa.array(row) for row in features]
    arrays.append(label_column)
    arrays += [table.column(name) for name in passthrough]
    if schema is None:
        return pa.table(dict(zip([*fitted.feature_names, fitted.label, *passthrough], arrays)))
    return pa.Table.from_arrays(arrays, schema=schema)


def _output_schema(
    fitted: FittedTransform, source_schema: pa.Schema, passthrough: list[str], task: str = "binary"
) -> pa.Schema:
    # Features are never null (a missing input encodes to a value): a required
    # Parquet column has no definition levels to write or read, which cut the
    # writer's time by a third (zstd) to a half (LZ4) in bench/bench_transform.py.
    fields = [pa.field(name, pa.float32(), nullable=False) for name in fitted.feature_names]
    label_type = {"binary": pa.int64(), "regression": pa.float64()}.get(task, source_schema.field(fitted.label).type)
    fields.append(pa.field(fitted.label, label_type))
    fields += [source_schema.field(name) for name in passthrough]
    return pa.schema(fields)


# Rows per record batch read, encoded and written as one Parquet row group: the whole
# job ran 5-15 % slower with 64 k or 256 k (1 M rows, 104 features; the reused
# features x rows float32 buffer is 55 MB at 128 k).
BATCH_ROWS = 131_072


def _parquet_write_options(label: str, passthrough: list[str]) -> dict:
    """Writer settings for the encoded splits, chosen in bench/bench_transform.py.

    The float32 feature columns are nearly all the bytes (a one-hot column is 4 bytes
    of mostly zeros per row). Dictionary-encoding them hashes every value for nothing
    (z-scores hardly repeat; the codec squeezes one-hot zeros as well), and min/max
    statistics cost a pass over each column that no reader uses (training reads every
    row): both off for features, on for the label and passthrough columns. LZ4 wrote
    1 M rows x 104 features in about 0.6 of zstd's CPU time for files ~40 % larger
    (30 MB against 21 MB), and reads back as fast.
    """
    described = [label, *passthrough]
    return {"compression": "lz4", "use_dictionary": described, "write_statistics": described}


def _is_remote(path: str) -> bool:
    return "://" in path


def _parquet_batches(path: str, columns: list[str], batch_rows: int = BATCH_ROWS, dictionary: list[str] = ()):
    """Record batches of one Parquet file: local files through Arrow's own I/O,
    ``gs://`` (Dataflow workers) through Beam's FileSystems. ``dictionary`` columns
    come as Arrow dictionary arrays (not decoded into one string per row)."""
    import pyarrow.parquet as pq

    if not _is_remote(path):
        yield from pq.ParquetFile(path, read_dictionary=dictionary).iter_batches(batch_size=batch_rows, columns=columns)
        return
    from apache_beam.io.filesystems import FileSystems

    # Files are listed in the launching process (through its FUSE path), so one can be
    # gone by the time a worker opens it; Cloud Storage's bare 404 names no file and
    # would surface wrapped in a Beam worker traceback.
    if not FileSystems.exists(path):
        raise CauceError(f"{path} not found: the input file was listed when the job started but is gone now")
    with FileSystems.open(path) as handle:
        yield from pq.ParquetFile(handle, read_dictionary=dictionary).iter_batches(batch_size=batch_rows, columns=columns)


def _dictionary_columns(recipe: Recipe, schema: pa.Schema, label: str, passthrough: list[str]) -> list[str]:
    """String columns only a vocabulary reads: read them as dictionaries (see
    ``Recipe.vocabulary_only_columns``). Label and passthrough columns are written
    out as they are, so they stay plain."""
    return [
        c for c in recipe.vocabulary_only_columns()
        if c not in (label, *passthrough) and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))
    ]


def _split_files(dataset_dir: str, source_root: str, split: str) -> list[str]:
    """The split's Parquet files, listed here (the local or Cloud Storage FUSE path)
    and named as the workers will open them (``source_root``: the same place, or its
    ``gs://`` URI on Dataflow)."""
    names = sorted(p.name for p in data.split_path(dataset_dir, split).glob("*.parquet"))
    return [f"{source_root.rstrip('/')}/{split}/{name}" for name in names]


def _fitted_from_payload(recipe: Recipe, label: str, payload: dict, schema: pa.Schema) -> FittedTransform:
    states = {int(k): v for k, v in payload["states"].items()}
    return FittedTransform.from_recipe(recipe, label, states, payload["rows"], schema)


def _build_transform_pipeline(pipeline, *, plan: Recipe, label: str, analyze_files: list[str], work: list[tuple],
                              source_schema: pa.Schema, passthrough: list[str], task: str, staging_uri: str,
                              batch_rows: int) -> None:
    """One Beam pipeline: analyze (one pass over the analyze split per recipe phase)
    feeding, as a side input, the encode of every split.

    Files are the unit of work, read and written by the DoFns themselves with pyarrow:
    only file names and small accumulators travel between Beam stages (a record batch
    as a Beam element costs a pickle per element, at least for the size estimate of
    Beam's counters), and the encode's writer learns its schema (the fitted
    vocabularies) from the side input at run time.
    """
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    recipe_document = plan.to_dict()
    needed = list(dict.fromkeys([*plan.input_columns, label, *passthrough]))
    fit_columns = list(dict.fromkeys([*plan.input_columns, label]))
    dictionary = _dictionary_columns(plan, source_schema, label, passthrough)

    class AccumulateFile(beam.DoFn):
        """The phase's accumulators over one file (the fitted states of earlier phases
        come in as ``prior``)."""

        def __init__(self, phase: int):
            self.phase = phase

        def process(self, path, prior=None):
            states = {int(k): v for k, v in (prior or {"states": {}})["states"].items()}
            accumulator = PhaseAccumulator(Recipe(recipe_document, label), states, self.phase)
            for batch in _parquet_batches(path, fit_columns, batch_rows, dictionary):
                # The fit sees the rows the model trains on: rows without a label are out.
                table, _ = data.drop_missing_labels(pa.Table.from_batches([batch]), label)
                if table.num_rows:
                    accumulator.add_batch(table)
            yield accumulator

    class MergeAccumulators(beam.CombineFn):
        """Merging is order-independent (see cauce.recipe), so the fit is too."""

        def create_accumulator(self):
            return None

        def add_input(self, merged, accumulator):
            return accumulator if merged is None else merged.merge(accumulator)

        def merge_accumulators(self, accumulators):
            merged = None
            for accumulator in accumulators:
                if accumulator is not None:
                    merged = accumulator if merged is None else merged.merge(accumulator)
            return merged

        def extract_output(self, merged):
            if merged is None:  # validate_source refuses an empty analyze split before this
                return {"rows": 0, "states": {}}
            return {"rows": merged.rows, "states": merged.fit()}

    def add_prior(fitted: dict, prior: dict) -> dict:
        return {"rows": prior["rows"], "states": {**prior["states"], **fitted["states"]}}

    class EncodeFile(beam.DoFn):
        """Encode one file of a split into one output file (``item``: their paths)."""

        def setup(self):
            self.buffer = None  # the feature matrix, reused by every batch of every file

        def process(self, item, fitted_payload):
            source, target = item
            fitted = _fitted_from_payload(Recipe(recipe_document, label), label, fitted_payload, source_schema)
            schema = _output_schema(fitted, source_schema, passthrough, task)
            options = _parquet_write_options(label, passthrough)
            handle = FileSystems.create(target) if _is_remote(target) else None
            try:
                with pq.ParquetWriter(handle or target, schema, **options) as writer:
                    for batch in _parquet_batches(source, needed, batch_rows, dictionary):
                        size = fitted.width * batch.num_rows
                        if self.buffer is None or self.buffer.size < size:
                            self.buffer = np.empty(size, dtype=np.float32)
                        encoded = encode_batch(batch, fitted, passthrough, task, schema, self.buffer)
                        # write_table has copied the values into Parquet pages when it
                        # returns, so the buffer can take the next batch.
                        writer.write_table(encoded)
            finally:
                if handle is not None:
                    handle.close()

    def save_fitted(payload: dict) -> None:
        with FileSystems.create(staging_uri) as handle:
            handle.write(json.dumps(payload).encode())

    fitted = None
    for phase in range(plan.phases):
        prior = {} if fitted is None else {"prior": beam.pvalue.AsSingleton(fitted)}
        combined = (
            pipeline
            | f"AnalyzeFiles[{phase}]" >> beam.Create(analyze_files)
            | f"Accumulate[{phase}]" >> beam.ParDo(AccumulateFile(phase), **prior)
            # without_defaults: no default value for an empty input (validate_source refuses
            # an empty analyze split), which spares a side-input branch: ~0.08 s CPU a job.
            | f"Fit[{phase}]" >> beam.CombineGlobally(MergeAccumulators()).without_defaults()
        )
        fitted = combined if not prior else combined | f"WithPrior[{phase}]" >> beam.Map(add_prior, **prior)
    _ = fitted | "SaveFitted" >> beam.Map(save_fitted)
    _ = (
        pipeline
        | "Files" >> beam.Create(work)
        | "Encode" >> beam.ParDo(EncodeFile(), beam.pvalue.AsSingleton(fitted))
    )


def run_transform(
    dataset_dir: str,
    label: str,
    numeric_features: list[str],
    categorical_features: list[str],
    transformed_dir: str,
    transform_dir: str,
    analyze_split: str = "train",
    top_k: int = 100,
    passthrough_columns: list[str] | None = None,
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    dataset_uri: str = "",
    transformed_uri: str = "",
    task: str = "binary",
    recipe: dict | str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> TransformResult:
    """Fit the transform on ``analyze_split`` and encode every split, in one Beam job.

    ``recipe`` (a dict, YAML/JSON text or a file path; see docs/recipes.md) is the
    full transform; without it ``numeric_features``/``categorical_features``/``top_k``
    are the shorthand "z-score these, one-hot those".

    ``*_dir`` are the paths this process reads and writes (on Vertex, the Cloud
    Storage FUSE paths of the artifacts); ``*_uri`` are the same locations as
    Beam workers on Dataflow must see them (``gs://``). Locally they coincide.

    Outputs: ``transformed_dir`` (a cauce Dataset with the same splits, encoded
    features + label; one Parquet file per input file, one row group per
    ``batch_rows`` rows) and ``transform_dir`` (``transform.json``). On the
    DirectRunner both are written atomically. On Dataflow each encoded file goes
    straight to ``transformed_uri`` under a name fixed by its input file (a retried
    bundle rewrites the same object, and a Cloud Storage object appears only once
    complete) and ``_schema.json`` is written last, so a failed job leaves no
    dataset that reads as complete.
    """
    from apache_beam.io.filesystems import FileSystems

    _check_task(task)
    passthrough = list(passthrough_columns or [])
    plan = resolve_recipe(recipe, list(numeric_features or []), list(categorical_features or []), int(top_k), label)
    splits = validate_source(dataset_dir, label, plan, analyze_split)
    source_schema = ds.dataset(data.split_path(dataset_dir, analyze_split), format="parquet").schema
    missing_passthrough = [c for c in passthrough if c not in source_schema.names]
    if missing_passthrough:
        raise CauceError(f"passthrough column(s) {missing_passthrough} not found; columns present: {source_schema.names}")

    local = runner == "DirectRunner"
    source_root = dataset_dir if local or not dataset_uri else dataset_uri
    files = {split: _split_files(dataset_dir, source_root, split) for split in splits}

    def transform_into(out_dir: str, out_uri: str) -> tuple[FittedTransform, dict, dict]:
        """Run the job writing under ``out_uri``; describe the result from ``out_dir``."""
        work = []
        for split in splits:
            if local:
                (Path(out_dir) / split).mkdir(parents=True, exist_ok=True)
            work += [(source, f"{out_uri.rstrip('/')}/{split}/part-{i:05d}.parquet")
                     for i, source in enumerate(files[split])]
        # The fitted state comes back through a staging file: on Dataflow (and in
        # Beam's in-process runner, which pickles every function) a worker cannot
        # hand a Python object back to this process.
        staging_uri = f"{out_uri.rstrip('/')}/.fitted-{uuid.uuid4().hex}.json"
        try:
            run_pipeline(
                lambda pipeline: _build_transform_pipeline(
                    pipeline, plan=plan, label=label, analyze_files=files[analyze_split], work=work,
                    source_schema=source_schema, passthrough=passthrough, task=task, staging_uri=staging_uri,
                    batch_rows=batch_rows,
                ),
                runner,
                pipeline_options,
            )
            with FileSystems.open(staging_uri) as handle:
                fitted = _fitted_from_payload(plan, label, json.loads(handle.read()), source_schema)
        finally:
            if FileSystems.exists(staging_uri):
                FileSystems.delete([staging_uri])
        schema = _output_schema(fitted, source_schema, passthrough, task)
        rows, dropped = {}, {}
        for split in splits:
            rows[split] = ds.dataset(Path(out_dir) / split, format="parquet").count_rows()
            dropped[split] = ds.dataset(data.split_path(dataset_dir, split), format="parquet").count_rows() - rows[split]
            if dropped[split]:
                log.warning("split %s: left out %d rows with a missing label %r", split, dropped[split], label)
        data.write_schema(out_dir, schema, rows, label=label, feature_names=fitted.feature_names)
        return fitted, rows, dropped

    if local:
        with atomic_dir(transformed_dir) as out:
            fitted, split_rows, dropped = transform_into(str(out), str(out))
    else:
        fitted, split_rows, dropped = transform_into(transformed_dir, transformed_uri)

    with atomic_dir(transform_dir) as out:
        fitted.save(out)

    metadata = {
        "rows": split_rows,
        "dropped_rows_missing_label": dropped,
        "features_in": len(fitted.input_features),
        "recipe_steps": len(plan.steps),
        "features_out": len(fitted.feature_names),
        "label": label,
        "task": task,
        "runner": runner,
    }
    return TransformResult(split_rows, dropped, fitted.feature_names, metadata)
