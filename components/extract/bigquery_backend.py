"""The BigQuery backend of extract (and of monitor's request-log reads): BigQuery's own client.

Beside ``local_engine`` (the same SQL on an embedded DuckDB file), this module runs a
query on BigQuery or an emulator at ``api_endpoint``:

* a dry run first (``BigQueryBackend.dry_run``): it checks the query, gives its columns
  and the bytes it would process, and ``check_cost`` refuses a query over
  ``maximum_bytes_billed`` before anything is billed;
* then the query, with typed ``@name`` parameters (values never formatted into SQL),
  optionally into a staging table that expires by itself;
* then the rows, through the Storage Read API (Arrow streams over gRPC, read in
  parallel) or REST pages (``read_api``), falling back to REST when the Storage Read API
  cannot serve the read and ``read_api="auto"``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cauce.artifacts import CauceError

from .local_engine import QueryParameter

_log = logging.getLogger(__name__)

# Streams asked of the Storage Read API; BigQuery may give fewer. Each is read by its own thread.
STORAGE_READ_STREAMS = 8
# A staged result table outlives a step that dies before deleting it by at most this.
STAGING_TABLE_EXPIRATION_HOURS = 24
# BigQuery's rules for project and dataset ids.
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
DATASET_ID = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class QueryOutput:
    """A query's rows, as either engine returns them."""

    table: pa.Table
    bigquery_types: dict[str, str]
    """Column name -> the BigQuery type of the result column."""
    details: dict[str, Any] = field(default_factory=dict)
    """Backend facts for the metadata: job id, bytes estimated/processed/billed, read path."""


def check_cost(bytes_estimated: int | None, maximum_bytes_billed: int) -> None:
    """The cost guard: refuse a query whose dry-run estimate is over the limit, before it runs."""
    if maximum_bytes_billed > 0 and bytes_estimated is not None and bytes_estimated > maximum_bytes_billed:
        raise CauceError(
            f"query would process {format_bytes(bytes_estimated)} ({bytes_estimated:,} bytes), over "
            f"maximum_bytes_billed = {format_bytes(maximum_bytes_billed)} ({maximum_bytes_billed:,} bytes); "
            "raise maximum_bytes_billed or narrow the query (partition filter, fewer columns)"
        )


def format_bytes(count: int) -> str:
    """Bytes in binary units, the way BigQuery's console shows them: ``12.3 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


class BigQueryBackend:
    """Runs queries through the real BigQuery client (or an emulator at api_endpoint)."""

    def __init__(
        self,
        project: str,
        location: str,
        api_endpoint: str,
        parameters: list[QueryParameter],
        maximum_bytes_billed: int,
        api_retry_timeout_s: float,
        query_timeout_s: float | None,
        read_api: str = "auto",
        storage_api_endpoint: str = "",
        staging_dataset: str = "",
    ) -> None:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import bigquery
        from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

        if maximum_bytes_billed < 0:
            raise CauceError(f"maximum_bytes_billed must be >= 0 (0 = no limit), got {maximum_bytes_billed}")
        self._bigquery = bigquery
        self._anonymous = bool(api_endpoint)
        try:
            self._client = bigquery.Client(
                project=project or None,
                location=location or None,
                client_options=ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None,
                credentials=AnonymousCredentials() if api_endpoint else None,
            )
        except DefaultCredentialsError as error:
            raise CauceError(f"no Google Cloud credentials for the bigquery backend: {error}") from error
        self._read_api = read_api
        self._storage_api_endpoint = storage_api_endpoint
        if read_api == "storage" and api_endpoint and not storage_api_endpoint:
            raise CauceError(
                "read_api='storage' with a custom api_endpoint needs storage_api_endpoint "
                "(the Storage Read API's host:port for that endpoint)"
            )
        self._staging_dataset = _validate_staging_dataset(staging_dataset, self._client.project)
        self._query_parameters = [self._to_bigquery(parameter) for parameter in parameters]
        self._maximum_bytes_billed = maximum_bytes_billed or None
        # The client's defaults retry a 5xx for 10 minutes or more; a step should fail sooner.
        self._retry = DEFAULT_RETRY.with_timeout(api_retry_timeout_s)
        self._job_retry = DEFAULT_JOB_RETRY.with_timeout(api_retry_timeout_s)
        self._api_retry_timeout_s = api_retry_timeout_s
        self._query_timeout_s = query_timeout_s

    @property
    def default_project(self) -> str:
        """The project the client runs in (``project``, or the credentials' default)."""
        return self._client.project or ""

    def _to_bigquery(self, parameter: QueryParameter):
        if parameter.is_array:
            return self._bigquery.ArrayQueryParameter(parameter.name, parameter.type, parameter.value)
        return self._bigquery.ScalarQueryParameter(parameter.name, parameter.type, parameter.value)

    def dry_run(self, query: str) -> tuple[list[str], int | None]:
        """Validate ``query``; return its column names and the bytes it would process (billing nothing).

        bqemulator has no cost model: its dry runs always report 0 bytes.
        """
        job = self._dry_run_job(query)
        bytes_estimated = job.total_bytes_processed
        if bytes_estimated is not None:
            _log.info(
                "BigQuery dry run: the query would process %s (%d bytes)",
                format_bytes(bytes_estimated),
                bytes_estimated,
            )
        return [schema_field.name for schema_field in job.schema or []], bytes_estimated

    def result_types(self, query: str) -> dict[str, str]:
        """Column name -> Standard SQL type of ``query``'s result, from a dry run (no rows, nothing billed)."""
        job = self._dry_run_job(query)
        return {schema_field.name: standard_sql_type(schema_field) for schema_field in job.schema or []}

    def _dry_run_job(self, query: str):
        config = self._bigquery.QueryJobConfig(
            dry_run=True, use_query_cache=False, query_parameters=self._query_parameters
        )
        return self._call(query, lambda: self._insert(query, config))

    def run(self, sql: str) -> QueryOutput:
        config = self._bigquery.QueryJobConfig(
            query_parameters=self._query_parameters, maximum_bytes_billed=self._maximum_bytes_billed
        )
        staging_table = None
        if self._staging_dataset:
            staging_table = f"{self._staging_dataset}.cauce_extract_{uuid.uuid4().hex}"
            sql = (
                f"CREATE TABLE `{staging_table}`\n"
                f"OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), "
                f"INTERVAL {STAGING_TABLE_EXPIRATION_HOURS} HOUR))\nAS\n{sql}"
            )
        try:
            job = self._call(sql, lambda: self._insert(sql, config))
            rows = self._call(
                sql,
                lambda: job.result(
                    retry=self._retry, timeout=self._query_timeout_s, job_retry=self._job_retry
                ),
            )
            if staging_table is not None:
                rows = self._call(
                    sql,
                    lambda: self._client.list_rows(
                        staging_table, retry=self._retry, timeout=self._api_retry_timeout_s
                    ),
                )
            read_started = time.perf_counter()
            table, read_path = self._read(
                sql, rows, staging_table or job.destination, anonymous_table=staging_table is None
            )
            read_seconds = time.perf_counter() - read_started
        finally:
            if staging_table is not None:
                self._delete_staging_table(staging_table)
        details = {
            "job_id": job.job_id,
            "referenced_tables": [
                f"{table.project}.{table.dataset_id}.{table.table_id}" for table in (job.referenced_tables or [])
            ],
            "bytes_processed": job.total_bytes_processed,
            "bytes_billed": job.total_bytes_billed,
            "read_api": read_path,
            "read_seconds": round(read_seconds, 3),
        }
        bigquery_types = {schema_field.name: standard_sql_type(schema_field) for schema_field in rows.schema}
        return QueryOutput(table, bigquery_types=bigquery_types, details=details)

    def _delete_staging_table(self, staging_table: str) -> None:
        from google.api_core.exceptions import GoogleAPIError

        try:
            self._client.delete_table(
                staging_table, not_found_ok=True, retry=self._retry, timeout=self._api_retry_timeout_s
            )
        except GoogleAPIError as error:  # it expires by itself; the step's own outcome matters more
            _log.warning(
                "could not delete staging table %s (it expires within %d h): %s",
                staging_table,
                STAGING_TABLE_EXPIRATION_HOURS,
                error,
            )

    def _read(self, sql: str, rows, destination, anonymous_table: bool) -> tuple[pa.Table, str]:
        """The result rows and the path that read them: "storage" or "rest"."""
        from google.api_core.exceptions import GoogleAPIError

        if self._read_api == "rest" or (
            self._read_api == "auto" and self._anonymous and not self._storage_api_endpoint
        ):
            # A custom REST endpoint's Storage Read API is wherever storage_api_endpoint says;
            # without one, Google's would be asked about a table it has never seen.
            return self._read_rest(sql, rows), "rest"
        try:
            return self._read_storage(destination), "storage"
        except (GoogleAPIError, _StorageUnavailable) as error:
            reason = self._storage_unavailable(error, anonymous_table)
            if self._read_api == "storage" or reason is None:
                raise CauceError(f"BigQuery Storage Read API failed: {error}\nSQL:\n{sql}") from error
            _log.warning(
                "BigQuery Storage Read API unavailable (%s): reading the result over REST instead", reason
            )
            return self._read_rest(sql, rows), "rest"

    def _read_rest(self, sql: str, rows) -> pa.Table:
        return self._call(sql, lambda: rows.to_arrow(create_bqstorage_client=False, progress_bar_type=None))

    def _read_storage(self, destination) -> pa.Table:
        """Read a table through the Storage Read API, its streams in parallel, in stream order."""
        from concurrent.futures import ThreadPoolExecutor

        from google.cloud.bigquery_storage_v1 import types

        read_client = self._storage_client()
        table = (
            destination
            if isinstance(destination, str)
            else (f"{destination.project}.{destination.dataset_id}.{destination.table_id}")
        )
        project_id, dataset_id, table_id = table.split(".")
        session = read_client.create_read_session(
            parent=f"projects/{self._client.project}",
            read_session=types.ReadSession(
                table=f"projects/{project_id}/datasets/{dataset_id}/tables/{table_id}",
                data_format=types.DataFormat.ARROW,
            ),
            max_stream_count=STORAGE_READ_STREAMS,
            retry=self._retry,
            timeout=self._api_retry_timeout_s,
        )
        schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))

        def read_stream(stream) -> list[pa.RecordBatch]:
            # Iterating the ReadRowsStream resumes at the last offset after a transient error.
            return [
                pa.ipc.read_record_batch(
                    pa.py_buffer(response.arrow_record_batch.serialized_record_batch), schema
                )
                for response in read_client.read_rows(stream.name)
            ]

        # BigQuery gives no stream at all for an empty result.
        with ThreadPoolExecutor(max_workers=max(1, len(session.streams))) as pool:
            batches = [batch for part in pool.map(read_stream, session.streams) for batch in part]
        # bqemulator tags every field with its DuckDB type; BigQuery's own schema carries no such metadata.
        plain = pa.schema([schema_field.remove_metadata() for schema_field in schema])
        return pa.Table.from_batches(batches, schema=schema).cast(plain)

    def _storage_client(self):
        try:
            from google.cloud.bigquery_storage_v1 import BigQueryReadClient
        except ImportError as error:
            raise _StorageUnavailable("google-cloud-bigquery-storage is not installed") from error
        endpoint = self._storage_api_endpoint
        if not endpoint:
            return BigQueryReadClient(credentials=None)
        if _is_loopback(endpoint):
            # An emulator on this machine speaks plain gRPC; TLS only for anything that leaves it.
            import grpc
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            # gRPC's default 4 MiB receive limit is below one Arrow batch of a wide result, and
            # the client retries such a stream forever; Google's own transport lifts it the same way.
            unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
            channel = grpc.insecure_channel(endpoint, options=unlimited)
            return BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return BigQueryReadClient(
            credentials=AnonymousCredentials() if self._anonymous else None,
            client_options=ClientOptions(api_endpoint=endpoint),
        )

    @staticmethod
    def _storage_unavailable(error: Exception, anonymous_table: bool) -> str | None:
        """Why the Storage Read API cannot serve this read, or None when the error is something else."""
        from google.api_core.exceptions import Forbidden, MethodNotImplemented, NotFound

        if isinstance(error, _StorageUnavailable):
            return str(error)
        if isinstance(error, MethodNotImplemented):
            return f"the endpoint does not implement it: {error}"
        if isinstance(
            error, Forbidden
        ):  # PermissionDenied too: API not enabled, no bigquery.readsessions.create
            return f"not enabled or permission denied: {error}"
        if isinstance(error, NotFound) and anonymous_table:
            return (
                "it cannot see the query's anonymous result table (bqemulator keeps none; "
                f"set staging_dataset): {error}"
            )
        return None

    def _insert(self, sql: str, config):
        # Any job_retry other than None makes client.query() wrap the insert in
        # its own fixed 10-minute retry, whatever job_retry says; ``retry`` alone
        # bounds the insert, and result() re-runs failed jobs with job_retry.
        return self._client.query(sql, job_config=config, retry=self._retry, job_retry=None)

    @staticmethod
    def _call(sql: str, request):
        from concurrent.futures import TimeoutError as FutureTimeoutError

        from google.api_core.exceptions import GoogleAPIError

        try:
            return request()
        except (GoogleAPIError, FutureTimeoutError) as error:
            raise CauceError(f"BigQuery query failed: {error}\nSQL:\n{sql}") from error


class _StorageUnavailable(Exception):
    """The Storage Read API cannot be used here at all (e.g. its client package is missing)."""


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 or endpoint.startswith("[") else endpoint
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_staging_dataset(staging_dataset: str, default_project: str) -> str:
    """``project.dataset`` for a ``dataset`` or ``project.dataset``; empty stays empty."""
    if not staging_dataset:
        return ""
    parts = staging_dataset.split(".")
    if len(parts) == 1:
        parts = [default_project, *parts]
    if len(parts) != 2 or not PROJECT_ID.fullmatch(parts[0] or "") or not DATASET_ID.fullmatch(parts[1]):
        raise CauceError(
            f"staging_dataset must be dataset or project.dataset (project: lowercase letters, digits, '-'; "
            f"dataset: letters, digits, '_'), got {staging_dataset!r}"
        )
    return ".".join(parts)


_LEGACY_TO_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}


def standard_sql_type(schema_field) -> str:
    """A REST schema field (legacy type names, REPEATED mode) as a Standard SQL type: ARRAY<INT64>."""
    name = _LEGACY_TO_STANDARD_TYPES.get(schema_field.field_type, schema_field.field_type)
    if name == "STRUCT":
        name = "STRUCT<" + ", ".join(f"{f.name} {standard_sql_type(f)}" for f in schema_field.fields) + ">"
    return f"ARRAY<{name}>" if schema_field.mode == "REPEATED" else name
