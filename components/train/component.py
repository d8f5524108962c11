"""KFP definition of the train step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.artifacts import CauceError
from cauce.images import BASE_IMAGE, image_for

# The image family each framework's trainer runs in (see containers/README.md):
# base has scikit-learn, tf has TensorFlow/Keras, torch has PyTorch.
FRAMEWORK_IMAGE_FAMILIES = {"sklearn": "base", "keras": "tf", "torch": "torch"}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    transformed: dsl.Input[dsl.Dataset],
    fitted_transform: dsl.Input[dsl.Artifact],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    hyperparameters: dict = {},
    train_split: str = "train",
    eval_split: str = "eval",
    seed: int = 42,
    framework: str = "sklearn",
    task: str = "binary",
) -> NamedTuple("TrainOutputs", [("eval_auc", float)]):
    """Train a scikit-learn, Keras or PyTorch model on the encoded data; the Model
    artifact is a self-contained servable bundle (model file + fitted transform +
    metadata) that cauce.model.load serves for every framework.

    Args:
        transformed: transform's encoded Dataset.
        fitted_transform: transform's fitted transform (transform.json), put in the bundle.
        model: output: the bundle (model file, transform.json, cauce_model.json).
        metrics: output: summary metrics, and for Keras/PyTorch the training curves, one scalar
            per epoch (epoch_003_val_loss, zero-padded so Vertex's metrics table sorts by epoch).
        hyperparameters: the framework's; empty means its defaults. sklearn:
            {"model_type": "lightgbm" (the default) | "hist_gradient_boosting" |
            "random_forest" | "logistic_regression" (regression: "ridge" |
            "linear_regression"), ...estimator parameters}. keras/torch: {"hidden_units",
            "dropout", "learning_rate", "weight_decay", "epochs", "batch_size", "patience",
            "min_delta", "validation_fraction"}.
        train_split: the split trained on.
        eval_split: the split the eval_* metrics are measured on; a dataset without it gives
            no eval_* metrics.
        seed: same data + seed -> same model metrics (every framework).
        framework: "sklearn" | "keras" | "torch" (the image must have it: see
            train_component()).
        task: "binary" | "multiclass" | "regression".
        eval_auc: output: AUC on eval_split; NaN for regression, or without eval_split.
    """
    from collections import namedtuple

    from cauce.components.train.executor import run_train

    result = run_train(
        transformed_dir=transformed.path,
        transform_dir=fitted_transform.path,
        model_dir=model.path,
        hyperparameters=hyperparameters,
        train_split=train_split,
        eval_split=eval_split,
        seed=seed,
        framework=framework,
        task=task,
    )
    model.metadata.update(
        {
            k: result.metadata[k]
            for k in ("framework", "framework_version", "model_type", "task", "label", "features", "train_rows")
        }
    )
    model.metadata["metrics"] = result.metrics
    # Summary metrics, then the training curves one scalar per epoch
    # (epoch_003_val_loss, ...): Vertex shows a Metrics artifact as a table.
    for name, value in result.kfp_metrics().items():
        metrics.log_metric(name, value)
    return namedtuple("TrainOutputs", ["eval_auc"])(result.metrics.get("eval_auc", float("nan")))


def train_component(framework: str = "sklearn", image: str = ""):
    """The train component running in the image that has ``framework``
    (``FRAMEWORK_IMAGE_FAMILIES``), or in ``image`` when given.

    The same function and interface as ``train``; only the container image
    differs, so a pipeline picks it at build time (for example to wrap it in a
    Vertex AI CustomJob with a GPU, see pipelines/vertex_training.py). The
    ``framework`` argument still has to be passed to the task.
    """
    if framework not in FRAMEWORK_IMAGE_FAMILIES:
        raise CauceError(f"framework {framework!r} is not supported; expected one of {sorted(FRAMEWORK_IMAGE_FAMILIES)}")
    chosen = image or image_for(FRAMEWORK_IMAGE_FAMILIES[framework])
    if chosen == BASE_IMAGE:
        return train
    return dsl.component(base_image=chosen, install_kfp_package=False)(train.python_func)
