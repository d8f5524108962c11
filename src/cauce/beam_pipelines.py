"""One way to build a Beam pipeline for every cauce phase that uses Beam.

``runner="DirectRunner"`` runs on Beam's FnApiRunner in this process. Naming
"DirectRunner" to Beam 2.77 is not enough: it first tries to download and start
the Prism runner (fails offline; on Google Cloud it would fetch a binary at run
time) and only then falls back to the FnApiRunner, which is what we want.
Any other runner (``DataflowRunner``) is passed through with its options.
"""

from __future__ import annotations


def pipeline_flags(options: dict | None) -> list[str]:
    """``{"max_num_workers": 10, "use_public_ips": False}`` -> Beam command-line flags."""
    flags = []
    for key, value in (options or {}).items():
        if isinstance(value, bool):
            if value:
                flags.append(f"--{key}")
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


def run_pipeline(build, runner: str = "DirectRunner", options: dict | None = None) -> None:
    """Build (``build(pipeline)``) and run a pipeline; a CauceError raised in a worker
    comes back as a CauceError, not wrapped in Beam's own exception."""
    from cauce.artifacts import CauceError

    try:
        with make_pipeline(runner, options) as pipeline:
            build(pipeline)
    except CauceError:
        raise
    except Exception as error:  # Beam re-raises worker errors wrapped; find ours
        cause = error
        while cause is not None:
            if isinstance(cause, CauceError):
                raise CauceError(str(cause)) from error
            cause = cause.__cause__ or cause.__context__
        message = str(error)
        if "CauceError" in message:
            raise CauceError(message.split("CauceError:")[-1].strip().splitlines()[0]) from error
        raise
