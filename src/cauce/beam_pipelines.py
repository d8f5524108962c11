"""One way to build and run a Beam pipeline for every cauce phase that uses Beam.

``runner="DirectRunner"`` runs on Beam's FnApiRunner in this process. Naming
"DirectRunner" to Beam 2.77 is not enough: it first tries to download and start
the Prism runner (fails offline; on Google Cloud it would fetch a binary at run
time) and only then falls back to the FnApiRunner, which is what we want.

Any other runner (``DataflowRunner``) is passed through with its options, built
for Dataflow by ``dataflow_options`` from a component's ``dataflow`` dict
(``runner_options``: the one Dataflow options object of transform and batch
prediction). ``run_pipeline`` then submits the job,
logs its id and console URL, waits for it, and cancels it if the step is
stopped (SIGTERM from Vertex/Kubeflow, Ctrl-C, any error while waiting): a job
must never keep running, and billing, after the step that launched it is gone.
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)

DATAFLOW_RUNNER = "DataflowRunner"

# Beam flags that say False with a flag of their own (Beam's _FLAG_THAT_SETS_FALSE_VALUE).
_FALSE_FLAGS = {"use_public_ips": "no_use_public_ips", "save_main_session": "no_save_main_session"}


def pipeline_flags(options: dict | None) -> list[str]:
    """``{"max_num_workers": 10, "use_public_ips": False}`` -> Beam command-line flags."""
    flags = []
    for key, value in (options or {}).items():
        if isinstance(value, bool):
            if value:
                flags.append(f"--{key}")
            elif key in _FALSE_FLAGS:
                flags.append(f"--{_FALSE_FLAGS[key]}")
        elif isinstance(value, list):
            flags += [f"--{key}={item}" for item in value]
        elif isinstance(value, float) and value.is_integer():
            flags.append(f"--{key}={int(value)}")  # KFP delivers dict numbers as floats
        else:
            flags.append(f"--{key}={value}")
    return flags


def make_pipeline(runner: str = "DirectRunner", options: dict | None = None):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = dict(options or {})
    options.pop("runner", None)  # the runner parameter is the one source of truth
    if runner == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        options.setdefault("direct_num_workers", 1)
        return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(pipeline_flags(options)))
    return beam.Pipeline(options=PipelineOptions([f"--runner={runner}", *pipeline_flags(options)]))


def run_pipeline(build, runner: str = "DirectRunner", options: dict | None = None, *, poll_seconds: float = 10.0) -> None:
    """Build (``build(pipeline)``) and run a pipeline until it finishes.

    A CauceError raised in a worker comes back as a CauceError, not wrapped in
    Beam's own exception. On any runner but the DirectRunner the job is
    submitted, then polled every ``poll_seconds``; it is cancelled if this
    process is told to stop (SIGTERM, KeyboardInterrupt) or anything fails
    while waiting, and a job that ends FAILED or CANCELLED is a CauceError
    naming the job and its state.
    """
    from cauce.artifacts import CauceError, Terminated

    try:
        if runner == "DirectRunner":
            with make_pipeline(runner, options) as pipeline:
                build(pipeline)
        else:
            _submit_and_wait(build, runner, options, poll_seconds)
    except CauceError:
        raise
    except Exception as error:  # Beam re-raises worker errors wrapped; find ours
        cause = error
        while cause is not None:
            if isinstance(cause, CauceError):
                raise CauceError(str(cause)) from error
            if isinstance(cause, Terminated):  # SIGTERM inside a DoFn: Beam wraps it in a RuntimeError
                raise Terminated() from None
            cause = cause.__cause__ or cause.__context__
        message = str(error)
        if "cauce.artifacts.Terminated" in message:
            raise Terminated() from None
        if "CauceError" in message:
            raise CauceError(_cauce_message(message)) from error
        raise


def _cauce_message(text: str) -> str:
    """The first line of the CauceError message inside a worker traceback."""
    return text.split("CauceError:")[-1].strip().splitlines()[0]


# -- Dataflow options -------------------------------------------------------------------

# Google Cloud project ids: 6-30 characters, lowercase letters, digits and hyphens,
# starting with a letter and not ending with a hyphen; legacy ones may carry a
# domain prefix ("example.com:my-project").
_PROJECT_ID = re.compile(r"(?:[a-z0-9.-]+\.[a-z]{2,}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
# Compute Engine regions: us-central1, europe-west4, northamerica-northeast2, ...
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]{1,2}")
# gs://bucket[/path]: bucket names 3-222 characters of lowercase letters, digits, - _ .
_GCS_PATH = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](?:/\S*)?")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Compute Engine machine types: n1-standard-4, e2-highmem-8, n2-custom-4-8192, ...
_MACHINE_TYPE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+")
# A container image reference (Docker's distribution grammar): [host[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# Dataflow job names: lowercase letters, digits and hyphens, starting with a letter,
# not ending with a hyphen; we keep them within the 63 characters Beam itself uses.
_JOB_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
# Network and subnetwork: a name, or a (partial or full) resource path/URL.
_NETWORK = re.compile(r"(?:https://www\.googleapis\.com/compute/v1/)?(?:[\w.:-]+/)*[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
# Google Cloud labels: keys start with a lowercase letter; keys and values hold up to
# 63 lowercase letters, digits, '_' and '-'.
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# Pipeline options are sent to the service and shown in the Dataflow console: a key
# that sounds like a secret has no place there (Beam authenticates from the
# environment: the worker's service account, application default credentials).
_SECRET_KEY = re.compile(r"credential|token|secret|password|private_key|key_file", re.IGNORECASE)


def default_job_name(prefix: str = "cauce") -> str:
    """``<prefix>-YYYYMMDD-HHMMSS-<8 hex>``: unique per call, a valid Dataflow job name."""
    from cauce.artifacts import CauceError

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(4)}"
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[: 63 - len(suffix)].rstrip("-")
    if not base or not base[0].isalpha():
        raise CauceError(f"job_name_prefix {prefix!r} must start with a letter (a Dataflow job name does)")
    return base + suffix


def dataflow_options(
    project: str,
    region: str,
    temp_location: str,
    staging_location: str = "",
    service_account_email: str = "",
    machine_type: str = "",
    max_num_workers: int = 0,
    sdk_container_image: str = "",
    job_name: str = "",
    job_name_prefix: str = "cauce",
    network: str = "",
    subnetwork: str = "",
    use_public_ips: bool | None = None,
    labels: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Checked Beam options to run a cauce pipeline on Dataflow (``runner="DataflowRunner"``).

    The workers run our Beam image (``cauce.images`` "beam" family, honouring
    ``CAUCE_IMAGE_BEAM``) unless ``sdk_container_image`` names another; that image
    already holds cauce and Beam, so no SDK tarball is staged
    (``sdk_location=container``). Runner v2. An empty ``job_name`` gets a unique
    one from ``job_name_prefix``; ``max_num_workers=0`` and empty strings leave
    Dataflow's defaults. ``extra`` adds any other Beam option (it cannot
    override the ones above, and must not carry credentials: Beam authenticates
    from the environment). Each bad value is a CauceError naming the parameter.
    """
    from cauce.artifacts import CauceError
    from cauce.images import image_for

    def check(name: str, value, pattern: re.Pattern, expected: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise CauceError(f"{name} {value!r} is not valid: expected {expected}")

    check("project", project, _PROJECT_ID, "a Google Cloud project id like 'acme-ml' (6-30 lowercase letters, digits, '-')")
    check("region", region, _REGION, "a Dataflow region like 'us-central1'")
    check("temp_location", temp_location, _GCS_PATH, "a Cloud Storage path like 'gs://bucket/tmp'")
    if staging_location:
        check("staging_location", staging_location, _GCS_PATH, "a Cloud Storage path like 'gs://bucket/staging'")
    if service_account_email:
        check("service_account_email", service_account_email, _EMAIL, "an e-mail like 'beam@acme-ml.iam.gserviceaccount.com'")
    if machine_type:
        check("machine_type", machine_type, _MACHINE_TYPE, "a Compute Engine machine type like 'n2-standard-4'")
    if isinstance(max_num_workers, float) and max_num_workers.is_integer():
        max_num_workers = int(max_num_workers)  # KFP delivers dict numbers as floats
    if isinstance(max_num_workers, bool) or not isinstance(max_num_workers, int) or max_num_workers < 0:
        raise CauceError(f"max_num_workers {max_num_workers!r} is not valid: expected a whole number >= 0 (0: Dataflow decides)")
    image = sdk_container_image or image_for("beam")
    check("sdk_container_image", image, _IMAGE, "a container image like 'us-docker.pkg.dev/acme/cauce/cauce-beam:1.0'")
    job_name = job_name or default_job_name(job_name_prefix)
    check("job_name", job_name, _JOB_NAME, "a Dataflow job name: lowercase letters, digits and '-', starting with a letter, at most 63 characters")
    if network:
        check("network", network, _NETWORK, "a VPC network name or resource path")
    if subnetwork:
        check("subnetwork", subnetwork, _NETWORK, "a subnetwork like 'regions/us-central1/subnetworks/beam' or its full URL")
    if use_public_ips is not None and not isinstance(use_public_ips, bool):
        raise CauceError(f"use_public_ips {use_public_ips!r} is not valid: expected true, false or unset")
    label_flags = []
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
            raise CauceError(
                f"labels entry {key!r}: {value!r} is not valid: keys start with a lowercase letter, keys and values "
                "hold up to 63 lowercase letters, digits, '_' and '-'"
            )
        label_flags.append(f"{key}={value}")

    options = {
        "project": project,
        "region": region,
        "temp_location": temp_location,
        "job_name": job_name,
        "sdk_container_image": image,
        # The image has cauce and Beam installed: staging Beam's SDK tarball would
        # only make every worker reinstall it.
        "sdk_location": "container",
        # The submitting process runs the same image as the workers, so Beam's
        # `pip freeze` of it (seconds per submission) would tell nothing new.
        "experiments": ["use_runner_v2", "disable_logging_submission_environment"],
    }
    optional = {
        "staging_location": staging_location,
        "service_account_email": service_account_email,
        "machine_type": machine_type,
        "max_num_workers": max_num_workers,
        "network": network,
        "subnetwork": subnetwork,
        "labels": label_flags,
    }
    options.update({key: value for key, value in optional.items() if value})
    if use_public_ips is not None:
        options["use_public_ips"] = use_public_ips
    for key, value in (extra or {}).items():
        if _SECRET_KEY.search(key):
            raise CauceError(
                f"extra option {key!r} looks like a credential: pipeline options are sent to Dataflow and shown in "
                "its console; Beam takes credentials from the environment (service account, application default credentials)"
            )
        if key in options or key == "runner":
            raise CauceError(f"extra option {key!r} is set by its own parameter of dataflow_options; pass it there")
        options[key] = value
    return options


# The fields of a component's ``dataflow`` parameter: dataflow_options's own, by Beam's
# names; project comes from the component's ``project``, other Beam options from
# ``pipeline_options``.
DATAFLOW_FIELDS = (
    "region",
    "temp_location",
    "staging_location",
    "service_account_email",
    "machine_type",
    "max_num_workers",
    "network",
    "subnetwork",
    "use_public_ips",
    "sdk_container_image",
    "labels",
    "job_name",
)
_REQUIRED_DATAFLOW_FIELDS = ("region", "temp_location")


def check_dataflow(dataflow: dict | None) -> dict:
    """A component's ``dataflow`` parameter, its keys checked (on every runner, so a typo
    shows before any job): a copy holding only ``DATAFLOW_FIELDS``."""
    from cauce.artifacts import CauceError

    if dataflow is None:
        return {}
    if not isinstance(dataflow, dict):
        raise CauceError(f"dataflow must be a dict of Dataflow options, got {type(dataflow).__name__}")
    unknown = sorted(set(dataflow) - set(DATAFLOW_FIELDS))
    if unknown:
        raise CauceError(
            f"dataflow has unknown option(s) {unknown}: it takes {list(DATAFLOW_FIELDS)}; "
            "put any other Beam option in pipeline_options"
        )
    return dict(dataflow)


def runner_options(
    runner: str,
    pipeline_options: dict | None,
    *,
    job_name_prefix: str,
    project: str = "",
    dataflow: dict | None = None,
    beam_image: str = "",
) -> dict:
    """The Beam options of a component's step, the one mapping every Beam component's
    parameters go through: ``pipeline_options`` as they are for the DirectRunner; for
    Dataflow, ``dataflow_options`` of ``project`` and the ``dataflow`` dict (its fields
    are ``DATAFLOW_FIELDS``; ``region`` and ``temp_location`` required), with
    ``pipeline_options`` as its extra options. Workers run ``dataflow["sdk_container_image"]``,
    else ``beam_image`` (the image the pipeline was compiled with), else the release's."""
    from cauce.artifacts import CauceError

    fields = check_dataflow(dataflow)
    if runner != DATAFLOW_RUNNER:
        return dict(pipeline_options or {})
    missing = [name for name in _REQUIRED_DATAFLOW_FIELDS if not fields.get(name)]
    if missing:
        raise CauceError(
            f"runner={DATAFLOW_RUNNER} needs dataflow {missing}, e.g. "
            '{"region": "us-central1", "temp_location": "gs://bucket/tmp"}'
        )
    if beam_image:
        fields.setdefault("sdk_container_image", beam_image)
    return dataflow_options(project=project, **fields, job_name_prefix=job_name_prefix, extra=pipeline_options)


# -- Submitting and waiting ---------------------------------------------------------------


class StepTerminated(BaseException):
    """SIGTERM arrived while a job ran. A BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` (Beam's retries) on the way up swallows it."""


class _CancelOnTermination:
    """SIGTERM handling around a remote job (installed from the main thread only:
    Python delivers signals there).

    While the job is being submitted a SIGTERM is only noted: interrupting the
    create call could leave a job running whose id we never learn. Once the job
    has an id (``arm``) a SIGTERM raises StepTerminated at once, and only once, so
    that the cancel request itself is not interrupted. The previous handler is
    restored on exit.
    """

    def __init__(self) -> None:
        self.signalled = False
        self._armed = False
        self._installed = False
        self._previous = None

    def __enter__(self) -> _CancelOnTermination:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, signum, frame) -> None:
        self.signalled = True
        if self._armed:
            self._armed = False
            raise StepTerminated()
        log.warning("SIGTERM received; the job is cancelled as soon as it is submitted")

    def arm(self) -> None:
        if self.signalled:
            raise StepTerminated()
        self._armed = True

    def disarm(self) -> None:
        self._armed = False


def _submit_and_wait(build, runner: str, options: dict | None, poll_seconds: float) -> None:
    from apache_beam.runners.runner import PipelineState

    from cauce.artifacts import CauceError

    options = dict(options or {})
    options["no_wait_until_finish"] = True  # the `with` block submits; we wait below
    with _CancelOnTermination() as termination:
        try:
            with make_pipeline(runner, options) as pipeline:
                build(pipeline)
        except Exception as error:
            # Dataflow keeps a job name unique among the project's running jobs.
            if type(error).__name__ == "DataflowJobAlreadyExistsError":
                raise CauceError(f"job_name {options.get('job_name')!r} is taken: {error}") from error
            raise
        result = pipeline.result
        if getattr(result, "has_job", True) is False:  # e.g. template_location: a template was written, no job runs
            log.info("%s submitted no job (template only)", runner)
            return
        job = _job_description(result, runner, options)
        log.info("%s job %s submitted%s", runner, job.id, f": {job.url}" if job.url else "")
        try:
            termination.arm()
            state = _wait(result, job, poll_seconds)
        except BaseException as interruption:
            termination.disarm()
            why = "SIGTERM (step cancelled)" if isinstance(interruption, StepTerminated) else type(interruption).__name__
            _cancel(result, job, why)
            if isinstance(interruption, StepTerminated):
                raise CauceError(f"the step was stopped (SIGTERM): {runner} job {job.id} cancelled") from None
            raise
    if state != PipelineState.DONE:
        detail = _job_error(pipeline, job)
        raise CauceError(
            f"{runner} job {job.id} ended {state}" + (f": {detail}" if detail else "") + (f" ({job.url})" if job.url else "")
        )
    log.info("%s job %s finished: %s", runner, job.id, state)


class _Job:
    def __init__(self, job_id: str, url: str) -> None:
        self.id = job_id
        self.url = url


def _job_description(result, runner: str, options: dict) -> _Job:
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) else "?"
    url = ""
    if runner == DATAFLOW_RUNNER:
        url = (
            f"https://console.cloud.google.com/dataflow/jobs/{options.get('region', '')}/{job_id}"
            f"?project={options.get('project', '')}"
        )
    return _Job(job_id, url)


def _wait(result, job: _Job, poll_seconds: float) -> str:
    """Poll the job's state (one jobs.get each) until it ends; return that state."""
    from apache_beam.runners.runner import PipelineState

    last = None
    while True:
        state = result.state
        if state != last:
            log.info("job %s: %s", job.id, state)
            last = state
        if PipelineState.is_terminal(state):
            return state
        time.sleep(poll_seconds)


def _cancel(result, job: _Job, why: str) -> None:
    log.warning("cancelling job %s: %s", job.id, why)
    try:
        state = result.cancel()
        log.warning("job %s cancel requested (state %s)", job.id, state)
    except Exception as error:  # noqa: BLE001 - say what to do; the interruption is raised after
        log.error("could not cancel job %s (%s): cancel it by hand%s", job.id, error, f" at {job.url}" if job.url else "")


def _job_error(pipeline, job: _Job) -> str:
    """The job's most telling error message (a worker traceback first, our CauceError
    line if there is one), or ''."""
    client = getattr(pipeline.runner, "dataflow_client", None)
    if client is None:
        return ""
    try:
        messages, _ = client.list_messages(job.id, minimum_importance="JOB_MESSAGE_ERROR")
    except Exception as error:  # noqa: BLE001 - the state alone still says the job failed
        log.warning("could not read the error messages of job %s: %s", job.id, error)
        return ""
    texts = [message.message_text for message in messages if message.message_text]
    for text in texts:
        if "CauceError:" in text:
            return _cauce_message(text)
    tracebacks = [text for text in texts if "Traceback" in text]
    chosen = (tracebacks or texts or [""])[-1].strip()
    return chosen if len(chosen) <= 2000 else "..." + chosen[-2000:]


def work_uri(runner: str, dataflow: dict | None, prefix: str) -> str:
    """Where a step's Beam pipeline writes its partial results for the step to read back:
    a fresh folder under the Dataflow ``temp_location`` (gs://) on Dataflow; empty on the
    DirectRunner (the step then uses a temporary local folder)."""
    if runner != DATAFLOW_RUNNER:
        return ""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{(dataflow or {})['temp_location'].rstrip('/')}/{prefix}-{stamp}-{secrets.token_hex(4)}"
