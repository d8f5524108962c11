"""KFP definition of the train step (logic in executor.py)."""

from typing import NamedTuple

from kfp import dsl

from cauce.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    transformed: dsl.Input[dsl.Dataset],
    transform_fn: dsl.Input[dsl.Artifact],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    hyperparameters: dict = {"model_type": "hist_gradient_boosting", "max_iter": 200, "learning_rate": 0.1},
    train_split: str = "train",
    eval_split: str = "eval",
    seed: int = 42,
) -> NamedTuple("TrainOutputs", [("eval_auc", float)]):
    """Train a scikit-learn classifier on the encoded data; the Model artifact is a
    self-contained servable bundle (estimator + fitted transform + metadata).

    Args:
        hyperparameters: {"model_type": "hist_gradient_boosting" | "random_forest" |
            "logistic_regression", ...estimator parameters}.
    """
    from collections import namedtuple

    from cauce.components.train.executor import run_train

    result = run_train(
        transformed_dir=transformed.path,
        transform_dir=transform_fn.path,
        model_dir=model.path,
        hyperparameters=hyperparameters,
        train_split=train_split,
        eval_split=eval_split,
        seed=seed,
    )
    model.metadata.update(
        {k: result.metadata[k] for k in ("framework", "framework_version", "model_type", "label", "features", "train_rows")}
    )
    model.metadata["metrics"] = result.metrics
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return namedtuple("TrainOutputs", ["eval_auc"])(result.metrics.get("eval_auc", float("nan")))
