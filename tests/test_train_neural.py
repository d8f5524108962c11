"""The Keras and PyTorch trainers: same contract as scikit-learn, small data,
few epochs. Binary models train on the demo data through the real transform
(the `trained_model` fixture's encoded splits); multiclass and regression
models on data built directly in the transformed layout (the transform only
emits binary labels)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from cauce import data, model
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.train.executor import run_train
from cauce.features import FittedTransform
from cauce.serving.app import PredictionApp

FRAMEWORKS = ["keras", "torch"]
FAST = {"hidden_units": [32, 16], "epochs": 6, "batch_size": 128, "learning_rate": 0.005, "patience": 2}


@pytest.fixture(scope="module")
def binary_models(trained_model, tmp_path_factory):
    """framework -> (model_dir, TrainResult) for a binary model on the demo data."""
    _, transformed, transform_dir, _ = trained_model
    root = tmp_path_factory.mktemp("neural")
    out = {}
    for framework in FRAMEWORKS:
        result = run_train(transformed, transform_dir, str(root / framework), FAST, seed=3, framework=framework)
        out[framework] = (str(root / framework), result)
    return out


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_binary_model_beats_chance_and_records_its_training(binary_models, framework):
    model_dir, result = binary_models[framework]
    assert result.metrics["eval_auc"] > 0.8 and result.metrics["train_auc"] > 0.8
    meta = json.loads(open(f"{model_dir}/cauce_model.json").read())
    assert meta["framework"] == framework and meta["task"] == "binary" and meta["label"] == "tipped_well"
    assert meta["seed"] == 3 and meta["metrics"] == result.metrics
    assert meta["versions"][framework] == meta["framework_version"]
    assert set(meta["data_hashes"]) == {"transform", "train", "eval"}
    curves = meta["training_curves"]
    epochs = curves["epoch"]
    assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= FAST["epochs"]
    assert set(curves) == {"epoch", "train_loss", "val_loss", "val_auc"}
    assert result.metrics["best_epoch"] == 1 + int(np.argmin(curves["val_loss"]))
    assert curves["val_loss"][-1] < curves["val_loss"][0]  # it learned something
    logged = result.kfp_metrics()
    assert logged["epoch_001_val_loss"] == curves["val_loss"][0] and f"epoch_{len(epochs):03d}_val_auc" in logged


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_data_and_seed_give_the_same_metrics(binary_models, trained_model, framework, tmp_path):
    _, transformed, transform_dir, _ = trained_model
    _, first = binary_models[framework]
    second = run_train(transformed, transform_dir, str(tmp_path / "again"), FAST, seed=3, framework=framework)
    assert second.metrics == first.metrics
    assert second.curves == first.curves


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bundle_serves_the_scores_it_computes_in_batch(binary_models, trained_model, framework):
    raw = trained_model[0]
    model_dir, result = binary_models[framework]
    loaded = model.load(model_dir)
    table = data.read_split(raw, "eval")
    scores = loaded.predict_scores(table)
    assert scores.shape == (table.num_rows,) and ((scores >= 0) & (scores <= 1)).all()

    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(table.column("tipped_well").to_numpy(), scores) == pytest.approx(result.metrics["eval_auc"], abs=1e-6)

    instances = table.slice(0, 20).drop_columns(["unique_key", "trip_start_timestamp", "tipped_well"]).to_pylist()
    predictions = loaded.predict_instances(instances)
    assert [p["score"] for p in predictions] == pytest.approx(scores[:20], abs=1e-6)
    assert [p["label"] for p in predictions] == [int(s >= 0.5) for s in scores[:20]]

    status, body = PredictionApp(loaded).handle("POST", "/predict", json.dumps({"instances": instances[:3]}).encode())
    assert status == 200
    assert json.loads(body)["predictions"] == predictions[:3]


# ---- multiclass and regression, in the transformed layout ------------------------

FEATURES = ["x0", "x1", "x2", "x3"]


def _write(directory, split_tables: dict, label: str):
    with atomic_dir(directory) as out:
        rows = {split: data.write_split(out, split, table) for split, table in split_tables.items()}
        data.write_schema(out, next(iter(split_tables.values())).schema, rows, label=label)
    return str(directory)


def _synthetic(root, task: str, rows: int = 1600):
    """Transformed splits + transform.json (z-score of mean 0 / std 1: raw == encoded)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    if task == "multiclass":
        names = np.array(["bike", "car", "walk"])
        y = pa.array(names[np.argmax(x[:, :3] + rng.normal(0, 0.3, (rows, 3)), axis=1)])
    else:
        y = pa.array(50.0 + 10.0 * (1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3]) + rng.normal(0, 2.0, rows))
    table = pa.table({**{name: x[:, j] for j, name in enumerate(FEATURES)}, "target": y})
    cut = int(rows * 0.75)
    transformed = _write(root / "transformed", {"train": table.slice(0, cut), "eval": table.slice(cut)}, "target")
    fitted = FittedTransform(
        label="target",
        numeric=[{"name": n, "mean": 0.0, "std": 1.0, "min": -5.0, "max": 5.0} for n in FEATURES],
        categorical=[],
    )
    (root / "transform").mkdir()
    fitted.save(root / "transform")
    return transformed, str(root / "transform"), table.slice(cut)


@pytest.fixture(scope="module")
def multiclass_data(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("multiclass"), "multiclass")


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("regression"), "regression")


@pytest.mark.parametrize("framework", [*FRAMEWORKS, "sklearn"])
def test_multiclass_models_predict_classes_and_probabilities(multiclass_data, framework, tmp_path):
    transformed, transform_dir, eval_table = multiclass_data
    params = {"model_type": "logistic_regression"} if framework == "sklearn" else {**FAST, "epochs": 5}
    result = run_train(transformed, transform_dir, str(tmp_path / "m"), params, framework=framework, task="multiclass")
    assert result.metrics["eval_accuracy"] > 0.7 and result.metrics["eval_auc"] > 0.85  # chance: 1/3 and 0.5
    loaded = model.load(tmp_path / "m")
    assert loaded.metadata["classes"] == ["bike", "car", "walk"] and loaded.task == "multiclass"
    probabilities = loaded.predict_scores(eval_table)
    assert probabilities.shape == (eval_table.num_rows, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    instances = eval_table.select(FEATURES).slice(0, 5).to_pylist()
    predictions = loaded.predict_instances(instances)
    assert [p["label"] for p in predictions] == [["bike", "car", "walk"][i] for i in probabilities[:5].argmax(axis=1)]
    np.testing.assert_allclose([p["scores"] for p in predictions], probabilities[:5], atol=1e-6)


@pytest.mark.parametrize("framework", [*FRAMEWORKS, "sklearn"])
def test_regression_models_predict_values_in_label_units(regression_data, framework, tmp_path):
    transformed, transform_dir, eval_table = regression_data
    params = {"model_type": "ridge"} if framework == "sklearn" else {**FAST, "epochs": 8}
    result = run_train(transformed, transform_dir, str(tmp_path / "m"), params, framework=framework, task="regression")
    assert result.metrics["eval_r2"] > 0.7, result.metrics
    assert result.metrics["eval_rmse"] < 10.0  # the label's std is ~19
    loaded = model.load(tmp_path / "m")
    values = loaded.predict_scores(eval_table)
    truth = eval_table.column("target").to_numpy()
    assert abs(values.mean() - truth.mean()) < 3.0  # predictions come back in label units, not standardized
    predictions = loaded.predict_instances(eval_table.select(FEATURES).slice(0, 5).to_pylist())
    assert [p["value"] for p in predictions] == pytest.approx(values[:5], abs=1e-4)
    if framework != "sklearn":
        curves = loaded.metadata["training_curves"]
        assert set(curves) == {"epoch", "train_loss", "val_loss", "val_rmse"}


def test_multiclass_eval_classes_must_be_seen_in_training(tmp_path):
    table = pa.table({**{n: pa.array([0.0, 1.0, 2.0, 3.0], pa.float32()) for n in FEATURES}, "target": [1, 2, 1, 2]})
    eval_table = pa.table({**{n: pa.array([0.0, 1.0], pa.float32()) for n in FEATURES}, "target": [1, 7]})
    transformed = _write(tmp_path / "transformed", {"train": table, "eval": eval_table}, "target")
    fitted = FittedTransform("target", [{"name": n, "mean": 0.0, "std": 1.0, "min": 0, "max": 3} for n in FEATURES], [])
    (tmp_path / "transform").mkdir()
    fitted.save(tmp_path / "transform")
    with pytest.raises(CauceError, match=r"label 'target' in split 'eval' has class\(es\) \[7\] never seen in training"):
        run_train(transformed, str(tmp_path / "transform"), str(tmp_path / "m"), {"epochs": 1}, framework="torch", task="multiclass")
    with pytest.raises(CauceError, match="must be binary 0/1 for task 'binary'; found values"):
        run_train(transformed, str(tmp_path / "transform"), str(tmp_path / "m"), {"epochs": 1}, framework="keras")
    assert not (tmp_path / "m").exists()


# ---- errors ------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"model_type": "hist_gradient_boosting", "max_iter": 200}, "model_type 'hist_gradient_boosting' is not a"),
        ({"layers": 3}, r"unknown hyperparameter\(s\) \['layers'\] for framework"),
        ({"epochs": 0}, "'epochs' must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "'epochs' must be an integer >= 1, got 2.5"),
        ({"hidden_units": "wide"}, "'hidden_units' must be a list of layer widths"),
        ({"dropout": 1.0}, r"'dropout' must be a number in \[0.0, 1.0\)"),
        ({"learning_rate": -1}, "'learning_rate' must be a number in"),
        ({"validation_fraction": 0.9}, "'validation_fraction' must be a number in"),
    ],
)
def test_bad_hyperparameters_fail_before_training_and_leave_nothing(trained_model, tmp_path, framework, hyperparameters, message):
    _, transformed, transform_dir, _ = trained_model
    with pytest.raises(CauceError, match=message):
        run_train(transformed, transform_dir, str(tmp_path / "model"), hyperparameters, framework=framework)
    assert not (tmp_path / "model").exists()


def test_hyperparameters_delivered_as_floats_by_kfp_are_accepted():
    from cauce.components.train.neural import plan

    resolved = plan({"epochs": 3.0, "hidden_units": [16.0, 8.0], "batch_size": 64.0}, "torch")
    assert resolved.epochs == 3 and resolved.hidden_units == [16, 8] and resolved.batch_size == 64
    assert plan({"hidden_units": 12}, "keras").hidden_units == [12]


def test_a_missing_framework_is_a_clear_error(trained_model, tmp_path, monkeypatch):
    import sys

    _, transformed, transform_dir, _ = trained_model
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(CauceError, match=r"framework 'torch' needs PyTorch, which is not installed here: install cauce\[torch\]"):
        run_train(transformed, transform_dir, str(tmp_path / "model"), {"epochs": 1}, framework="torch")
    assert not (tmp_path / "model").exists()


def test_serving_a_bundle_without_its_framework_is_a_clear_error(binary_models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CauceError, match=r"is a torch model but 'torch' is not installed here; install cauce\[torch\]"):
        model.load(binary_models["torch"][0])


def test_tfma_evaluates_keras_and_torch_models_and_compares_them(binary_models, trained_model, tmp_path):
    """Evaluate is model-agnostic: a PyTorch challenger against a Keras champion, in one TFMA run."""
    from cauce.components.evaluate.executor import run_evaluate

    raw = trained_model[0]
    keras_dir, keras_result = binary_models["keras"]
    torch_dir, torch_result = binary_models["torch"]
    summary = run_evaluate(
        torch_dir, raw, tmp_path / "out", slice_features=["payment_type"], thresholds={"auc": 0.6},
        champion_model_dir=keras_dir, change_thresholds={"auc": -1.0},
    )
    assert summary["blessed"] is True
    # TFMA's AUC on the raw eval split equals what each trainer measured on the encoded one.
    assert summary["metrics"]["auc"] == pytest.approx(torch_result.metrics["eval_auc"], abs=1e-3)
    assert summary["champion"]["metrics"]["auc"] == pytest.approx(keras_result.metrics["eval_auc"], abs=1e-3)


def test_keras_bundles_serve_on_the_torch_backend_without_tensorflow(binary_models, trained_model):
    """What the serving image does (KERAS_BACKEND=torch, no TensorFlow installed there):
    same predictions as on TensorFlow."""
    import subprocess
    import sys

    model_dir, _ = binary_models["keras"]
    from cauce.components.deploy.executor import smoke_instances_from

    instances = smoke_instances_from(trained_model[0], "eval", model_dir, rows=5)
    expected = model.load(model_dir).predict_instances(instances)
    code = (
        "import json, sys; from cauce import model; "
        f"print(json.dumps(model.load({model_dir!r}).predict_instances(json.loads(sys.argv[1])))); "
        "assert 'tensorflow' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(instances)], capture_output=True, text=True,
        env={**__import__("os").environ, "KERAS_BACKEND": "torch"}, check=True,
    )
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert [p["label"] for p in served] == [p["label"] for p in expected]
    np.testing.assert_allclose([p["score"] for p in served], [p["score"] for p in expected], atol=1e-5)
