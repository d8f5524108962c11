"""Start a run of the training pipeline (the monitoring pipeline runs this step when it
flags drift and ``retrain_on_drift`` is set: the decision is a ``dsl.If`` in its graph).

On Google Cloud (``target="google-cloud"``) the compiled training spec — a local file, a ``gs://``
object or an Artifact Registry template URL (``https://REGION-kfp.pkg.dev/...``) —
is submitted as a PipelineJob with the real SDK. Locally the same spec runs under
kfp.local in a detached process (like a submitted job, the monitoring run does
not wait for it); its log goes to ``$CAUCE_HOME/runs``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.paths import cauce_home
from cauce.targets import on_google_cloud

TRIGGER_PARAMETER = "trigger"  # the training pipeline's parameter lineage records the trigger from


def drift_trigger(report_uri: str, metadata: dict | None = None, monitoring_run: str = "") -> dict:
    """Why the training run starts, as its lineage records it: the drift report (its URI
    and the flagged features and counts its artifact's metadata carries) and the
    monitoring run that found it."""
    metadata = dict(metadata or {})
    trigger = {
        "reason": "drift",
        "drift_report_uri": report_uri,
        "drifted_features": list(metadata.get("drifted_features") or []),
        "skew_detected": bool(metadata.get("skew_detected")),
        "window_drift_detected": bool(metadata.get("window_drift_detected")),
        "serving_rows": metadata.get("serving_rows"),
        "monitoring_run": monitoring_run,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return {key: value for key, value in trigger.items() if value is not None}  # KFP parameters carry no None


def _declares(spec: dict, parameter: str) -> bool:
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    return parameter in declared


def _load_spec(training_spec: str, project: str = "") -> dict:
    """The compiled spec as a dict: a local file, ``gs://`` or an Artifact Registry URL
    (read as the SDK reads a template)."""
    if Path(training_spec).is_file():
        import yaml

        return yaml.safe_load(Path(training_spec).read_text()) or {}
    from google.cloud.aiplatform.utils import yaml_utils

    return yaml_utils.load_yaml(training_spec, project or None)


def start_training_run(
    training_spec: str,
    parameter_values: dict | None = None,
    target: str = "local",
    project: str = "",
    vertex_region: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    vertex_api_endpoint: str = "",
    trigger: dict | None = None,
) -> str:
    """The started run (Vertex job resource name, or ``local:<pid>:<log>``): a Vertex AI
    PipelineJob for ``target="google-cloud"``, a detached kfp.local run for ``"local"``.

    ``trigger`` (see :func:`drift_trigger`) becomes the run's ``trigger`` parameter when
    the spec declares one (cauce's training pipeline does; its lineage records it) and
    ``parameter_values`` do not set it already."""
    if not training_spec:
        raise CauceError("training_spec is empty: give the compiled training pipeline (retrain_on_drift is set)")
    parameter_values = dict(parameter_values or {})
    if trigger and TRIGGER_PARAMETER not in parameter_values:
        if not on_google_cloud(target, project) and not Path(training_spec).is_file():
            raise CauceError(f"training_spec {training_spec!r} is not a file: locally it must be a compiled pipeline YAML")
        if _declares(_load_spec(training_spec, project), TRIGGER_PARAMETER):
            parameter_values[TRIGGER_PARAMETER] = trigger
    if on_google_cloud(target, project):
        return _submit_to_vertex(
            training_spec, parameter_values, project, vertex_region, pipeline_root, service_account,
            vertex_api_endpoint,
        )
    if not Path(training_spec).is_file():
        raise CauceError(f"training_spec {training_spec!r} is not a file: locally it must be a compiled pipeline YAML")
    return _start_locally(training_spec, parameter_values)


def _submit_to_vertex(spec, values, project, location, pipeline_root, service_account, api_endpoint) -> str:
    if not pipeline_root.startswith("gs://"):
        raise CauceError(f"pipeline_root {pipeline_root!r} must be a gs:// folder to submit to Vertex AI")
    from cauce.components.register.executor import init_vertex

    aiplatform = init_vertex(project, location, api_endpoint)
    job = aiplatform.PipelineJob(
        display_name="cauce-retraining",
        template_path=spec,
        pipeline_root=pipeline_root,
        parameter_values=values,
        project=project,
        location=location,
        labels={"cauce-trigger": "drift"},
    )
    job.submit(service_account=service_account or None)
    return job.resource_name


def _start_locally(spec: str, values: dict) -> str:
    runs = cauce_home() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / f"retraining-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S-%f}.log"
    # Started from inside a KFP step, whose _KFP_RUNTIME=true makes `import kfp` load only
    # the runtime part of the SDK: the run needs the whole SDK (kfp.local, the compiler).
    environment = {key: value for key, value in os.environ.items() if key != "_KFP_RUNTIME"}
    with open(log, "ab") as handle:
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", "cauce.components.retrain.executor", spec, json.dumps(values)],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=environment,
        )
    return f"local:{process.pid}:{log}"


def _main() -> None:
    """Entry point of the detached local run."""
    from cauce.local import run_spec

    spec, values = sys.argv[1], json.loads(sys.argv[2])
    run = run_spec(spec, values)
    print(f"retraining run finished: {run.run_dir} in {run.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    _main()
