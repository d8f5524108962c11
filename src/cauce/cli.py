"""The `cauce` command line: run pipelines locally; compile, validate, upload and submit
them; export the component catalogue; check the images' size budgets."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cauce.artifacts import CauceError

# Whether a failure shows its traceback: `cauce --verbose ...` (or `cauce run --verbose`,
# or CAUCE_VERBOSE=1). Without it every failure is one or two lines.
_verbose = False


class _Cli(typer.Typer):
    """The app, with one rule for failures no command caught: a line naming the exception
    (its traceback with --verbose), never Typer's screen of framed source."""

    def __call__(self, *args, **kwargs):
        global _verbose
        import os

        _verbose = _verbose or os.environ.get("CAUCE_VERBOSE", "") not in ("", "0")
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:  # a bug or an unforeseen failure: say what it was
            if _verbose:
                import traceback

                traceback.print_exception(error)
            else:
                err_console.print(
                    f"[bold red]error:[/] {type(error).__name__}: {error}".rstrip()
                    + "\n[dim](cauce --verbose ... shows the traceback)[/]",
                    highlight=False,
                )
            sys.exit(1)


app = _Cli(help="cauce: the ML lifecycle as Kubeflow / Vertex AI pipelines.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

from cauce.models_cli import app as models_app  # noqa: E402 - sub-apps after the main app
from cauce.schedule_cli import app as schedule_app  # noqa: E402

app.add_typer(models_app, name="models")
app.add_typer(schedule_app, name="schedule")

from cauce.load_cli import load_command, tables_command  # noqa: E402

app.command("load")(load_command)
app.command("tables")(tables_command)


def _fail(message: str, code: int = 1):
    """One or two lines naming the cause; with --verbose first the traceback of the
    error being handled (for a failed pipeline run, the failing step's, from its log)."""
    if _verbose:
        _print_traceback()
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _print_traceback() -> None:
    import traceback

    error = sys.exc_info()[1]
    if error is None:
        return
    log_file = getattr(error, "log_file", None)
    if log_file is not None and Path(log_file).is_file():
        # A step's traceback is in the run's log, not in this process.
        text = Path(log_file).read_text(errors="replace")
        start = text.rfind("Traceback (most recent call last):")
        if start >= 0:
            sys.stderr.write(text[start:].rstrip() + "\n")
            return
    traceback.print_exception(error)


def _print_version(value: bool) -> None:
    if value:
        from cauce import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print cauce's version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the traceback when a command fails."),
):
    """cauce: the ML lifecycle as Kubeflow / Vertex AI pipelines."""
    global _verbose
    _verbose = _verbose or verbose


# --------------------------------------------------------------------------- run
RUNNER_HELP = (
    "subprocess: every step in this virtualenv; docker: every step in its component's image, "
    "the model served by the serving image in a container (needs a Docker engine and `make images`)"
)


def _run_with_progress(pipeline: str, arguments: dict, verbose: bool, runner: str = "subprocess"):
    from cauce import spec
    from cauce.local import PipelineFailed, run_spec
    from cauce.paths import cauce_home

    spec_path = spec.compile_pipeline(pipeline, cauce_home() / "specs")
    # While the pipeline runs, stdout is captured into the run's log file; progress
    # goes to the terminal through a console bound to the real stdout.
    terminal = Console(file=sys.stdout)
    marks = {"RUNNING": "[yellow]…[/]", "SUCCESS": "[green]✓[/]", "FAILURE": "[red]✗[/]"}
    started: dict[str, float] = {}

    def on_event(task: str, status: str) -> None:
        if status == "RUNNING":
            started[task] = time.monotonic()
            status_line.update(f"[bold]{pipeline}[/]: running [cyan]{task}[/] …")
        else:
            elapsed = time.monotonic() - started.get(task, time.monotonic())
            terminal.print(f"  {marks.get(status, status)} {task:<12} {elapsed:6.1f} s")

    console.print(f"[bold]{pipeline}[/] — running [dim]{spec_path}[/] with kfp.local ({runner} runner)")
    try:
        with terminal.status(f"[bold]{pipeline}[/]: starting …") as status_line:
            result = run_spec(spec_path, arguments, on_event=on_event, verbose=verbose, runner=runner)
    except (PipelineFailed, CauceError) as error:
        _fail(str(error))
    console.print(f"  [bold]done[/] in {result.seconds:.1f} s  [dim](log: {result.log_file})[/]")
    return result


def _ensure_demo(pipeline: str, arguments: dict, rows: int) -> None:
    """Training without a source runs on the demo table: the demo's parameters (only
    cauce.demo names taxi columns) fill what the command line did not set."""
    from cauce import demo
    from cauce.paths import local_database

    uses_demo = pipeline == "training" and "source" not in arguments and arguments.get("target", "local") == "local"
    if uses_demo:
        for name, value in demo.DEMO_PARAMETERS.items():
            arguments.setdefault(name, value)
        database = arguments.get("local_database") or str(local_database())
        with console.status(f"preparing the demo table {demo.DEMO_TABLE} ({rows:,} rows) …"):
            created = demo.ensure_demo_table(database, rows)
        if created:
            console.print(f"  loaded {rows:,} generated taxi trips into the local engine ({database})")


def _monitored_features(arguments: dict) -> None:
    """Monitoring without feature lists: the raw inputs of the model that the local
    endpoint logging to ``request_log_dir`` serves (numbers numeric, strings categorical),
    said on the terminal. Left empty when no such endpoint is found (the monitor then
    names what it needs)."""
    if arguments.get("numeric_features") or arguments.get("categorical_features"):
        return
    from cauce.paths import cauce_home

    wanted = str(arguments.get("request_log_dir") or "")
    for state_file in sorted((cauce_home() / "serving").glob("*/state.json")) if wanted else []:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if str(state.get("request_log_dir", "")) != wanted or not state.get("model_dir"):
            continue
        from cauce.features import FittedTransform

        fitted = FittedTransform.load(state["model_dir"])
        types = fitted.input_types or {}
        categorical = [c for c in fitted.input_features if "string" in str(types.get(c, "")) or "dictionary" in str(types.get(c, ""))]
        numeric = [c for c in fitted.input_features if c not in categorical]
        arguments.update(numeric_features=numeric, categorical_features=categorical)
        console.print(
            f"  monitoring the inputs of the model endpoint {state_file.parent.name!r} serves: numeric {numeric}, "
            f"categorical {categorical}"
        )
        return


def _preflight(pipeline: str, arguments: dict) -> None:
    """The training pipeline's preflight checks, here before kfp.local starts (the
    pipeline's first step runs them again where it runs)."""
    if pipeline == "monitoring":
        _monitored_features(arguments)
    if pipeline != "training":
        return
    from cauce import spec
    from cauce.components.preflight.executor import check_arguments

    inputs = spec.get_pipeline(pipeline).component_spec.inputs or {}
    defaults = {name: i.default for name, i in inputs.items() if i.default is not None}
    with console.status("preflight: checking the parameters against the source …"):
        checked = check_arguments(arguments, defaults)
    for note in checked.notes:  # what it resolved or noticed: said before the run, not buried in its log
        console.print(f"  [dim]preflight:[/] {note}", highlight=False)


def _print_pipeline_help(pipeline: str) -> None:
    """Every parameter of the pipeline: type, default and meaning (from its signature and docstring)."""
    from cauce import spec

    compiled = spec.get_pipeline(pipeline)
    console.print(f"[bold]cauce run {pipeline}[/] [--param name=value ...] [--rows N] [--runner R] [--verbose]\n")
    if compiled.description:
        console.print(compiled.description + "\n")
    view = Table(title=f"{pipeline}: parameters (--param name=value; lists and dicts as JSON)", show_lines=False)
    for column in ("parameter", "type", "default", "meaning"):
        view.add_column(column, style="cyan" if column == "parameter" else None, overflow="fold")
    for name, entry in (compiled.component_spec.inputs or {}).items():
        default = "required" if entry.default is None and not entry.optional else json.dumps(entry.default)
        if len(default) > 60:
            default = default[:57] + "..."
        view.add_row(name, entry.type, default, entry.description or "")
    console.print(view)
    if pipeline == "training":
        from cauce import tasks

        console.print("\n[bold]metrics per task[/] (names for thresholds / change_thresholds):")
        console.print(tasks.describe(), markup=False)
        console.print("\nWithout --param source the run uses the generated demo table (--rows) and its parameters.")


@app.command(context_settings={"help_option_names": []})
def run(
    pipeline: str = typer.Argument(..., help="training or monitoring"),
    rows: int = typer.Option(100_000, help="rows of the generated demo table (training on the local default)"),
    param: list[str] = typer.Option([], "--param", "-p", help="pipeline parameter name=value (repeatable)"),
    verbose: bool = typer.Option(False, help="stream every task's log to the terminal"),
    runner: str = typer.Option("subprocess", help=RUNNER_HELP),
    help_: bool = typer.Option(False, "--help", "-h", help="list the pipeline's parameters (type, default, meaning) and exit"),
):
    """Run a pipeline locally with kfp.local, from its compiled spec. `cauce run PIPELINE --help`
    lists its parameters."""
    from cauce import spec

    global _verbose
    _verbose = _verbose or verbose
    try:
        if help_:
            _print_pipeline_help(pipeline)
            return
        arguments = spec.parse_params(pipeline, param)
        _ensure_demo(pipeline, arguments, rows)
        _preflight(pipeline, arguments)
    except CauceError as error:
        _fail(str(error))
    result = _run_with_progress(pipeline, arguments, verbose, runner)
    if pipeline == "training":
        _print_training_summary(result)
    else:
        _print_monitoring_summary(result)


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{int(value):,}" if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def _print_training_summary(result) -> None:
    table = Table(title="training: summary", show_lines=False)
    table.add_column("phase", style="cyan")
    table.add_column("result")
    table.add_column("time", justify="right")
    seconds = result.task_seconds
    extract = result.task("extract")
    if extract:
        splits = extract.artifacts.get("dataset", {}).get("metadata", {}).get("split_rows") or {}
        detail = ", ".join(f"{k} {int(v):,}" for k, v in splits.items()) or f"{int(extract.parameters.get('rows', 0)):,} rows"
        null_keys = int(extract.artifacts.get("dataset", {}).get("metadata", {}).get("null_key_rows") or 0)
        if null_keys:  # rows that belong to no split (their key is NULL): said, never silent
            detail += f"; [yellow]{null_keys:,} rows with a NULL key dropped[/]"
        table.add_row("extract", f"rows: {detail}", f"{seconds.get(extract.name, 0):.1f} s")
    validate = result.task("validate")
    if validate:
        found = int(validate.parameters.get("Output") or 0)
        report = validate.artifacts.get("html", {}).get("uri", "")
        verdict = "no anomalies" if found == 0 else f"{found} anomalies (see {report})"
        missing = validate.artifacts.get("anomalies", {}).get("metadata", {}).get("missing_labels") or {}
        if sum(missing.values()):  # the rows every later phase leaves out: said here, never silent
            verdict += "; [yellow]rows without a label: " + ", ".join(f"{k} {int(v):,}" for k, v in missing.items()) + "[/]"
        table.add_row("validate", verdict, f"{seconds.get(validate.name, 0):.1f} s")
    transform = result.task("transform")
    if transform:
        detail = f"{int(transform.parameters.get('features_out', 0))} encoded features"
        left_out = transform.artifacts.get("transformed", {}).get("metadata", {}).get("dropped_rows_missing_label") or {}
        if sum(left_out.values()):
            detail += f"; {int(sum(left_out.values())):,} rows without a label left out of training and evaluation"
        table.add_row("transform", detail, f"{seconds.get(transform.name, 0):.1f} s")
    train = result.task("train")
    if train:
        model = train.artifacts.get("model", {}).get("metadata", {})
        task = model.get("task", "binary")
        from cauce import tasks

        trained = model.get("metrics", {})
        shown = ", ".join(f"{name} {_fmt(trained[name])}" for name in tasks.TRAIN_METRICS.get(task, ()) if name in trained)
        table.add_row(
            "train",
            f"{model.get('framework', '?')} {model.get('model_type', '')} ({task}), {int(model.get('train_rows', 0)):,} rows; {shown}",
            f"{seconds.get(train.name, 0):.1f} s",
        )
    champion = result.task("champion")
    if champion:
        found = champion.artifacts.get("champion_model", {}).get("metadata", {})
        current = found.get("model_dir", "") if found.get("found") else ""
        table.add_row(
            "champion",
            f"compared with {current}" if current else "none yet: this model can become the first",
            f"{seconds.get(champion.name, 0):.1f} s",
        )
    evaluate = result.task("evaluate")
    if evaluate:
        metrics = evaluate.artifacts.get("metrics", {}).get("metadata", {})
        from cauce import tasks

        task = (train.artifacts.get("model", {}).get("metadata", {}).get("task") if train else None) or "binary"
        headline = [name for name in tasks.HEADLINE_METRICS.get(task, ()) if name in metrics]
        shown = ", ".join(f"{k} {_fmt(metrics[k])}" for k in headline or list(metrics)[:5])
        verdict = "[green]blessed → promote[/]" if evaluate.parameters.get("Output") else "[red]not blessed → keep champion[/]"
        evaluation = evaluate.artifacts.get("evaluation", {}).get("metadata", {})
        if evaluation.get("rows") is not None:
            shown += f" on {int(evaluation['rows']):,} rows"
            if evaluation.get("rows_missing_label"):
                shown += f" ({int(evaluation['rows_missing_label']):,} without a label left out)"
        reasons = evaluation.get("reasons") or []
        if not evaluate.parameters.get("Output") and reasons:  # why not: the gate's first reason
            more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
            shown += f"; [yellow]{reasons[0]}{more}[/]"
        table.add_row("evaluate", f"{verdict}; {shown}", f"{seconds.get(evaluate.name, 0):.1f} s")
    register = result.task("register")
    if register:
        registered = register.artifacts.get("registered_model", {}).get("metadata", {})
        registered_as = registered.get("alias", "?")
        served = result.task("deploy")
        if served and served.artifacts.get("endpoint", {}).get("metadata", {}).get("champion"):
            registered_as = "champion, once deploy served it"  # registered pending, promoted by deploy
        table.add_row(
            "register",
            f"version {register.parameters.get('version')} as {registered_as} "
            f"({register.parameters.get('model_uri')})",
            f"{seconds.get(register.name, 0):.1f} s",
        )
    deploy = result.task("deploy")
    pending = register and register.artifacts.get("registered_model", {}).get("metadata", {}).get("alias") == "pending"
    waiting = (
        f"[yellow]waiting for approval[/]: cauce models approve "
        f"{register.artifacts['registered_model']['metadata'].get('model_name')}/{register.parameters.get('version')}"
        if pending
        else "skipped: the champion keeps serving"
        if champion and champion.artifacts.get("champion_model", {}).get("metadata", {}).get("found")
        else "skipped: not blessed, and no champion serves yet"
    )
    served = f"[bold]{deploy.parameters.get('endpoint_url')}[/]" if deploy else waiting
    if deploy and deploy.artifacts.get("endpoint", {}).get("metadata", {}).get("rollout") == "unchanged":
        served += " (already serving this model: nothing redeployed)"
    table.add_row(
        "deploy",
        served,
        f"{seconds.get(deploy.name, 0):.1f} s" if deploy else "",
    )
    table.add_row("total", "", f"{result.seconds:.1f} s")
    console.print(table)
    if deploy:
        url = deploy.parameters.get("endpoint_url")
        example = _write_example_request(result)
        console.print(f"try it: [bold]curl -s {url} -H 'Content-Type: application/json' -d @{example}[/]")


def _write_example_request(result) -> Path:
    """Two real eval rows as a request body, next to the run's outputs."""
    from cauce.components.deploy.executor import smoke_instances_from

    path = Path(result.run_dir) / "example-request.json"
    if not path.exists():
        instances = smoke_instances_from(
            result.task("extract").artifacts["dataset"]["uri"], "eval", result.task("train").artifacts["model"]["uri"], 2
        )
        path.write_text(json.dumps({"instances": instances}, indent=2))
    return path


def _print_monitoring_summary(result) -> None:
    task = result.task("monitor")
    if task is None:
        return
    report = task.artifacts.get("drift_report", {})
    drifted = report.get("metadata", {}).get("drifted_features") or []
    flag = "[red]DRIFT DETECTED[/]" if task.parameters.get("Output") else "[green]no drift[/]"
    console.print(f"monitor: {flag}" + (f" in {', '.join(drifted)}" if drifted else ""))
    html = Path(report.get("uri", "")) / "report.html"
    console.print(f"  report: {html if html.exists() else report.get('uri', '')}")


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    rows: int = typer.Option(100_000, help="rows of the generated taxi-trip table"),
    requests: int = typer.Option(200, help="prediction requests to send before monitoring"),
    drift: bool = typer.Option(False, help="shift the traffic (longer trips, more cash) so monitoring flags drift"),
    port: int = typer.Option(8080, help="local port of the serving process"),
    verbose: bool = typer.Option(False, help="stream every task's log to the terminal"),
    runner: str = typer.Option("subprocess", help=RUNNER_HELP),
):
    """The whole lifecycle on your laptop: train and deploy, send traffic, monitor."""
    from cauce import demo as demo_data
    from cauce.components.deploy.executor import smoke_instances_from

    arguments = {"port": port}
    try:
        _ensure_demo("training", arguments, rows)
        _preflight("training", arguments)
    except CauceError as error:
        _fail(str(error))
    training = _run_with_progress("training", arguments, verbose, runner)
    deploy_task, extract_task, train_task = training.task("deploy"), training.task("extract"), training.task("train")
    serving = _serving_endpoint(demo_data.DEMO_MODEL)
    if deploy_task is None and serving is None:
        _print_training_summary(training)
        _fail("the model was not blessed and no champion serves yet, so nothing was deployed; see the evaluate report")
    if deploy_task is None:
        # Not better than the champion: it keeps serving, and the demo goes on with it.
        console.print(
            f"  the new model did not pass the gate: the champion ({serving.get('model_dir', '?')}) keeps serving at "
            f"{serving['endpoint_url']}"
        )
        url, request_log_dir = serving["endpoint_url"], serving["request_log_dir"]
    else:
        url, request_log_dir = deploy_task.parameters["endpoint_url"], deploy_task.parameters["request_log_dir"]
    dataset_uri = extract_task.artifacts["dataset"]["uri"]
    instances = smoke_instances_from(dataset_uri, "eval", train_task.artifacts["model"]["uri"], rows=requests)
    if drift:
        instances = [dict(i, trip_miles=(i["trip_miles"] or 0) * 3 + 5, payment_type="Cash") for i in instances]
    _send_traffic(url, instances)
    monitoring = _run_with_progress(
        "monitoring",
        {"baseline_uri": dataset_uri, "request_log_dir": request_log_dir, **demo_data.DEMO_MONITORING_PARAMETERS},
        verbose,
        runner,
    )
    _print_training_summary(training)
    _print_monitoring_summary(monitoring)


def _serving_endpoint(endpoint_name: str) -> dict | None:
    """The local endpoint's state if its server answers: endpoint_url, request_log_dir, model_dir."""
    import urllib.request

    from cauce.components.deploy.executor import endpoint_dir

    try:
        state = json.loads((endpoint_dir(endpoint_name) / "state.json").read_text())
        with urllib.request.urlopen(state["health_url"], timeout=5) as response:  # noqa: S310 - our own loopback server
            if response.status != 200:
                return None
    except (OSError, ValueError, KeyError, CauceError):
        return None
    return {**state, "endpoint_url": state["predict_url"], "request_log_dir": state.get("request_log_dir", "")}


def _send_traffic(url: str, instances: list[dict]) -> None:
    from cauce.components.deploy.executor import post_json

    with console.status(f"sending {len(instances)} prediction requests to {url} …"):
        errors = sum(post_json(url, {"instances": [instance]})[0] != 200 for instance in instances)
    console.print(f"  sent {len(instances)} requests to {url} ({errors} errors)")


# --------------------------------------------------------------------------- compile / validate / submit
@app.command("compile")
def compile_(
    pipeline: str | None = typer.Argument(None, help="pipeline to compile (default: all)"),
    output_dir: Path = typer.Option(Path("build/pipelines"), "--output-dir", "-o", help="where to write <name>.yaml"),
    require_digests: bool = typer.Option(
        False, help="fail unless every image is named by digest (set CAUCE_IMAGE_<FAMILY>=...@sha256:...)"
    ),
):
    """Compile pipelines to KFP pipeline-spec YAML (the files Vertex runs)."""
    from cauce import spec
    from cauce.pipelines import PIPELINES

    names = [pipeline] if pipeline else sorted(PIPELINES)
    try:
        for name in names:
            path = spec.compile_pipeline(name, output_dir)
            info = spec.validate_spec(path)
            unpinned = [image for image in info["images"] if "@sha256:" not in image]
            if require_digests and unpinned:
                raise CauceError(
                    f"{path} names images by tag, not digest: {unpinned}; set CAUCE_IMAGE_<FAMILY> to the pushed "
                    "digests (the release build sources them from containers/build-image.sh's output)"
                )
            console.print(f"compiled [cyan]{name}[/] -> {path}")
    except CauceError as error:
        _fail(str(error))


@app.command()
def validate(spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="compiled pipeline YAML")):
    """Check a compiled spec strictly offline (PipelineSpec proto + Vertex PipelineJob)."""
    from cauce import spec

    try:
        info = spec.validate_spec(spec_file)
    except CauceError as error:
        _fail(str(error))
    console.print(f"[green]valid[/]: {info['name']} — {len(info['tasks'])} tasks, {len(info['parameters'])} parameters")
    console.print(f"  images: {', '.join(info['images'])}")


@app.command()
def submit(
    pipeline: str = typer.Argument(..., help="pipeline to submit"),
    project: str = typer.Option("", help="Google Cloud project (Vertex AI; with --kfp-host: sets the pipeline's project)"),
    region: str = typer.Option("", help="Vertex AI region, e.g. us-central1 (with --kfp-host: sets the pipeline's vertex_region)"),
    pipeline_root: str = typer.Option("", help="folder for pipeline artifacts: gs:// on Vertex; Kubeflow's default if empty"),
    param: list[str] = typer.Option([], "--param", "-p", help="pipeline parameter name=value (repeatable)"),
    service_account: str = typer.Option("", help="service account the pipeline runs as (Kubernetes one with --kfp-host)"),
    api_endpoint: str = typer.Option("", help="Vertex API endpoint override (private endpoints, tests)"),
    enable_caching: bool = typer.Option(True, help="let the backend reuse outputs of unchanged steps"),
    spec_file: Path = typer.Option(
        None, "--spec", exists=True, dir_okay=False, help="submit this compiled spec (from `cauce compile`) instead of compiling now"
    ),
    dry_run: bool = typer.Option(False, help="build the job and print it, submit nothing"),
    kfp_host: str = typer.Option("", help="submit to this Kubeflow Pipelines API (e.g. http://localhost:8888) instead of Vertex AI"),
    namespace: str = typer.Option("", help="Kubeflow: your profile's namespace on a multi-user deployment"),
    experiment: str = typer.Option(
        "", help="experiment of the run, created if missing: Vertex AI Experiments (the PipelineJob's), or Kubeflow's (default: Default)"
    ),
    wait: bool = typer.Option(False, help="Kubeflow: wait for the run to end; exit 1 unless it succeeded"),
    timeout: float = typer.Option(0, help="with --wait: give up waiting after this many seconds (0: no limit)"),
    poll_interval: float = typer.Option(10, help="with --wait: seconds between status checks"),
):
    """Submit a pipeline to Vertex AI Pipelines (aiplatform.PipelineJob) or, with --kfp-host,
    to Kubeflow Pipelines (kfp.Client): the same compiled spec either way."""
    import tempfile

    from cauce import spec

    if kfp_host:
        if api_endpoint:
            _fail("--api-endpoint is for Vertex AI; with --kfp-host give the Kubeflow address only")
    else:
        for name, given in (("--namespace", namespace), ("--wait", wait)):
            if given:
                _fail(f"{name} is for Kubeflow Pipelines: add --kfp-host URL")
        missing = [f"--{n}" for n, v in (("project", project), ("region", region), ("pipeline-root", pipeline_root)) if not v]
        if missing:
            _fail(f"Vertex AI needs {', '.join(missing)} (or submit to Kubeflow Pipelines with --kfp-host URL)")
        if not pipeline_root.startswith("gs://"):
            _fail(f"--pipeline-root must be a gs:// URI, got {pipeline_root!r}")
    try:
        values = spec.parse_params(pipeline, param)
        # On Google Cloud (target: the data comes from BigQuery) Google Cloud resources
        # live in the job's project and region, unless --param says otherwise; only for
        # pipelines that have these parameters (Vertex rejects unknown ones). On Kubeflow
        # only when --project says the cluster works with Google Cloud.
        declared = spec.get_pipeline(pipeline).component_spec.inputs or {}
        defaults = (
            ("target", "google-cloud" if project else ""),
            ("project", project),
            ("vertex_region", region),
        )
        for name, value in defaults:
            if name in declared and value:
                values.setdefault(name, value)
        # Dataflow jobs run in the same region unless the dataflow options name one.
        if region and isinstance(values.get("dataflow"), dict):
            values["dataflow"] = {"region": region, **values["dataflow"]}
        missing = [n for n, i in declared.items() if i.default is None and not i.optional and n not in values]
        if missing:
            raise CauceError(f"pipeline {pipeline!r} needs " + " ".join(f"--param {n}=..." for n in missing))
        with tempfile.TemporaryDirectory() as tmp:
            path = spec_file or spec.compile_pipeline(pipeline, tmp)
            info = spec.validate_spec(path)
            expected = spec.get_pipeline(pipeline).name
            if info["name"] != expected:
                raise CauceError(f"{path} is the pipeline {info['name']!r}, not {expected!r} ({pipeline})")
            if kfp_host:
                _submit_kubeflow(
                    path, info["name"], values, tmp, kfp_host=kfp_host, namespace=namespace, experiment=experiment,
                    pipeline_root=pipeline_root, service_account=service_account, enable_caching=enable_caching,
                    dry_run=dry_run, wait=wait, timeout=timeout, poll_interval=poll_interval,
                )  # fmt: skip
                return
            job = _submit_vertex(
                path, project, region, pipeline_root, values, api_endpoint, enable_caching, service_account, dry_run,
                experiment=experiment,
            )  # fmt: skip
    except CauceError as error:
        _fail(str(error))
    if job is not None:
        # Plain print: the resource name is read by scripts and must not be wrapped.
        print(f"submitted: {job.resource_name}")


_VERTEX_EXPERIMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def _submit_vertex(
    path, project, region, pipeline_root, values, api_endpoint, enable_caching, service_account, dry_run, experiment=""
):
    """Create the Vertex PipelineJob (or print it for a dry run, returning None); with
    ``experiment`` the job is a run of that Vertex AI Experiment (created if missing), so
    its parameters and metrics compare side by side with the experiment's other runs."""
    from google.api_core.exceptions import GoogleAPICallError

    if experiment and not _VERTEX_EXPERIMENT.fullmatch(experiment):
        raise CauceError(
            f"--experiment {experiment!r} is not a Vertex AI experiment name: lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    try:
        job = _vertex_job(path, project, region, pipeline_root, values, api_endpoint, enable_caching, dry_run)
        if dry_run:
            from google.protobuf import json_format

            if service_account:
                job._gca_resource.service_account = service_account
            body = json_format.MessageToDict(job._gca_resource._pb)
            body.pop("pipelineSpec", None)
            console.print_json(json.dumps(body))
            if experiment:
                console.print(f"experiment: {experiment}")
            console.print("[yellow]dry run[/]: nothing submitted")
            return None
        job.submit(service_account=service_account or None, experiment=experiment or None)
    except ValueError as error:  # the Vertex SDK's checks: region, parameter names and types
        raise CauceError(f"cannot build the Vertex job: {error}") from None
    except GoogleAPICallError as error:
        raise CauceError(f"Vertex AI refused the job ({error.code}): {error.message}") from None
    except RuntimeError as error:  # the SDK wraps what the experiment's metadata calls raised
        cause = error.__cause__
        detail = getattr(cause, "message", None) or str(cause or "")
        raise CauceError(f"{error}{': ' + detail if detail else ''}") from None
    return job


def _submit_kubeflow(
    path, pipeline_name, values, tmp, *, kfp_host, namespace, experiment, pipeline_root, service_account,
    enable_caching, dry_run, wait, timeout, poll_interval,
):  # fmt: skip
    """Create the run on Kubeflow Pipelines; with ``wait``, follow it to its end."""
    from datetime import datetime, timezone

    from cauce import kubeflow

    kubeflow.check_namespace(namespace)
    run_name = f"{pipeline_name}-{datetime.now(timezone.utc).strftime('%Y%m%d%H%M%S')}"
    if dry_run:
        body = {
            "display_name": run_name,
            "experiment": experiment or "Default",
            "namespace": namespace,
            "runtime_config": {"parameters": values, "pipeline_root": pipeline_root},
            "service_account": service_account,
        }
        console.print_json(json.dumps({k: v for k, v in body.items() if v}))
        console.print("[yellow]dry run[/]: nothing submitted")
        return
    connection = kubeflow.connect(kfp_host, namespace)
    run = kubeflow.submit(
        connection, kubeflow.prepare_spec(path, enable_caching, tmp), values, run_name=run_name,
        experiment=experiment, namespace=namespace, pipeline_root=pipeline_root, service_account=service_account,
    )  # fmt: skip
    # Plain print: read by scripts, must not be wrapped.
    print(f"submitted: run {run.run_id} (experiment {run.experiment_id})")
    print(f"  {run.url}")
    if not wait:
        return
    final = kubeflow.wait(
        connection, run.run_id, timeout=timeout, poll_interval=poll_interval,
        on_state=lambda state: print(f"run {run.run_id}: {state}", flush=True),
    )  # fmt: skip
    state = final.state.upper()
    if not kubeflow.TERMINAL_STATES[state]:
        reason = kubeflow.run_error(final)
        raise CauceError(f"run {run.run_id} ended {state}" + (f": {reason}" if reason else "") + f" ({run.url})")


def _vertex_job(path, project, region, pipeline_root, values, api_endpoint, enable_caching, dry_run=False):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    init = {"project": project, "location": region}
    if api_endpoint:
        init.update(api_endpoint=api_endpoint, api_transport="rest")
    # A dry run sends nothing, and a plain-http endpoint is a local stand-in (tests,
    # emulators): neither needs credentials. A private https endpoint uses the
    # caller's Application Default Credentials like Google's own.
    if dry_run or api_endpoint.startswith("http://"):
        init["credentials"] = AnonymousCredentials()
    aiplatform.init(**init)
    import secrets

    import yaml

    # The SDK's default job id is the pipeline's name and the time to the second: two
    # submissions within a second would collide (409). A short random suffix keeps ids unique.
    name = yaml.safe_load(Path(path).read_text())["pipelineInfo"]["name"]
    job_id = f"{name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    return aiplatform.PipelineJob(
        display_name=Path(path).stem,
        job_id=job_id,
        template_path=str(path),
        pipeline_root=pipeline_root,
        parameter_values=values,
        enable_caching=enable_caching,
        project=project,
        location=region,
    )


@app.command()
def upload(
    specs: list[Path] = typer.Argument(None, help="compiled specs to upload (default: compile every pipeline now)"),
    host: str = typer.Option(..., help="KFP registry, e.g. https://us-central1-kfp.pkg.dev/PROJECT/REPOSITORY"),
    tag: list[str] = typer.Option([], "--tag", "-t", help="tag the upload (repeatable; default: the version and latest)"),
    registry_context: Path = typer.Option(
        None, exists=True, dir_okay=False, help="KFP registry context (JSON) for a registry other than Artifact Registry"
    ),
):
    """Upload compiled pipelines as templates to a KFP registry (Artifact Registry)."""
    import tempfile

    from cauce import registry, spec
    from cauce.pipelines import PIPELINES

    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not specs:  # compiled here, so checked here (`cauce compile` checks what it writes)
                specs = [spec.compile_pipeline(name, tmp) for name in sorted(PIPELINES)]
                for path in specs:
                    spec.validate_spec(path)
            uploaded = registry.upload(
                list(specs), host, tag or registry.DEFAULT_TAGS, str(registry_context) if registry_context else None
            )
    except CauceError as error:
        _fail(str(error))
    for result in uploaded:
        print(f"uploaded {result.spec} as {result.package} {result.version} tags {', '.join(result.tags)}")
        print(f"  template: {result.url}")


@app.command("export")
def export_(
    root: Path = typer.Option(
        Path("."), help="write components/<phase>/*.yaml, their README.md reference and docs/components.md under this folder"
    ),
    check: bool = typer.Option(False, help="write nothing; fail if the files under --root are missing or stale"),
    require_digests: bool = typer.Option(False, help="fail unless every image is named by digest"),
):
    """Export every component as a standalone YAML, the catalogue page, and each component
    folder's README reference (generated from the signatures and docstrings)."""
    from cauce import catalogue

    try:
        if check:
            stale = catalogue.stale_files(root)
            if stale:
                _fail(f"stale or missing: {', '.join(map(str, stale))}; regenerate them with `cauce export`")
            console.print(f"[green]up to date[/]: the component YAMLs, their READMEs and {catalogue.CATALOGUE_PAGE}")
            return
        written = catalogue.export(root, require_digests)
    except CauceError as error:
        _fail(str(error))
    for path in written:
        print(f"wrote {path}")


@app.command()
def images(
    sizes: bool = typer.Option(
        False, help="estimate each image's size from this environment and check it against containers/size-budgets.txt"
    ),
):
    """List the image of each dependency family (and check their size budgets)."""
    from cauce import families
    from cauce.images import image_for

    table = Table(title="cauce images")
    for column in ("family", "image", "used by") + (("estimate", "budget") if sizes else ()):
        table.add_column(column, justify="right" if column in ("estimate", "budget") else "left", overflow="fold")
    problems = []
    budgets = families.budgets() if sizes else {}
    for name, family in families.FAMILIES.items():
        row = [name, image_for(name), family.purpose]
        if sizes:
            try:
                result = families.estimate(name)
            except CauceError as error:
                problems.append(f"{name}: {error}")
                row += ["?", f"{budgets.get(name, '?')} MiB"]
            else:
                budget = budgets.get(name)
                problem = "no budget" if budget is None else families.over_budget(result, budget)
                if problem:
                    problems.append(f"{name}: {problem}")
                mark = "[red]" if problem else "[green]"
                row += [f"{mark}{result.mib} MiB[/]", f"{budget} MiB" if budget else "—"]
        table.add_row(*row)
    console.print(table)
    if problems:
        _fail("\n".join(problems))


# --------------------------------------------------------------------------- serving
@app.command()
def serve(
    model_dir: str = typer.Option("", help="model directory or gs:// URI (default: $AIP_STORAGE_URI)"),
    host: str = typer.Option("", help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(0, help="port (default $AIP_HTTP_PORT or 8080)"),
    request_log_dir: str = typer.Option("", help="write request logs (JSONL) here"),
):
    """Serve a model with the Vertex serving contract (what the serving image runs)."""
    from cauce.serving.server import serve as serve_model

    serve_model(model_dir, host, port, request_log_dir=request_log_dir)


@app.command()
def stop(endpoint_name: str = typer.Argument("", help="local endpoint to stop (default: every local endpoint)")):
    """Stop a local serving process started by a deploy step (all of them without a name)."""
    from cauce.components.deploy.executor import stop_local
    from cauce.paths import cauce_home

    names = [endpoint_name] if endpoint_name else sorted(
        p.name for p in (cauce_home() / "serving").glob("*") if (p / "state.json").exists()
    )
    try:
        stopped = [name for name in names if stop_local(name)]
    except CauceError as error:
        _fail(str(error))
    if stopped:
        console.print(f"stopped {', '.join(stopped)}")
    else:
        console.print(f"no local endpoint {endpoint_name!r} running" if endpoint_name else "no local endpoint running")


if __name__ == "__main__":
    app()
