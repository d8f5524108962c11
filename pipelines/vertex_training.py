"""The `training` pipeline with its train step run as a Vertex AI CustomJob.

The train component is unchanged: GCPC's ``create_custom_training_job_from_component``
wraps it (in the image of the chosen framework, ``train_component``) in a
CustomJob whose machine type, accelerator type/count and replica count are
fixed when the pipeline is built, and ``build_training_pipeline(train_op=...)``
puts that op where the plain train step would be. Everything else (extract,
transform, evaluate, register, deploy and their parameters) is the `training`
pipeline's.

    from cauce.pipelines.vertex_training import compile_vertex_training_pipeline
    compile_vertex_training_pipeline("training-gpu.yaml", framework="torch",
        machine_type="n1-standard-8", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1)

A CustomJob exists only on Vertex: kfp.local cannot run this variant (it runs
no GCPC op); run the plain `training` pipeline locally, with the same component.

The pipeline's ``hyperparameters`` default is ``{}``: the chosen framework's
own defaults; a run can pass its own.
"""

from __future__ import annotations

from cauce.artifacts import CauceError
from cauce.components.train.component import FRAMEWORK_IMAGE_FAMILIES, train_component
from cauce.pipelines.training import build_training_pipeline

DEFAULT_MACHINE_TYPE = "n1-standard-8"


def build_vertex_training_pipeline(
    framework: str = "sklearn",
    machine_type: str = DEFAULT_MACHINE_TYPE,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    replica_count: int = 1,
    image: str = "",
    boot_disk_size_gb: int = 100,
    timeout: str = "604800s",
    service_account: str = "",
    name: str = "",
):
    """Build the training pipeline with a CustomJob train step.

    Args:
        framework: "sklearn" | "keras" | "torch": the trainer, and the image family
            the step runs in (``image`` overrides the image).
        machine_type: Compute Engine machine type of the CustomJob, e.g. "n1-standard-8".
        accelerator_type: e.g. "NVIDIA_TESLA_T4", "NVIDIA_L4"; empty for none.
        accelerator_count: accelerators per machine (1 when a type is given and this is 0).
            The PyTorch trainer uses one GPU; Keras uses what TensorFlow sees.
        replica_count: machines in the job. cauce's trainers train on one machine,
            so only 1 is accepted (more would run the same training N times, each
            replica writing the same outputs).
    """
    if framework not in FRAMEWORK_IMAGE_FAMILIES:
        raise CauceError(f"framework {framework!r} is not supported; expected one of {sorted(FRAMEWORK_IMAGE_FAMILIES)}")
    if int(replica_count) != 1:
        raise CauceError(
            f"replica_count={replica_count}: the cauce trainers train on one machine and every replica would run "
            "the same training and write the same outputs; use replica_count=1 and a larger machine_type "
            "or accelerator_count"
        )
    if accelerator_count < 0:
        raise CauceError(f"accelerator_count must be >= 0, got {accelerator_count}")
    if accelerator_count and not accelerator_type:
        raise CauceError(f"accelerator_count={accelerator_count} needs an accelerator_type (e.g. 'NVIDIA_TESLA_T4')")
    if accelerator_type and framework == "sklearn":
        raise CauceError(
            f"accelerator_type {accelerator_type!r} with framework 'sklearn': scikit-learn does not use "
            "accelerators; choose framework 'keras' or 'torch', or drop the accelerator"
        )
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    custom_train = create_custom_training_job_from_component(
        train_component(framework, image),
        display_name=f"cauce-train-{framework}",
        machine_type=machine_type,
        accelerator_type=accelerator_type,
        accelerator_count=(accelerator_count or 1) if accelerator_type else 0,
        replica_count=1,
        boot_disk_size_gb=boot_disk_size_gb,
        timeout=timeout,
        service_account=service_account,
    )

    # Only this framework is built into the variant: its `framework` parameter defaults to
    # it, and preflight refuses any other.
    return build_training_pipeline(train_ops={framework: custom_train}, name=name or f"cauce-training-vertex-{framework}")


def compile_vertex_training_pipeline(package_path: str, pipeline_parameters: dict | None = None, **build_options) -> str:
    """Build (``build_vertex_training_pipeline(**build_options)``) and compile to
    ``package_path``; ``pipeline_parameters`` override parameter defaults in the
    compiled spec. Returns ``package_path``."""
    from kfp import compiler

    pipeline = build_vertex_training_pipeline(**build_options)
    compiler.Compiler().compile(pipeline, str(package_path), pipeline_parameters=pipeline_parameters or None)
    return str(package_path)
