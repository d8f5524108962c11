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
