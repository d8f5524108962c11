"""`cauce schedule`: run a pipeline on a cron schedule. With ``--project`` a Vertex AI
pipeline schedule (create, list, pause, resume, delete); without, the crontab entry
that runs `cauce run` locally (logic in cauce.schedules). `cauce schedule PIPELINE
--cron EXPR` (the issue's form) is `create`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from cauce.artifacts import CauceError


class _CreateByDefault(TyperGroup):
    """`cauce schedule PIPELINE --cron EXPR ...` is `cauce schedule create PIPELINE ...`:
    a first argument that names no subcommand is the pipeline to schedule."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["create", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_CreateByDefault,
    help="Pipeline schedules: Vertex AI pipeline schedules, or a local crontab entry. "
    "`cauce schedule PIPELINE --cron EXPR` is short for `cauce schedule create PIPELINE --cron EXPR`.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

PROJECT = typer.Option("", help="Google Cloud project: a Vertex AI schedule (empty: the local crontab entry)")
REGION = typer.Option("us-central1", help="Vertex AI region")
API_ENDPOINT = typer.Option("", help="Vertex AI API endpoint other than the region's")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@app.command()
def create(
    pipeline: str = typer.Argument(..., help="pipeline to schedule (training, monitoring)"),
    cron: str = typer.Option(..., help="when: five cron fields, optionally after TZ=Area/City, e.g. 'TZ=Europe/Madrid 0 3 * * 1'"),
    param: list[str] = typer.Option([], "--param", "-p", help="pipeline parameter name=value (repeatable)"),
    name: str = typer.Option("", help="the schedule's display name (default: cauce-PIPELINE)"),
    project: str = PROJECT, region: str = REGION, api_endpoint: str = API_ENDPOINT,
    pipeline_root: str = typer.Option("", help="Vertex: gs:// folder of the runs' outputs"),
    service_account: str = typer.Option("", help="Vertex: the service account the runs use"),
    max_concurrent_runs: int = typer.Option(1, help="Vertex: runs of this schedule at once"),
    crontab: Path = typer.Option(None, help="local: append the entry to this file instead of printing it"),
):  # fmt: skip
    """Schedule PIPELINE on CRON: a Vertex AI schedule with --project, else a crontab entry."""
    from cauce import schedules, spec

    try:
        values = spec.parse_params(pipeline, param)
        if project:
            values.setdefault("target", "google-cloud")
            values.setdefault("project", project)
            values.setdefault("vertex_region", region)
        schedules.check_request(pipeline, cron, values)  # before anything is created
        if not project:
            from cauce.paths import cauce_home

            line = schedules.crontab_line(pipeline, cron, param, str(cauce_home()))
            if crontab:
                with crontab.open("a") as handle:
                    handle.write(line + "\n")
                console.print(f"appended to {crontab}; install it with: crontab {crontab}")
            else:
                print(line)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = spec.compile_pipeline(pipeline, tmp)
            created = schedules.create_vertex_schedule(
                str(path), name or f"cauce-{pipeline}", cron, values, project, region, pipeline_root,
                service_account, api_endpoint, max_concurrent_runs,
            )  # fmt: skip
    except CauceError as error:
        _fail(str(error))
    except ValueError as error:  # the SDK's own checks (parameter names and types)
        _fail(f"cannot build the Vertex schedule: {error}")
    print(f"scheduled: {created.resource_name} ({cron})")


@app.command("list")
def list_(project: str = PROJECT, region: str = REGION, api_endpoint: str = API_ENDPOINT):
    """The project's Vertex AI pipeline schedules."""
    from cauce import schedules

    if not project:
        _fail("local schedules are crontab entries: see `crontab -l`; give --project for Vertex AI")
    try:
        found = schedules.list_vertex_schedules(project, region, api_endpoint)
    except CauceError as error:
        _fail(str(error))
    table = Table(title=f"pipeline schedules in {project}/{region}")
    for column in ("id", "name", "cron", "state"):
        table.add_column(column)
    for schedule in found:
        table.add_row(schedule.name, schedule.display_name, schedule.cron, schedule.state.name)
    console.print(table)


def _act(verb: str, name: str, project: str, region: str, api_endpoint: str) -> None:
    from google.api_core.exceptions import GoogleAPICallError

    from cauce import schedules

    if not project:
        _fail("local schedules are crontab entries: edit them with `crontab -e`; give --project for Vertex AI")
    try:
        schedule = schedules.vertex_schedule(name, project, region, api_endpoint)
        getattr(schedule, verb)()
    except CauceError as error:
        _fail(str(error))
    except GoogleAPICallError as error:
        _fail(f"Vertex AI refused to {verb} schedule {name!r}: {error.message}")
    print(f"{verb.rstrip('e')}ed: {schedule.resource_name}")


@app.command()
def pause(name: str = typer.Argument(..., help="schedule id or display name"), project: str = PROJECT,
          region: str = REGION, api_endpoint: str = API_ENDPOINT):  # fmt: skip
    """Pause a Vertex AI schedule (no runs until resumed)."""
    _act("pause", name, project, region, api_endpoint)


@app.command()
def resume(name: str = typer.Argument(..., help="schedule id or display name"), project: str = PROJECT,
           region: str = REGION, api_endpoint: str = API_ENDPOINT):  # fmt: skip
    """Resume a paused Vertex AI schedule."""
    _act("resume", name, project, region, api_endpoint)


@app.command()
def delete(name: str = typer.Argument(..., help="schedule id or display name"), project: str = PROJECT,
           region: str = REGION, api_endpoint: str = API_ENDPOINT):  # fmt: skip
    """Delete a Vertex AI schedule."""
    _act("delete", name, project, region, api_endpoint)
