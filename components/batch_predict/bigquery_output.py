"""Batch predictions into a BigQuery table, as Vertex AI batch prediction writes them.

The predictions Dataset (split ``predictions``: the key column and the prediction
columns) is loaded into ``bq://project.dataset.table`` by ONE load job: BigQuery commits a
load job whole or not at all, so the table holds every prediction of the run or, on any
failure, what it held before (``WRITE_TRUNCATE``: a retried step replaces its table, it
never appends a second copy). From ``gs://`` (the Dataset Dataflow wrote) the job reads
the Parquet shards where they are; a local Dataset is sent as one Parquet upload.
The dataset is created (in ``location``) if missing.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cauce.artifacts import CauceError

log = logging.getLogger(__name__)

SPLIT = "predictions"


def write_predictions_table(
    predictions_dir: str,
    table: str,
    location: str = "US",
    api_endpoint: str = "",
    predictions_uri: str = "",
    timeout_s: float = 600.0,
    credentials: Any = None,
) -> dict[str, Any]:
    """Load the ``predictions`` split of ``predictions_dir`` into ``table``; returns
    ``{"bigquery_output_table", "bigquery_output_rows", "bigquery_load_job_id"}``.

    ``predictions_uri``: the same Dataset on ``gs://`` (read there by the load job)."""
    from google.api_core import exceptions as google_exceptions
    from google.cloud import bigquery
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    from cauce.components.extract.executor import bigquery_type
    from cauce.request_logs import bigquery_client, parse_table

    project, dataset, table_name = parse_table(table, "bigquery_output_table")
    table_id = f"{project}.{dataset}.{table_name}"
    shards = ds.dataset(Path(predictions_dir) / SPLIT, format="parquet")
    schema = shards.schema
    rows = shards.count_rows()
    client = bigquery_client(project, location, api_endpoint, credentials)
    retry = DEFAULT_RETRY.with_timeout(min(timeout_s, 120.0))
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        schema=[bigquery.SchemaField(field.name, bigquery_type(field.type)) for field in schema],
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
    )
    try:
        reference = bigquery.Dataset(f"{project}.{dataset}")
        reference.location = location or None
        client.create_dataset(reference, exists_ok=True, retry=retry, timeout=60)
        if predictions_uri.startswith("gs://"):
            job = client.load_table_from_uri(
                f"{predictions_uri.rstrip('/')}/{SPLIT}/*.parquet", table_id, job_config=config, retry=retry, timeout=60
            )
        else:
            with tempfile.TemporaryFile() as upload:
                # One file, one job: several load jobs would not be atomic together.
                with pq.ParquetWriter(upload, pa.schema([f.remove_metadata() for f in schema])) as writer:
                    for batch in shards.to_batches():
                        writer.write_batch(batch)
                upload.seek(0)
                # No ``size``: a resumable upload, which large files need (and the emulator accepts).
                job = client.load_table_from_file(upload, table_id, job_config=config, timeout=timeout_s)
        job.result(timeout=timeout_s)
    except google_exceptions.GoogleAPIError as error:
        raise CauceError(f"could not load the predictions into BigQuery table {table_id}: {error}") from error
    if job.output_rows is not None and int(job.output_rows) != rows:
        raise CauceError(f"BigQuery load job {job.job_id} wrote {job.output_rows} rows to {table_id} for {rows} predictions")
    log.info("loaded %d predictions into %s (job %s)", rows, table_id, job.job_id)
    return {"bigquery_output_table": f"bq://{table_id}", "bigquery_output_rows": rows, "bigquery_load_job_id": job.job_id}
