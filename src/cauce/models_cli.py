"""`cauce models`: list and explain registered model versions, approve or reject a
pending one, roll the champion back. Locally MLflow and the local endpoint; with
``--target google-cloud`` Vertex AI Model Registry and Vertex endpoints (the logic is
in cauce.model_registry)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from cauce.artifacts import CauceError

app = typer.Typer(help="Registered model versions: list, show, approve, reject, rollback.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

TARGET = typer.Option("local", help="local (MLflow + the local endpoint) or google-cloud (Vertex AI)")
TRACKING = typer.Option("", "--mlflow-tracking-uri", help="MLflow registry; empty = cauce's local sqlite")
PROJECT = typer.Option("", help="Google Cloud project (--target google-cloud)")
REGION = typer.Option("", help="Vertex AI region (--target google-cloud)")
API_ENDPOINT = typer.Option("", help="Vertex AI API endpoint other than the region's")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _open(target: str, tracking: str, project: str, region: str, api_endpoint: str):
    from cauce.model_registry import open_registry

    return open_registry(target, tracking, project, region, api_endpoint)


@app.command("list")
def list_(
    name: str = typer.Argument(..., help="registered model name"),
    target: str = TARGET, mlflow_tracking_uri: str = TRACKING, project: str = PROJECT, region: str = REGION,
    api_endpoint: str = API_ENDPOINT,
):  # fmt: skip
    """Every version of NAME: aliases, status, metrics, where it serves."""
    try:
        registry = _open(target, mlflow_tracking_uri, project, region, api_endpoint)
        versions = registry.list(name)
        table = Table(title=f"{name}: {len(versions)} versions")
        for column in ("version", "aliases", "status", "metrics", "serving", "created"):
            table.add_column(column)
        for version in versions:
            serving = ", ".join(f"{d['endpoint']} {d['traffic']} %" for d in registry.deployments(version))
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(version.metrics.items()) if k.startswith(("eval_", "auc")))
            table.add_row(version.version, ", ".join(version.aliases), version.status, metrics, serving, version.created)
    except CauceError as error:
        _fail(str(error))
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME (its champion), NAME@ALIAS or NAME/VERSION"),
    as_json: bool = typer.Option(False, "--json", help="print the version and its full lineage record as JSON"),
    target: str = TARGET, mlflow_tracking_uri: str = TRACKING, project: str = PROJECT, region: str = REGION,
    api_endpoint: str = API_ENDPOINT,
):  # fmt: skip
    """Explain one version: metrics, aliases, where it came from (lineage), where it serves."""
    try:
        registry = _open(target, mlflow_tracking_uri, project, region, api_endpoint)
        version = registry.resolve(ref, default_alias="champion")
        record = registry.lineage(version) if version.lineage_uri else None
        deployments = registry.deployments(version)
    except CauceError as error:
        _fail(str(error))
    if as_json:
        body = {"name": version.name, "version": version.version, "aliases": version.aliases, "status": version.status,
                "reason": version.reason, "replaced": version.replaced, "metrics": version.metrics,
                "model_dir": version.model_dir, "deployments": deployments, "lineage": record}  # fmt: skip
        print(json.dumps(body, indent=2, default=str))
        return
    for line in explain(version, record, deployments):
        console.print(line, highlight=False)


def explain(version, record: dict | None, deployments: list[dict]) -> list[str]:
    """The version's story, one fact a line."""
    lines = [f"[bold]{version.name} version {version.version}[/] — {version.status or 'no status'}"
             + (f" (aliases: {', '.join(version.aliases)})" if version.aliases else "")]  # fmt: skip
    if version.reason:
        lines.append(f"  reason: {version.reason}")
    if version.replaced:
        lines.append(f"  replaced champion: version {version.replaced}")
    lines.append(f"  files: {version.model_dir}")
    if deployments:
        for d in deployments:
            lines.append(f"  serving: endpoint {d['endpoint']} ({d['url']}), deployment {d['deployed_model_id']}, {d['traffic']} % of traffic")
    else:
        lines.append("  serving: nowhere")
    if record is None:
        lines.append("  lineage: none recorded (registered outside a training run)")
        return lines
    run, model, source, data = record.get("run") or {}, record.get("model") or {}, record.get("source"), record.get("data") or {}
    lines.append(f"  made by: pipeline run {run.get('pipeline_job_name')} (id {run.get('pipeline_job_id')}), registered {run.get('registered_at')}")
    if source:
        lines.append(f"  source ({source.get('backend')}): query sha256 {str(source.get('query_sha256'))[:16]}…, tables {source.get('tables')}")
        lines.append(f"    query: {' '.join(str(source.get('query')).split())[:200]}")
        if source.get("query_parameters"):
            lines.append(f"    parameters: {json.dumps(source['query_parameters'], default=str)}")
        if source.get("bigquery_job_id"):
            lines.append(f"    BigQuery job: {source['bigquery_job_id']}")
        if source.get("local_engine"):
            engine = source["local_engine"]
            lines.append(f"    local engine snapshot: {engine.get('database')} sha256 {str(engine.get('sha256'))[:16]}…")
    rows, prints = data.get("split_rows") or {}, data.get("split_fingerprints") or {}
    for split in rows or prints:
        count = rows.get(split)
        count = f"{int(count):,}" if isinstance(count, (int, float)) else "?"  # KFP metadata makes ints floats
        lines.append(f"  data {split}: {count} rows, {str(prints.get(split, '?'))[:23]}…")
    lines.append(f"  transform: {data.get('transform_sha256')}")
    lines.append(f"  model: {model.get('framework')} {model.get('model_type')} ({model.get('task')}), seed {model.get('seed')}, "
                 f"hyperparameters {_given(model)}")  # fmt: skip
    code = record.get("code") or {}
    lines.append(f"  code: cauce {code.get('cauce')}, commit {code.get('commit') or 'unknown'}")
    for step, image in sorted((code.get("images") or {}).items()):
        lines.append(f"    {step}: {image}")
    evaluation = record.get("evaluation")
    if evaluation:
        verdict = "blessed" if evaluation.get("blessed") else "not blessed"
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted((evaluation.get("metrics") or {}).items()) if isinstance(v, (int, float)))
        lines.append(f"  evaluation: {verdict}; {shown}")
        for reason in evaluation.get("reasons") or []:
            lines.append(f"    - {reason}")
    champion = record.get("champion")
    if champion is not None:
        lines.append(f"  compared with: version {champion['version']}" if champion.get("found") else "  compared with: no champion (first model)")
    if record.get("trigger"):
        lines.append(f"  started by: {json.dumps(record['trigger'], default=str)[:300]}")
    return lines


def _given(model: dict) -> str:
    """The hyperparameters train was given (what remakes the model), else the resolved ones."""
    if model.get("hyperparameters_given") is not None:
        given = model["hyperparameters_given"]
        return json.dumps(given, default=str) if given else "{} (the framework's defaults)"
    return f"{json.dumps(model.get('hyperparameters'), default=str)} (resolved)"


@app.command()
def approve(
    ref: str = typer.Argument(..., help="NAME/VERSION (or NAME@pending) of the pending version"),
    endpoint: str = typer.Option("", help="endpoint to serve it on (default: the one its training run named)"),
    port: int = typer.Option(0, help="local endpoint's port (default: its training run's)"),
    canary: int = typer.Option(0, help="canary share in %% before promotion (default: its training run's)"),
    target: str = TARGET, mlflow_tracking_uri: str = TRACKING, project: str = PROJECT, region: str = REGION,
    api_endpoint: str = API_ENDPOINT,
):  # fmt: skip
    """Deploy a pending version through deploy's canary path and make it champion."""
    try:
        registry = _open(target, mlflow_tracking_uri, project, region, api_endpoint)
        result = registry.approve(ref, endpoint_name=endpoint, port=port, canary_traffic_percentage=canary)
    except CauceError as error:
        _fail(str(error))
    replaced = f", replacing version {result['replaced']}" if result["replaced"] else ""
    console.print(f"approved {result['version']}: champion{replaced}, serving at {result['endpoint_url']}")


@app.command()
def reject(
    ref: str = typer.Argument(..., help="NAME/VERSION (or NAME@pending) of the pending version"),
    reason: str = typer.Option(..., help="why: recorded on the version"),
    target: str = TARGET, mlflow_tracking_uri: str = TRACKING, project: str = PROJECT, region: str = REGION,
    api_endpoint: str = API_ENDPOINT,
):  # fmt: skip
    """Reject a pending version; it is never deployed, and the registry records why."""
    try:
        version = _open(target, mlflow_tracking_uri, project, region, api_endpoint).reject(ref, reason)
    except CauceError as error:
        _fail(str(error))
    console.print(f"rejected {version.label}: {reason}")


@app.command()
def rollback(
    name: str = typer.Argument(..., help="registered model name"),
    endpoint: str = typer.Option("", help="endpoint to serve it on (default: the one the champion's run named)"),
    port: int = typer.Option(0, help="local endpoint's port"),
    canary: int = typer.Option(0, help="canary share in %% before promotion"),
    target: str = TARGET, mlflow_tracking_uri: str = TRACKING, project: str = PROJECT, region: str = REGION,
    api_endpoint: str = API_ENDPOINT,
):  # fmt: skip
    """Serve the previous champion again (deploy's traffic rules: requests are answered throughout)."""
    try:
        registry = _open(target, mlflow_tracking_uri, project, region, api_endpoint)
        result = registry.rollback(name, endpoint_name=endpoint, port=port, canary_traffic_percentage=canary)
    except CauceError as error:
        _fail(str(error))
    console.print(f"rolled back {result['rolled_back']}: {result['version']} is champion again, serving at {result['endpoint_url']}")
