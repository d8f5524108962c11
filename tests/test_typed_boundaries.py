"""Typed artifacts at the component boundaries: GCPC ops wire into and out of cauce
components without casts, mismatched types are refused at pipeline definition, and the
compiled specs carry the lineage edges (an artifact input fed by another task's output)."""

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl.types.type_utils import InconsistentTypeException

from cauce.artifact_types import VertexEndpoint, VertexModel, vertex_resource_name
from cauce.artifacts import CauceError
from cauce.components.deploy.component import deploy, deploy_vertex
from cauce.components.evaluate.component import evaluate
from cauce.components.extract.component import extract
from cauce.components.monitor.component import vertex_monitoring
from cauce.components.monitor.executor import request_log_dir_of
from cauce.components.register.component import register_vertex
from cauce.spec import compile_pipeline, validate_spec

gcpc = pytest.importorskip("google_cloud_pipeline_components")


def _compiled(pipeline, tmp_path) -> dict:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    validate_spec(path)  # the strict offline check a Vertex submission gets
    return yaml.safe_load(path.read_text())


def _dags(document: dict) -> dict:
    """Component name -> its DAG's tasks, the root DAG under "root"."""
    dags = {"root": document["root"]["dag"]["tasks"]}
    for name, component in document["components"].items():
        if "dag" in component:
            dags[name] = component["dag"]["tasks"]
    return dags


def _artifact_edges(document: dict) -> set[tuple[str, str, str, str]]:
    """(producer task, output, consumer task, input) for every artifact passed between tasks,
    followed through the condition branches it is handed down by (componentInputArtifact)."""
    dags = _dags(document)
    invoked_by = {
        task["componentRef"]["name"]: task for tasks in dags.values() for task in tasks.values()
        if task["componentRef"]["name"] in dags
    }

    def producer(component: str, given: dict):
        while "componentInputArtifact" in given:
            branch = invoked_by[component]
            given = branch["inputs"]["artifacts"][given["componentInputArtifact"]]
            component = next(name for name, tasks in dags.items() if branch in tasks.values())
        source = given.get("taskOutputArtifact")
        return (source["producerTask"], source["outputArtifactKey"]) if source else None

    edges = set()
    for component, tasks in dags.items():
        for consumer, task in tasks.items():
            if task["componentRef"]["name"] in dags:
                continue  # a condition branch, not a step
            for name, given in task.get("inputs", {}).get("artifacts", {}).items():
                found = producer(component, given)
                if found:
                    edges.add((*found, consumer, name))
    return edges


def _output_type(document: dict, component: str, output: str) -> str:
    return document["components"][component]["outputDefinitions"]["artifacts"][output]["artifactType"]["schemaTitle"]


def test_gcpc_model_ops_wire_into_and_out_of_cauce(tmp_path):
    from google_cloud_pipeline_components.v1.batch_predict_job import ModelBatchPredictOp
    from google_cloud_pipeline_components.v1.endpoint import EndpointCreateOp, ModelDeployOp
    from google_cloud_pipeline_components.v1.model import ModelGetOp

    @dsl.pipeline(name="cauce-with-gcpc")
    def pipeline(project: str, model_uri: str, smoke_uri: str):
        trained = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model).set_display_name("trained")
        smoke = dsl.importer(artifact_uri=smoke_uri, artifact_class=dsl.Dataset).set_display_name("smoke")
        # cauce -> GCPC: our registered google.VertexModel deploys and batch-predicts with GCPC.
        registered = register_vertex(model=trained.output, model_name="churn", project=project)
        gcpc_endpoint = EndpointCreateOp(project=project, display_name="churn")
        ModelDeployOp(
            model=registered.outputs["vertex_model"],
            endpoint=gcpc_endpoint.outputs["endpoint"],
            dedicated_resources_machine_type="n1-standard-2",
            dedicated_resources_min_replica_count=1,
        )
        ModelBatchPredictOp(
            project=project, job_display_name="churn-batch", model=registered.outputs["vertex_model"],
            gcs_source_uris=["gs://bucket/in.jsonl"], gcs_destination_output_uri_prefix="gs://bucket/out",
        )
        # GCPC -> cauce: a model GCPC looked up deploys with ours; our endpoint goes back to GCPC.
        looked_up = ModelGetOp(model_name="churn@champion", project=project)
        deployed = deploy_vertex(
            vertex_model=looked_up.outputs["model"], smoke_dataset=smoke.output, endpoint_name="churn",
            project=project,
        )
        ModelDeployOp(model=looked_up.outputs["model"], endpoint=deployed.outputs["vertex_endpoint"])
        # GCPC's endpoint -> our Vertex AI Model Monitoring set-up.
        vertex_monitoring(
            vertex_endpoint=gcpc_endpoint.outputs["endpoint"], project=project,
            training_data_source="bq://acme.churn.train", numeric_features=["tenure"], categorical_features=["plan"],
        )

    document = _compiled(pipeline, tmp_path)
    edges = _artifact_edges(document)
    assert {
        ("register-vertex", "vertex_model", "model-deploy", "model"),
        ("register-vertex", "vertex_model", "model-batch-predict", "model"),
        ("model-get", "model", "deploy-vertex", "vertex_model"),
        ("deploy-vertex", "vertex_endpoint", "model-deploy-2", "endpoint"),
        ("endpoint-create", "endpoint", "vertex-monitoring", "vertex_endpoint"),
    } <= edges
    assert _output_type(document, "comp-register-vertex", "vertex_model") == "google.VertexModel"
    assert _output_type(document, "comp-deploy-vertex", "vertex_endpoint") == "google.VertexEndpoint"


def test_gcpc_bigquery_tables_wire_into_and_out_of_extract(tmp_path):
    from google_cloud_pipeline_components.v1.bigquery import BigqueryQueryJobOp
    from google_cloud_pipeline_components.v1.model_evaluation import ModelEvaluationClassificationOp

    @dsl.pipeline(name="bigquery-tables-through-extract")
    def pipeline(project: str):
        # GCPC -> cauce: the table a BigQuery query job wrote is extract's source, no string in between.
        snapshot = BigqueryQueryJobOp(
            project=project, location="EU", query="SELECT * FROM fraud.transactions WHERE day = CURRENT_DATE()"
        )
        extracted = extract(
            source_table=snapshot.outputs["destination_table"], key_column="transaction_id",
            target="google-cloud", project=project,
        )
        # cauce -> GCPC (and cauce): the table extract read goes on as a google.BQTable.
        ModelEvaluationClassificationOp(
            target_field_name="is_fraud", predictions_bigquery_source=extracted.outputs["table"], project=project
        )
        extract(source_table=extracted.outputs["table"], key_column="transaction_id", target="google-cloud")

    document = _compiled(pipeline, tmp_path)
    assert {
        ("bigquery-query-job", "destination_table", "extract", "source_table"),
        ("extract", "table", "model-evaluation-classification", "predictions_bigquery_source"),
        ("extract", "table", "extract-2", "source_table"),
    } <= _artifact_edges(document)
    assert _output_type(document, "comp-extract", "table") == "google.BQTable"
    source_table = document["components"]["comp-extract"]["inputDefinitions"]["artifacts"]["source_table"]
    assert source_table["artifactType"]["schemaTitle"] == "google.BQTable" and source_table["isOptional"]
    # `source` still works unchanged, and is what a pipeline without a table passes.
    assert extract.component_spec.inputs["source"].default == ""


def test_mismatched_artifact_types_are_refused_at_definition():
    from google_cloud_pipeline_components.v1.model import ModelGetOp

    # A Vertex model is not a local model bundle: the local deploy refuses it...
    with pytest.raises(InconsistentTypeException, match="google.VertexModel"):
        @dsl.pipeline
        def vertex_model_into_local_deploy(project: str):
            looked_up = ModelGetOp(model_name="churn", project=project)
            smoke = dsl.importer(artifact_uri="gs://b/smoke", artifact_class=dsl.Dataset)
            deploy(registered_model=looked_up.outputs["model"], smoke_dataset=smoke.output, endpoint_name="churn")

    # ...and a model bundle is not a Vertex model version.
    with pytest.raises(InconsistentTypeException, match="system.Model"):
        @dsl.pipeline
        def bundle_into_vertex_deploy(project: str):
            trained = dsl.importer(artifact_uri="gs://b/model", artifact_class=dsl.Model)
            smoke = dsl.importer(artifact_uri="gs://b/smoke", artifact_class=dsl.Dataset)
            deploy_vertex(vertex_model=trained.output, smoke_dataset=smoke.output, endpoint_name="churn", project=project)


def test_training_spec_carries_the_lineage_edges(tmp_path):
    document = yaml.safe_load(compile_pipeline("training", tmp_path).read_text())
    edges = _artifact_edges(document)
    # The model comes from the framework branch that ran (dsl.OneOf over one train task
    # per image family): the branches group's output selects each train task's model.
    oneof = "pipelinechannel--condition-branches-1-oneof-1"
    selectors = document["components"]["comp-condition-branches-1"]["dag"]["outputs"]["artifacts"][oneof]
    dags = _dags(document)
    chosen = set()
    for selector in selectors["artifactSelectors"]:
        branch = document["components"]["comp-condition-branches-1"]["dag"]["tasks"][selector["producerSubtask"]]
        inner = dags[branch["componentRef"]["name"]]
        (source,) = document["components"][branch["componentRef"]["name"]]["dag"]["outputs"]["artifacts"][
            selector["outputArtifactKey"]
        ]["artifactSelectors"]
        chosen.add((source["producerSubtask"], source["outputArtifactKey"], source["producerSubtask"] in inner))
    assert chosen == {("train", "model", True), ("train-2", "model", True), ("train-3", "model", True)}
    assert {
        ("champion", "champion_model", "evaluate", "baseline_model"),
        ("condition-branches-1", oneof, "evaluate", "model"),
        ("condition-branches-1", oneof, "register", "model"),
        ("register", "registered_model", "deploy", "registered_model"),
        ("condition-branches-1", oneof, "register-vertex", "model"),
        ("register-vertex", "vertex_model", "deploy-vertex", "vertex_model"),
        ("extract", "dataset", "deploy", "smoke_dataset"),
    } <= edges
    assert _output_type(document, "comp-champion", "champion_model") == "system.Model"
    # Local registration is a plain Model: nothing in MLflow mode claims to be a Vertex model.
    assert _output_type(document, "comp-register", "registered_model") == "system.Model"
    assert _output_type(document, "comp-register-vertex", "vertex_model") == "google.VertexModel"
    assert _output_type(document, "comp-deploy-vertex", "vertex_endpoint") == "google.VertexEndpoint"


def test_monitoring_spec_hands_the_endpoint_to_vertex_monitoring_as_a_vertex_endpoint(tmp_path):
    document = yaml.safe_load(compile_pipeline("monitoring", tmp_path).read_text())
    # (an importer's task is named importer-N whatever its display name)
    assert ("importer-2", "artifact", "vertex-monitoring", "vertex_endpoint") in _artifact_edges(document)
    importer = document["components"]["comp-importer-2"]
    assert importer["outputDefinitions"]["artifacts"]["artifact"]["artifactType"]["schemaTitle"] == "google.VertexEndpoint"


def test_baseline_model_is_an_optional_model_input():
    spec = evaluate.component_spec.inputs["baseline_model"]
    assert spec.type.startswith("system.Model@") and spec.optional


def test_vertex_artifacts_must_name_their_resource():
    model = VertexModel(uri="https://us-central1-aiplatform.googleapis.com/v1/x", metadata={})
    with pytest.raises(CauceError, match="no resourceName"):
        vertex_resource_name(model)
    endpoint = VertexEndpoint(metadata={"resourceName": "projects/p/locations/l/endpoints/1"})
    assert vertex_resource_name(endpoint) == "projects/p/locations/l/endpoints/1"


def test_monitor_reads_the_request_logs_of_a_connected_endpoint():
    assert request_log_dir_of("", {"request_log_dir": "/logs/a"}) == "/logs/a"
    assert request_log_dir_of("/logs/b", {"request_log_dir": "/logs/a"}) == "/logs/b"
    with pytest.raises(CauceError, match="request_log_dir and request_log_table are empty"):
        request_log_dir_of("", None)
