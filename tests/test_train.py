"""The scikit-learn trainer and the model bundle it writes."""

import json

import pytest

from cauce import data, model
from cauce.artifacts import CauceError
from cauce.components.train.executor import run_train


def test_model_bundle_is_servable_and_better_than_chance(trained_model):
    raw, _, _, model_dir = trained_model
    meta = json.loads(open(f"{model_dir}/cauce_model.json").read())
    assert meta["framework"] == "sklearn" and meta["label"] == "tipped_well"
    assert meta["metrics"]["eval_auc"] > 0.75
    loaded = model.load(model_dir)
    scores = loaded.predict_scores(data.read_split(raw, "eval"))
    assert scores.shape == (1000,) and ((scores >= 0) & (scores <= 1)).all()


def test_same_data_and_seed_give_the_same_metrics(trained_model, tmp_path):
    _, transformed, transform_dir, _ = trained_model
    params = {"model_type": "hist_gradient_boosting", "max_iter": 30}
    first = run_train(transformed, transform_dir, str(tmp_path / "a"), params, seed=5)
    second = run_train(transformed, transform_dir, str(tmp_path / "b"), params, seed=5)
    assert first.metrics == second.metrics


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"model_type": "xgboost"}, "model_type 'xgboost' is not supported"),
        ({"model_type": "logistic_regression", "depth": 3}, r"unknown hyperparameter\(s\) \['depth'\]"),
    ],
)
def test_bad_hyperparameters_fail_clearly(trained_model, tmp_path, hyperparameters, message):
    _, transformed, transform_dir, _ = trained_model
    with pytest.raises(CauceError, match=message):
        run_train(transformed, transform_dir, str(tmp_path / "model"), hyperparameters)
    assert not (tmp_path / "model").exists()
