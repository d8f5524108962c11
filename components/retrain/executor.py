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
import subprocess
import sys
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.paths import cauce_home
from cauce.targets import on_google_cloud


def start_training_run(
    training_spec: str,
    parameter_values: dict | None = None,
    target: str = "local",
    project: str = "",
    vertex_region: str = "us-central1",
    pipeline_root: str = "",
    service_account: str = "",
    vertex_api_endpoint: str = "",
) -> str:
    """The started run (Vertex job resource name, or ``local:<pid>:<log>``): a Vertex AI
    PipelineJob for ``target="google-cloud"``, a detached kfp.local run for ``"local"``."""
    if not training_spec:
        raise CauceError("training_spec is empty: give the compiled training pipeline (retrain_on_drift is set)")
    parameter_values = dict(parameter_values or {})
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
    with open(log, "ab") as handle:
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", "cauce.components.retrain.executor", spec, json.dumps(values)],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
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
