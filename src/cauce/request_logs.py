"""The request-log row: one shape for Vertex AI's BigQuery table and the local JSON Lines.

Vertex AI request-response logging (``predictRequestResponseLoggingConfig`` on an
endpoint) streams one row per logged request into a BigQuery table of this schema
(Vertex AI documentation, "Online prediction logging", request-response logging
table; the columns a custom-model endpoint fills):

    endpoint           STRING     NULLABLE   the endpoint's resource name
    deployed_model_id  STRING     NULLABLE   the DeployedModel that answered
    logging_time       TIMESTAMP  NULLABLE   when the request was logged
    request_id         NUMERIC    NULLABLE   a number identifying the request
    request_payload    STRING     REPEATED   one JSON text per instance
    response_payload   STRING     REPEATED   one JSON text per prediction

The local serving process (``cauce.serving.app.RequestLog``) writes the same six keys
to ``requests-*.jsonl``, one JSON object a line: ``logging_time`` as ISO-8601 text (a
BigQuery TIMESTAMP's JSON form), ``request_id`` as a JSON integer (a NUMERIC's value),
the payloads as lists of JSON texts. The monitor reads either source through
:func:`instances_of_records`, so a request gives the same instances from both.
"""

from __future__ import annotations

import re
from typing import Any

from cauce.artifacts import CauceError

# (name, BigQuery type, mode) in the order Vertex creates them.
REQUEST_LOG_SCHEMA: tuple[tuple[str, str, str], ...] = (
    ("endpoint", "STRING", "NULLABLE"),
    ("deployed_model_id", "STRING", "NULLABLE"),
    ("logging_time", "TIMESTAMP", "NULLABLE"),
    ("request_id", "NUMERIC", "NULLABLE"),
    ("request_payload", "STRING", "REPEATED"),
    ("response_payload", "STRING", "REPEATED"),
)
REQUEST_LOG_COLUMNS = tuple(name for name, _, _ in REQUEST_LOG_SCHEMA)
# What the monitor reads; a table lacking one of these cannot be monitored.
MONITOR_COLUMNS = ("endpoint", "deployed_model_id", "logging_time", "request_payload")

_TABLE_URI = re.compile(
    r"(?:bq://)?(?P<project>[a-z][-a-z0-9.:]*[a-z0-9])\."
    r"(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[A-Za-z0-9_][A-Za-z0-9_-]{0,1023})"
)


def is_bigquery_table(source: str) -> bool:
    """Whether a request-log source names a BigQuery table (``bq://project.dataset.table``)."""
    return source.startswith("bq://")


def parse_table(uri: str, parameter: str = "request_log_table") -> tuple[str, str, str]:
    """``bq://project.dataset.table`` (``bq://`` optional) -> (project, dataset, table)."""
    match = _TABLE_URI.fullmatch(uri.strip())
    if match is None:
        raise CauceError(
            f"{parameter} {uri!r} must be a BigQuery table bq://project.dataset.table "
            "(dataset: letters, digits, '_')"
        )
    return match["project"], match["dataset"], match["table"]


def default_table(project: str, endpoint_name: str) -> str:
    """The table an endpoint logs to when none is given: ``bq://<project>.cauce_request_logs.<endpoint>``."""
    return f"bq://{project}.cauce_request_logs.{re.sub(r'[^A-Za-z0-9_]', '_', endpoint_name)}"


def bigquery_schema():
    """:data:`REQUEST_LOG_SCHEMA` as ``google.cloud.bigquery.SchemaField`` objects."""
    from google.cloud import bigquery

    return [bigquery.SchemaField(name, kind, mode=mode) for name, kind, mode in REQUEST_LOG_SCHEMA]


def schema_problems(table_schema) -> tuple[list[str], list[str]]:
    """(missing columns the monitor needs, columns of the wrong type or mode) of a table's schema."""
    fields = {field.name: field for field in table_schema}
    expected = {name: (kind, mode) for name, kind, mode in REQUEST_LOG_SCHEMA}
    missing = [name for name in MONITOR_COLUMNS if name not in fields]
    legacy = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
    wrong = []
    for name in MONITOR_COLUMNS:
        if name in fields:
            field = fields[name]
            kind = legacy.get(field.field_type, field.field_type)
            if (kind, field.mode or "NULLABLE") != expected[name]:
                wrong.append(f"{name} {field.mode or 'NULLABLE'} {kind} (expected {expected[name][1]} {expected[name][0]})")
    return missing, wrong


def bigquery_client(project: str, location: str = "", api_endpoint: str = "", credentials: Any = None):
    """A BigQuery client; with ``api_endpoint`` (an emulator, a private endpoint) anonymous credentials."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import bigquery

    try:
        return bigquery.Client(
            project=project or None,
            location=location or None,
            client_options=ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None,
            credentials=credentials or (AnonymousCredentials() if api_endpoint else None),
        )
    except DefaultCredentialsError as error:
        raise CauceError(f"no Google Cloud credentials for BigQuery: {error}") from error


def ensure_table(
    uri: str,
    location: str = "US",
    api_endpoint: str = "",
    credentials: Any = None,
    timeout_s: float = 60.0,
) -> str:
    """Create the dataset and the request-log table of ``uri`` if missing (the schema Vertex
    writes); an existing table must already have that shape. Returns ``bq://project.dataset.table``."""
    from google.api_core import exceptions as google_exceptions
    from google.cloud import bigquery
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    project, dataset, table = parse_table(uri)
    client = bigquery_client(project, location, api_endpoint, credentials)
    retry = DEFAULT_RETRY.with_timeout(timeout_s)
    table_id = f"{project}.{dataset}.{table}"
    try:
        reference = bigquery.Dataset(f"{project}.{dataset}")
        reference.location = location or None
        client.create_dataset(reference, exists_ok=True, retry=retry, timeout=timeout_s)
        created = client.create_table(
            bigquery.Table(table_id, schema=bigquery_schema()), exists_ok=True, retry=retry, timeout=timeout_s
        )
    except google_exceptions.GoogleAPIError as error:
        raise CauceError(f"could not create the request-log table {table_id}: {error}") from error
    missing, wrong = schema_problems(created.schema)
    if missing or wrong:
        raise CauceError(
            f"request-log table {table_id} exists with another shape than Vertex AI writes: "
            f"missing columns {missing}, wrong columns {wrong}; give another request_log_table"
        )
    return f"bq://{table_id}"


def check_table(client, uri: str, timeout_s: float = 60.0) -> str:
    """``project.dataset.table`` of a request-log table that exists with the columns the monitor reads."""
    from google.api_core import exceptions as google_exceptions
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    project, dataset, table = parse_table(uri)
    table_id = f"{project}.{dataset}.{table}"
    try:
        found = client.get_table(table_id, retry=DEFAULT_RETRY.with_timeout(timeout_s), timeout=timeout_s)
    except google_exceptions.NotFound as error:
        raise CauceError(
            f"request-log table {table_id} not found: deploy_vertex creates it with the endpoint's "
            f"request-response logging ({error.message})"
        ) from error
    except google_exceptions.GoogleAPIError as error:
        raise CauceError(f"could not read the request-log table {table_id}: {error}") from error
    missing, wrong = schema_problems(found.schema)
    if missing or wrong:
        raise CauceError(
            f"request-log table {table_id} is not a Vertex AI request-response log: "
            + (f"missing columns {missing}" if missing else "")
            + ("; " if missing and wrong else "")
            + (f"wrong columns {wrong}" if wrong else "")
            + f"; expected {', '.join(f'{n} {m} {k}' for n, k, m in REQUEST_LOG_SCHEMA)}"
        )
    return table_id
