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


def test_unknown_framework_and_task_fail_clearly_and_leave_nothing(trained_model, tmp_path):
    _, transformed, transform_dir, _ = trained_model
    with pytest.raises(CauceError, match=r"framework 'xgboost' is not supported; expected one of \['sklearn', 'keras', 'torch'\]"):
        run_train(transformed, transform_dir, str(tmp_path / "model"), {}, framework="xgboost")
    with pytest.raises(CauceError, match=r"task 'ranking' is not supported; expected one of \['binary', 'multiclass', 'regression'\]"):
        run_train(transformed, transform_dir, str(tmp_path / "model"), {}, task="ranking")
    with pytest.raises(CauceError, match="model_type 'logistic_regression' is not supported for task 'regression'"):
        run_train(transformed, transform_dir, str(tmp_path / "model"), {"model_type": "logistic_regression"}, task="regression")
    with pytest.raises(CauceError, match="invalid hyperparameters for 'random_forest'"):
        run_train(transformed, transform_dir, str(tmp_path / "model"), {"model_type": "random_forest", "n_estimators": -3})
    assert not (tmp_path / "model").exists()


def test_bundle_metadata_records_versions_hashes_and_seed(trained_model):
    _, _, transform_dir, model_dir = trained_model
    meta = json.loads(open(f"{model_dir}/cauce_model.json").read())
    assert meta["task"] == "binary" and meta["classes"] == [0, 1] and meta["seed"] == 42
    assert meta["versions"]["scikit-learn"] == meta["framework_version"] and meta["versions"]["python"]
    assert set(meta["data_hashes"]) == {"transform", "train", "eval"}
    assert all(value.startswith("sha256:") for value in meta["data_hashes"].values())
    assert meta["training_curves"] is None and meta["created_at"]


def test_sklearn_bundles_load_and_serve_without_tensorflow_or_torch(trained_model):
    """The serving process of a scikit-learn model stays light: no TF, Keras or torch import."""
    import subprocess
    import sys

    raw, _, _, model_dir = trained_model
    code = f"""
import sys
from cauce import data, model
from cauce.serving.server import build_app
from cauce.components.train.executor import run_train
loaded = model.load({model_dir!r})
loaded.predict_scores(data.read_split({raw!r}, "eval"))
build_app({model_dir!r})
heavy = sorted(m for m in ("tensorflow", "keras", "torch", "tensorflow_model_analysis") if m in sys.modules)
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_broken_bundles_fail_with_a_clear_error(trained_model, tmp_path):
    import shutil

    model_dir = trained_model[3]
    shutil.copytree(model_dir, tmp_path / "m")
    meta_path = tmp_path / "m" / "cauce_model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, framework="onnx")))
    with pytest.raises(CauceError, match=r"model framework 'onnx' in .* is not supported; expected one of \['keras', 'sklearn', 'torch'\]"):
        model.load(tmp_path / "m")
    meta_path.write_text(json.dumps(dict(meta, framework="torch")))
    with pytest.raises(CauceError, match=r"model\.pt not found: a torch bundle keeps its model there"):
        model.load(tmp_path / "m")


def test_integer_hyperparameters_delivered_as_floats_keep_their_meaning(trained_model, tmp_path):
    """KFP turns {"max_depth": 3} into 3.0; a None-default integer parameter must still take it."""
    _, transformed, transform_dir, _ = trained_model
    result = run_train(transformed, transform_dir, str(tmp_path / "m"),
                       {"model_type": "hist_gradient_boosting", "max_iter": 5.0, "max_depth": 3.0})
    assert result.metadata["hyperparameters"]["max_depth"] == 3


# ---- the default engine: LightGBM's scikit-learn estimator ---------------------------


def test_default_model_is_lightgbm_and_reproducible_bit_for_bit(trained_model, tmp_path):
    """Same data and seed -> the same trees and the same scores, to the last bit."""
    import numpy as np

    raw, transformed, transform_dir, _ = trained_model
    first = run_train(transformed, transform_dir, str(tmp_path / "a"), {}, seed=7)
    second = run_train(transformed, transform_dir, str(tmp_path / "b"), {}, seed=7)
    assert first.metadata["model_type"] == "lightgbm" and first.metadata["versions"]["lightgbm"]
    assert first.metadata["hyperparameters"]["deterministic"] is True
    assert first.metrics == second.metrics and first.metrics["eval_auc"] > 0.75
    a, b = model.load(tmp_path / "a"), model.load(tmp_path / "b")
    assert a.estimator.booster_.model_to_string() == b.estimator.booster_.model_to_string()
    table = data.read_split(raw, "eval")
    assert np.array_equal(a.predict_scores(table), b.predict_scores(table))


def test_lightgbm_hyperparameters_are_checked_before_any_data_is_read(tmp_path):
    missing = str(tmp_path / "no-such-dir")  # never read: the checks come first
    with pytest.raises(CauceError, match=r"invalid hyperparameters for 'lightgbm'.*num_leaves"):
        run_train(missing, missing, str(tmp_path / "m"), {"model_type": "lightgbm", "num_leaves": 1})
    with pytest.raises(CauceError, match=r"unknown hyperparameter\(s\) \['leaves'\] for model_type 'lightgbm'"):
        run_train(missing, missing, str(tmp_path / "m"), {"model_type": "lightgbm", "leaves": 8})
    assert not (tmp_path / "m").exists()


def test_lightgbm_takes_native_parameters_and_kfp_floats(trained_model, tmp_path):
    """LightGBM's own parameter names pass (max_bin), and KFP's 8.0 becomes 8."""
    _, transformed, transform_dir, _ = trained_model
    result = run_train(transformed, transform_dir, str(tmp_path / "m"),
                       {"model_type": "lightgbm", "n_estimators": 20.0, "num_leaves": 8.0, "max_bin": 63.0})
    params = result.metadata["hyperparameters"]
    assert (params["n_estimators"], params["num_leaves"], params["max_bin"]) == (20, 8, 63)
    assert model.load(tmp_path / "m").estimator.booster_.num_trees() == 20


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_lightgbm_trains_every_task(tmp_path, task):
    import numpy as np

    from tests.test_train_neural import _synthetic

    transformed, transform_dir, eval_table = _synthetic(tmp_path, task)
    result = run_train(transformed, transform_dir, str(tmp_path / "m"), {}, task=task)
    assert result.metadata["model_type"] == "lightgbm"
    outputs = model.load(tmp_path / "m").predict_scores(eval_table)
    if task == "multiclass":
        assert result.metrics["eval_accuracy"] > 0.7 and outputs.shape == (eval_table.num_rows, 3)
        np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-9)
    else:
        assert result.metrics["eval_r2"] > 0.7 and outputs.shape == (eval_table.num_rows,)
