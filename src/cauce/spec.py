"""Compile pipelines to KFP pipeline-spec YAML, check specs strictly offline,
and turn ``k=v`` strings into typed pipeline parameters."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cauce.artifacts import CauceError


def get_pipeline(name: str):
    from cauce.pipelines import PIPELINES

    if name not in PIPELINES:
        raise CauceError(f"unknown pipeline {name!r}; available: {sorted(PIPELINES)}")
    return PIPELINES[name]


def compile_pipeline(name: str, output_dir: str | Path) -> Path:
    """Compile pipeline ``name`` to ``output_dir/<name>.yaml`` and return the path."""
    from kfp import compiler

    output = Path(output_dir) / f"{name}.yaml"
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(get_pipeline(name), str(output))
    return output


def validate_spec(path: str | Path) -> dict:
    """Check a compiled spec the way Vertex will read it, without any network.

    * exactly one YAML document (a kfp.kubernetes platform spec adds a second,
      which Vertex's PipelineJob refuses);
    * the document parses into ``PipelineSpec`` and its ``deploymentSpec`` into
      ``PipelineDeploymentConfig`` with unknown fields rejected;
    * ``aiplatform.PipelineJob`` builds from it (parameter names and types).

    Returns a short description (name, parameters, tasks, images).
    """
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        text = Path(path).read_text()
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CauceError(f"{path} is not a pipeline spec: it does not read as YAML text ({reason})") from None
    if len(documents) == 1 and not isinstance(documents[0], dict):
        raise CauceError(f"{path} is not a pipeline spec: expected a YAML mapping, got {type(documents[0]).__name__}")
    if len(documents) != 1:
        raise CauceError(
            f"{path} holds {len(documents)} YAML documents; Vertex accepts exactly one "
            "(keep kfp.kubernetes platform settings out of Vertex specs)"
        )
    document = documents[0]
    spec = pipeline_spec_pb2.PipelineSpec()
    try:
        json_format.ParseDict(document, spec, ignore_unknown_fields=False)
        deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
        json_format.ParseDict(document.get("deploymentSpec", {}), deployment, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise CauceError(f"{path} is not a valid pipeline spec: {error}") from None
    if not spec.pipeline_info.name:
        raise CauceError(f"{path} has no pipelineInfo.name")
    for executor_name, executor in deployment.executors.items():
        if executor.HasField("container") and not executor.container.image:
            raise CauceError(f"executor {executor_name!r} in {path} names no container image")
    _build_vertex_job(path)
    parameters = {
        name: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(p.parameter_type)
        for name, p in spec.root.input_definitions.parameters.items()
    }
    return {
        "name": spec.pipeline_info.name,
        "parameters": parameters,
        "tasks": sorted(_task_names(spec.root.dag)),
        "images": sorted({e.container.image for e in deployment.executors.values() if e.HasField("container")}),
    }


def _task_names(dag, components=None) -> set[str]:
    return set(dag.tasks.keys())


def _build_vertex_job(path: str | Path, parameter_values: dict | None = None):
    """Build (not submit) a Vertex PipelineJob from the spec with anonymous credentials."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name="cauce-validate",
        template_path=str(path),
        pipeline_root="gs://cauce-validate/pipeline-root",
        parameter_values=parameter_values or {},
        project="cauce-validate",
        location="us-central1",
        credentials=AnonymousCredentials(),
        enable_caching=False,
    )


def parse_params(pipeline_name: str, pairs: list[str]) -> dict:
    """Turn ``["rows=5", "thresholds={\\"auc\\": 0.8}"]`` into values typed by the pipeline's signature."""
    inputs = get_pipeline(pipeline_name).component_spec.inputs or {}
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CauceError(f"--param {pair!r} must look like name=value")
        if key not in inputs:
            raise CauceError(f"pipeline {pipeline_name!r} has no parameter {key!r}; parameters: {sorted(inputs)}")
        values[key] = _coerce(key, raw, inputs[key].type)
    return values


def _coerce(key: str, raw: str, kfp_type: str):
    try:
        if kfp_type == "String":
            return raw
        if kfp_type == "Integer":
            return int(raw)
        if kfp_type == "Float":
            return float(raw)
        if kfp_type == "Boolean":
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
        value = json.loads(raw)
    except (ValueError, json.JSONDecodeError):
        raise CauceError(f"parameter {key!r} expects {kfp_type}, got {raw!r}") from None
    # KFP names a dict parameter's type "Dict" in the component spec (the compiled
    # YAML says STRUCT); both mean a JSON object.
    expected = {"List": (list, "list"), "Struct": (dict, "object"), "Dict": (dict, "object")}.get(kfp_type)
    if expected is None:
        raise CauceError(f"parameter {key!r} has type {kfp_type}, which --param cannot set")
    if not isinstance(value, expected[0]):
        raise CauceError(f"parameter {key!r} expects a JSON {expected[1]}, got {raw!r}")
    return value
