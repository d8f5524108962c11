"""kfp.local 2.17 resolves ``dsl.OneOf`` over parameters but not over artifacts: a DAG
whose output is ``dsl.OneOf(a.outputs["model"], b.outputs["model"])`` (the training
pipeline's one model from the train task of the chosen framework, each in its own
image) fails with "Expected 1 artifact in ArtifactSelectorSpec". Vertex AI and
Kubeflow Pipelines resolve it. :func:`allow_oneof_artifacts` teaches kfp.local the
same rule it already applies to parameters: the output of the one branch that ran.
"""

from __future__ import annotations

_APPLIED = False


def allow_oneof_artifacts() -> None:
    """Patch kfp.local's DAG output resolution once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from kfp.local.orchestrator import orchestrator_utils

    utils = orchestrator_utils.OrchestratorUtils if hasattr(orchestrator_utils, "OrchestratorUtils") else None
    owner = utils or _find_owner(orchestrator_utils)
    original = owner.get_dag_output_artifacts

    def get_dag_output_artifacts(cls, dag_outputs_spec, io_store):
        single = type(dag_outputs_spec)()
        chosen = {}
        for key, selector_spec in dag_outputs_spec.artifacts.items():
            selectors = list(selector_spec.artifact_selectors)
            if len(selectors) == 1:
                single.artifacts[key].CopyFrom(selector_spec)
                continue
            found = []
            for selector in selectors:
                try:
                    found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
                except (KeyError, ValueError):
                    continue  # that branch did not run
            if len(found) != 1:
                raise ValueError(
                    f"dsl.OneOf output {key!r}: {len(found)} of its branches produced an artifact; expected exactly one"
                )
            chosen[key] = found[0]
        return {**original.__func__(cls, single, io_store), **chosen}

    owner.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    _APPLIED = True


def _find_owner(module):
    for value in vars(module).values():
        if isinstance(value, type) and "get_dag_output_artifacts" in vars(value):
            return value
    raise RuntimeError("kfp.local has no get_dag_output_artifacts to patch")
