"""KFP definition of the extract step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.artifact_types import BQTable
from cauce.images import BASE_IMAGE


# KFP needs literal, JSON-serializable defaults in the signature (it compiles them
# into the spec and never mutates them), hence the dict defaults.
@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def extract(
    key_column: str,
    dataset: dsl.Output[dsl.Dataset],
    table: dsl.Output[BQTable],
    source: str = "",
    source_table: dsl.Input[BQTable] = None,
    splits: dict = {"train": 0.8, "eval": 0.2},  # noqa: B006
    target: str = "local",
    local_database: str = "",
    project: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    query_parameters: dict = {},  # noqa: B006
    maximum_bytes_billed: int = 0,
    read_api: str = "auto",
    storage_api_endpoint: str = "",
    staging_dataset: str = "",
    identifiers: dict = {},  # noqa: B006
    max_null_key_fraction: float = 0.01,
) -> NamedTuple("ExtractOutputs", [("rows", int)]):
    """Run a BigQuery query (or read a table) and split its rows into a Dataset by a hashed key.

    Args:
        key_column: the column whose FARM_FINGERPRINT decides each row's split.
        dataset: output cauce Dataset: one Parquet folder per split + _schema.json.
        table: output ``google.BQTable`` naming the table read (metadata ``projectId``, ``datasetId``,
            ``tableId``; ``uri`` its REST URL on BigQuery, locally the local engine's table, its
            ``local_database`` in the metadata), for GCPC ops and another extract; when the source is
            a query it names no table (no such metadata).
        source: table (dataset.table or project.dataset.table) or BigQuery Standard SQL
            starting with SELECT or WITH; may be empty when ``source_table`` is given.
        source_table: a ``google.BQTable`` (GCPC's ``BigqueryQueryJobOp`` ``destination_table``,
            another extract's ``table``, or imported with those metadata keys): when given, this
            table is read instead of ``source``.
        splits: split name -> ratio (> 0, summing to 1).
        target: where the query runs: "local" (the embedded DuckDB engine) or "google-cloud" (BigQuery).
        local_database: DuckDB file of the local engine; empty = cauce's default.
        project: BigQuery project that runs (and pays for) the query; empty = the credentials' default.
        bigquery_location: BigQuery location of the query job.
        bigquery_api_endpoint: BigQuery endpoint other than Google's (emulator, private endpoint).
        query_parameters: @name -> scalar or list, sent as typed query parameters.
        maximum_bytes_billed: cost guard: refuse a query whose dry-run estimate is over it (and BigQuery
            fails a job that would bill more); 0 = no limit.
        read_api: "auto" (Storage Read API, REST when it is unavailable), "storage" or "rest".
        storage_api_endpoint: Storage Read API host:port other than Google's (emulator: insecure on loopback).
        staging_dataset: dataset (or project.dataset) where the result is staged as a table, read and deleted;
            empty = BigQuery's anonymous result table.
        identifiers: ${name} placeholders of source -> project/dataset/table ids, checked by the kind
            the name ends with (e.g. {"source_dataset": "taxi"} for `${source_dataset}.trips`):
            what query parameters cannot carry.
        max_null_key_fraction: rows whose key is NULL belong to no split: dropped and counted (metadata
            ``null_key_rows``) up to this fraction of the rows; above it the step fails (0: any NULL key fails).
    """
    from collections import namedtuple

    from cauce.artifact_types import bigquery_table_id
    from cauce.components.extract.executor import run_extract, table_artifact

    result = run_extract(
        source=source,
        # An optional input that is not connected arrives as None.
        source_table=bigquery_table_id(source_table) if source_table else "",
        key_column=key_column,
        output_dir=dataset.path,
        splits=splits,
        target=target,
        local_database=local_database,
        project=project,
        bigquery_location=bigquery_location,
        bigquery_api_endpoint=bigquery_api_endpoint,
        query_parameters=query_parameters,
        maximum_bytes_billed=maximum_bytes_billed,
        read_api=read_api,
        storage_api_endpoint=storage_api_endpoint,
        staging_dataset=staging_dataset,
        identifiers=identifiers,
        max_null_key_fraction=max_null_key_fraction,
    )
    dataset.metadata.update(result.metadata)
    uri, metadata = table_artifact(result.table_id, target, local_database)
    if uri:
        table.uri = uri
    table.metadata.update(metadata)
    return namedtuple("ExtractOutputs", ["rows"])(result.metadata["rows"])
