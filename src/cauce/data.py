"""The on-disk layout of cauce Dataset artifacts, shared by every phase.

A Dataset artifact is a directory:

    <artifact>/
        <split>/part-00000.parquet   one folder per split (train, eval, ...),
        <split>/part-00001.parquet   sharded Parquet files
        _schema.json                 {"columns": {name: arrow type string}, "splits": {name: rows}}

The same layout holds the raw extract output and the transformed datasets, so
one reader serves training, evaluation, batch prediction and monitoring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cauce.artifacts import CauceError

SCHEMA_FILE = "_schema.json"
ROWS_PER_SHARD = 1_000_000


def split_names(dataset_dir: str | os.PathLike) -> list[str]:
    root = Path(dataset_dir)
    if not root.is_dir():
        raise CauceError(f"dataset directory {root} does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def split_path(dataset_dir: str | os.PathLike, split: str) -> Path:
    path = Path(dataset_dir) / split
    if not path.is_dir():
        raise CauceError(
            f"split {split!r} not found in dataset {dataset_dir}; available splits: {split_names(dataset_dir)}"
        )
    return path


def read_split(dataset_dir: str | os.PathLike, split: str, columns: list[str] | None = None) -> pa.Table:
    """Read one split as an Arrow table (optionally only ``columns``)."""
    dataset = ds.dataset(split_path(dataset_dir, split), format="parquet")
    if columns is not None:
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise CauceError(
                f"column(s) {missing} not found in split {split!r} of {dataset_dir}; "
                f"columns present: {dataset.schema.names}"
            )
    return dataset.to_table(columns=columns)


def iter_split_batches(dataset_dir: str | os.PathLike, split: str, batch_size: int = 65_536):
    """Yield Arrow record batches of one split: the unit every phase processes."""
    dataset = ds.dataset(split_path(dataset_dir, split), format="parquet")
    yield from dataset.to_batches(batch_size=batch_size)


# ---- the one rule for rows without a label --------------------------------------------
# A row whose label is missing cannot train or measure a model: validate counts such
# rows in every split (an anomaly above ``max_missing_label_fraction``), and transform
# (its fit as well as its output), train, evaluate and batch prediction leave them out
# through these functions, so every phase counts the same rows.

# Validate's default bound: more than this share of a split's rows without a label is
# an anomaly (a broken join, labels not known yet), not a few unlabelled rows to skip.
MAX_MISSING_LABEL_FRACTION = 0.10


def missing_label_mask(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """True where a label is missing: null, or NaN in a floating-point column (an empty
    CSV cell loads as null). Nothing else is missing: 0, "" and "nan" text are values."""
    return pc.is_null(column, nan_is_null=True)


def drop_missing_labels(table: pa.Table, label: str) -> tuple[pa.Table, int]:
    """``table`` without the rows whose ``label`` is missing, and how many those were.
    A table without the label column comes back unchanged (0): the caller names that
    error in its own terms."""
    if label not in table.column_names:
        return table, 0
    missing = missing_label_mask(table.column(label))
    count = pc.sum(missing).as_py() or 0
    if not count:
        return table, 0
    return table.filter(pc.invert(missing)), int(count)


def count_missing_labels(dataset_dir: str | os.PathLike, split: str, label: str) -> int:
    """Rows of ``split`` whose ``label`` is missing (reads the label column only; 0 when
    the split has no such column)."""
    dataset = ds.dataset(split_path(dataset_dir, split), format="parquet")
    if label not in dataset.schema.names:
        return 0
    total = 0
    for batch in dataset.to_batches(columns=[label]):
        total += pc.sum(missing_label_mask(batch.column(0))).as_py() or 0
    return int(total)


def write_split(out_dir: str | os.PathLike, split: str, table: pa.Table, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    """Write ``table`` as sharded Parquet under ``out_dir/split``; returns the row count.

    ``out_dir`` is expected to be the temporary directory of an ``atomic_dir``.
    """
    target = Path(out_dir) / split
    target.mkdir(parents=True, exist_ok=True)
    shards = max(1, -(-table.num_rows // rows_per_shard))
    for index in range(shards):
        chunk = table.slice(index * rows_per_shard, rows_per_shard)
        pq.write_table(chunk, target / f"part-{index:05d}.parquet", compression="zstd")
    return table.num_rows


def write_schema(out_dir: str | os.PathLike, schema: pa.Schema, split_rows: dict[str, int], **extra) -> dict:
    info = {
        "columns": {field.name: str(field.type) for field in schema},
        "splits": dict(split_rows),
        **extra,
    }
    (Path(out_dir) / SCHEMA_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return info


def read_schema(dataset_dir: str | os.PathLike) -> dict:
    path = Path(dataset_dir) / SCHEMA_FILE
    if not path.exists():
        raise CauceError(f"{path} not found: {dataset_dir} is not a cauce dataset artifact")
    return json.loads(path.read_text())
