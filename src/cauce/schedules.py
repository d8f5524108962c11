"""Run a pipeline on a schedule: Vertex AI pipeline schedules (the SDK's
``PipelineJobSchedule``) on Google Cloud; locally the crontab line that runs
`cauce run` (cauce has no scheduler of its own).

Everything is checked before anything is created: the cron expression as Vertex reads
it (five fields, optionally after ``TZ=`` or ``CRON_TZ=`` and a time zone) and the
pipeline's required parameters.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any
from zoneinfo import available_timezones

from cauce.artifacts import CauceError

# field -> (lowest, highest, names)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
_TZ_PREFIX = re.compile(r"(?:CRON_TZ|TZ)=(\S+)\s+(.*)", re.DOTALL)


def check_cron(expression: str) -> None:
    """Refuse what Vertex's scheduler refuses: not five fields, values out of range,
    malformed ranges or steps, an unknown time zone. Names the field and what it allows."""
    text = (expression or "").strip()
    match = _TZ_PREFIX.fullmatch(text)
    if match:
        zone, text = match[1], match[2].strip()
        if zone not in available_timezones():
            raise CauceError(f"cron {expression!r}: unknown time zone {zone!r} (an IANA name such as America/New_York)")
    fields = text.split()
    if len(fields) != 5:
        raise CauceError(
            f"cron {expression!r} has {len(fields)} fields; Vertex AI schedules take five: "
            "minute hour day-of-month month day-of-week, e.g. '0 3 * * *' (03:00 every day), "
            "optionally after TZ=Area/City"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS):
        for part in value.split(","):
            _check_part(expression, name, part, low, high, names)


def _check_part(expression: str, name: str, part: str, low: int, high: int, names: dict[str, int]) -> None:
    def number(token: str) -> int:
        token_upper = token.upper()
        if token_upper in names:
            return names[token_upper]
        if not token.isdigit() or not low <= int(token) <= high:
            raise CauceError(f"cron {expression!r}: {name} {token!r} is not a value in {low}-{high}")
        return int(token)

    base, _, step = part.partition("/")
    if "/" in part and (not step.isdigit() or int(step) < 1):
        raise CauceError(f"cron {expression!r}: {name} step {step!r} must be a whole number of at least 1")
    if base == "*":
        return
    start, dash, end = base.partition("-")
    if not start:
        raise CauceError(f"cron {expression!r}: {name} {part!r} is empty or malformed")
    first = number(start)
    if dash and number(end) < first:
        raise CauceError(f"cron {expression!r}: {name} range {base!r} runs backwards")


def required_missing(pipeline: str, values: dict[str, Any]) -> list[str]:
    """The pipeline's parameters that have no default and are not in ``values``."""
    from cauce import spec

    declared = spec.get_pipeline(pipeline).component_spec.inputs or {}
    return [name for name, info in declared.items() if info.default is None and not info.optional and name not in values]


def check_request(pipeline: str, cron: str, values: dict[str, Any]) -> None:
    check_cron(cron)
    missing = required_missing(pipeline, values)
    if missing:
        raise CauceError(
            f"pipeline {pipeline!r} needs values for its required parameters: "
            + " ".join(f"--param {name}=..." for name in missing)
        )


def crontab_line(pipeline: str, cron: str, params: list[str], cauce_home: str = "") -> str:
    """The crontab entry that runs ``cauce run PIPELINE --param ...`` on ``cron``, with
    this interpreter's `cauce` (cron's environment has no virtualenv)."""
    prefix, body = "", cron.strip()
    match = _TZ_PREFIX.fullmatch(body)
    if match:  # cron(8) takes the zone as a CRON_TZ line of its own
        prefix, body = f"CRON_TZ={match[1]}\n", match[2].strip()
    command = [sys.executable, "-m", "cauce.cli", "run", pipeline]
    for param in params:
        command += ["--param", param]
    environment = f"CAUCE_HOME={shlex.quote(cauce_home)} " if cauce_home else ""
    # '%' ends a crontab command unless escaped.
    line = f"{body} {environment}{shlex.join(command)}".replace("%", "\\%")
    return f"{prefix}{line}"


# -- Vertex AI -------------------------------------------------------------------------------


def _init(project: str, region: str, api_endpoint: str = "", credentials: Any = None) -> Any:
    from cauce.components.register.executor import init_vertex

    return init_vertex(project, region, api_endpoint, credentials)


def create_vertex_schedule(
    spec_path: str, display_name: str, cron: str, values: dict[str, Any], project: str, region: str,
    pipeline_root: str, service_account: str = "", api_endpoint: str = "", max_concurrent_run_count: int = 1,
    credentials: Any = None,
) -> Any:  # fmt: skip
    """Create a Vertex AI pipeline schedule that runs the compiled spec with ``values``."""
    if not pipeline_root.startswith("gs://"):
        raise CauceError(f"--pipeline-root must be a gs:// folder, got {pipeline_root!r}")
    aiplatform = _init(project, region, api_endpoint, credentials)
    job = aiplatform.PipelineJob(
        display_name=display_name, template_path=str(spec_path), pipeline_root=pipeline_root,
        parameter_values=values, project=project, location=region,
    )  # fmt: skip
    schedule = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name)
    schedule.create(
        cron=cron, max_concurrent_run_count=max_concurrent_run_count, service_account=service_account or None,
    )  # fmt: skip
    return schedule


def list_vertex_schedules(project: str, region: str, api_endpoint: str = "", credentials: Any = None) -> list[Any]:
    aiplatform = _init(project, region, api_endpoint, credentials)
    return list(aiplatform.PipelineJobSchedule.list())


def vertex_schedule(name: str, project: str, region: str, api_endpoint: str = "", credentials: Any = None) -> Any:
    """A schedule by resource name, id or display name (which must then be unique)."""
    from google.api_core import exceptions

    aiplatform = _init(project, region, api_endpoint, credentials)
    if name.isdigit() or name.startswith("projects/"):
        try:
            return aiplatform.PipelineJobSchedule.get(name)
        except exceptions.NotFound:
            raise CauceError(f"no pipeline schedule {name!r} in {project}/{region}") from None
    found = [s for s in aiplatform.PipelineJobSchedule.list() if s.display_name == name]
    if not found:
        raise CauceError(f"no pipeline schedule named {name!r} in {project}/{region}; see `cauce schedule list`")
    if len(found) > 1:
        raise CauceError(f"{len(found)} schedules are named {name!r}: give its id ({', '.join(s.name for s in found)})")
    return found[0]
