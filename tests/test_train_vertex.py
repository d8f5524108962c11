"""The train component under KFP: kfp.local with PyTorch, the per-framework
images, and the training pipeline variant whose train step is a Vertex AI
CustomJob (compiled and validated strictly, offline)."""

import json

import pytest
import yaml

from cauce import model
from cauce.artifacts import CauceError


def test_torch_component_runs_under_kfp_local(trained_model, kfp_local, tmp_path):
    from kfp import compiler, dsl

    from cauce.components.train.component import train

    _, transformed, transform_dir, _ = trained_model

    @dsl.pipeline(name="train-torch-test")
    def train_pipeline() -> float:
        encoded = dsl.importer(artifact_uri=transformed, artifact_class=dsl.Dataset)
        fitted = dsl.importer(artifact_uri=transform_dir, artifact_class=dsl.Artifact)
        # Numbers in a dict parameter reach the component as floats (protobuf Struct).
        task = train(
            transformed=encoded.output,
            fitted_transform=fitted.output,
            framework="torch",
            hyperparameters={"hidden_units": [16], "epochs": 3, "batch_size": 256, "learning_rate": 0.01},
        )
        return task.outputs["eval_auc"]

    compiler.Compiler().compile(train_pipeline, str(tmp_path / "pipeline.yaml"))
    assert train_pipeline().output > 0.75

    (task_dir,) = kfp_local.glob("*/train")
    outputs = json.loads((task_dir / "executor_output.json").read_text())
    logged = {name: entry["artifacts"][0]["metadata"] for name, entry in outputs["artifacts"].items()}
    assert logged["model"]["framework"] == "torch" and logged["model"]["task"] == "binary"
    assert logged["metrics"]["eval_auc"] > 0.75 and "epoch_001_val_loss" in logged["metrics"]
    epochs = int(logged["metrics"]["epochs_run"])
    assert f"epoch_{epochs:03d}_val_auc" in logged["metrics"]
    loaded = model.load(task_dir / "model")
    assert loaded.metadata["hyperparameters"]["hidden_units"] == [16] and loaded.metadata["architecture"]["inputs"] > 0


def test_each_framework_runs_in_its_image_family():
    from cauce.components.train.component import train, train_component
    from cauce.images import BASE_IMAGE, image_for

    def image(component):
        return component.component_spec.implementation.container.image

    assert train_component("sklearn") is train and image(train) == BASE_IMAGE
    assert image(train_component("keras")) == image_for("tf")
    assert image(train_component("torch")) == image_for("torch")
    assert image(train_component("torch", image="example.com/trainer@sha256:abc")) == "example.com/trainer@sha256:abc"
    assert train_component("torch").component_spec.inputs == train.component_spec.inputs
    with pytest.raises(CauceError, match="framework 'jax' is not supported"):
        train_component("jax")


def _worker_pool(spec_path):
    document = yaml.safe_load(open(spec_path))
    train_component_name = document["root"]["dag"]["tasks"]["train"]["componentRef"]["name"]
    inputs = document["components"][train_component_name]["inputDefinitions"]["parameters"]
    (pool,) = inputs["worker_pool_specs"]["defaultValue"]
    return document, pool


def test_customjob_variant_compiles_and_validates_strictly(tmp_path):
    from cauce.images import image_for
    from cauce.pipelines.vertex_training import compile_vertex_training_pipeline
    from cauce.spec import validate_spec

    path = compile_vertex_training_pipeline(
        tmp_path / "training-gpu.yaml",
        framework="torch",
        machine_type="n1-standard-8",
        accelerator_type="NVIDIA_TESLA_T4",
        accelerator_count=1,
    )
    described = validate_spec(path)
    assert described["name"] == "cauce-training-vertex-torch"
    assert {"extract", "transform", "train", "evaluate"} <= set(described["tasks"])
    assert "hyperparameters" in described["parameters"]

    document, pool = _worker_pool(path)
    assert pool["machine_spec"] == {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
    assert pool["replica_count"] == 1
    assert pool["container_spec"]["image_uri"] == image_for("torch")
    assert "kfp.dsl.executor_main" in " ".join(pool["container_spec"]["command"])
    train_task = document["root"]["dag"]["tasks"]["train"]
    # framework is the pipeline's parameter, defaulting to the one framework this variant builds
    # (preflight refuses any other: tests/test_preflight.py)
    assert train_task["inputs"]["parameters"]["framework"]["componentInputParameter"] == "framework"
    assert document["root"]["inputDefinitions"]["parameters"]["framework"]["defaultValue"] == "torch"
    # the training pipeline's default hyperparameters are scikit-learn's: this variant defaults to torch's own
    assert document["root"]["inputDefinitions"]["parameters"]["hyperparameters"]["defaultValue"] == {}


def test_customjob_variant_without_accelerator(tmp_path):
    from kfp import compiler

    from cauce.pipelines.vertex_training import build_vertex_training_pipeline
    from cauce.spec import validate_spec

    pipeline = build_vertex_training_pipeline(machine_type="e2-highmem-16")
    compiler.Compiler().compile(pipeline, str(tmp_path / "cpu.yaml"))
    validate_spec(tmp_path / "cpu.yaml")
    _, pool = _worker_pool(tmp_path / "cpu.yaml")
    assert pool["machine_spec"] == {"machine_type": "e2-highmem-16"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"framework": "jax"}, "framework 'jax' is not supported"),
        ({"framework": "torch", "replica_count": 2}, "replica_count=2: the cauce trainers train on one machine"),
        ({"framework": "torch", "accelerator_count": 2}, "accelerator_count=2 needs an accelerator_type"),
        ({"accelerator_type": "NVIDIA_L4"}, "scikit-learn does not use accelerators"),
    ],
)
def test_customjob_variant_rejects_impossible_machines(options, message):
    from cauce.pipelines.vertex_training import build_vertex_training_pipeline

    with pytest.raises(CauceError, match=message):
        build_vertex_training_pipeline(**options)
