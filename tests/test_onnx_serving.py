"""The served form of every model (issue 12): train writes model.onnx, checked against the
framework before the bundle is accepted; serving and batch prediction run it in ONNX
Runtime without importing any training framework; the same data and seed give the same
bytes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cauce import data, model
from cauce.artifacts import CauceError
from cauce.components.train import onnx_export
from cauce.components.train.executor import run_train
from cauce.components.transform.executor import run_transform
from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC

CASES = {
    "lightgbm-binary": ("sklearn", "binary", DEMO_LABEL, {"n_estimators": 30}),
    "lightgbm-multiclass": ("sklearn", "multiclass", "payment_type", {"n_estimators": 20}),
    "lightgbm-regression": ("sklearn", "regression", "fare", {"n_estimators": 30}),
    "logistic-regression": ("sklearn", "binary", DEMO_LABEL, {"model_type": "logistic_regression", "max_iter": 300}),
    "random-forest": ("sklearn", "binary", DEMO_LABEL, {"model_type": "random_forest", "n_estimators": 10, "max_depth": 6}),
    "torch-mlp": ("torch", "binary", DEMO_LABEL, {"epochs": 2, "hidden_units": [16]}),
    "torch-regression": ("torch", "regression", "fare", {"epochs": 2, "hidden_units": [16]}),
}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, raw_dataset):
    """label -> (transformed dir, transform dir), one transform per label."""
    root = tmp_path_factory.mktemp("encoded")
    out = {}
    for label, task in ((DEMO_LABEL, "binary"), ("payment_type", "multiclass"), ("fare", "regression")):
        numeric = [c for c in DEMO_NUMERIC if c != label]
        categorical = [c for c in DEMO_CATEGORICAL if c != label]
        run_transform(raw_dataset, label, numeric, categorical, str(root / label / "t"), str(root / label / "fn"), task=task)
        out[label] = (str(root / label / "t"), str(root / label / "fn"))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_every_framework_exports_a_checked_reproducible_graph(case, encoded, raw_dataset, tmp_path):
    framework, task, label, params = CASES[case]
    transformed, transform_dir = encoded[label]
    bundles = [tmp_path / "a", tmp_path / "b"]
    for bundle in bundles:
        run_train(transformed, transform_dir, str(bundle), dict(params), seed=3, framework=framework, task=task)
    assert (bundles[0] / model.ONNX_FILE).read_bytes() == (bundles[1] / model.ONNX_FILE).read_bytes()
    serving = json.loads((bundles[0] / model.METADATA_FILE).read_text())["serving"]
    assert serving["runtime"] == "onnxruntime" and serving["checked_rows"] > 0
    assert serving["max_abs_difference"] <= onnx_export.TOLERANCE * 100  # the check allows 1e-6 x |output| on top

    served, trained = model.load(bundles[0], serving=True), model.load(bundles[0])
    assert type(served) is model.OnnxModel and type(trained) is not model.OnnxModel
    rows = data.read_split(raw_dataset, "eval")
    expected = trained.predict_scores(rows)
    got = served.predict_scores(rows)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=onnx_export.TOLERANCE, atol=onnx_export.TOLERANCE)


def test_a_graph_that_does_not_reproduce_the_model_is_refused_and_nothing_is_written(encoded, tmp_path, monkeypatch):
    transformed, transform_dir = encoded[DEMO_LABEL]
    real = onnx_export.export

    def off_by_a_little(framework, trained, width, task):
        onnx_bytes, how = real(framework, trained, width, task)
        original = trained.scores_from_features
        trained.scores_from_features = lambda features: original(features) + 1e-5
        return onnx_bytes, how

    monkeypatch.setattr(onnx_export, "export", off_by_a_little)
    with pytest.raises(CauceError, match=r"ONNX export of the model does not reproduce its outputs: largest difference 1\.0\d*e-05 on 1000 rows"):
        run_train(transformed, transform_dir, str(tmp_path / "m"), {"model_type": "logistic_regression"})
    assert not (tmp_path / "m").exists()


def test_serving_loads_no_training_framework(trained_model):
    """What the serving image relies on: a bundle served without scikit-learn, LightGBM,
    torch, Keras or TensorFlow being imported."""
    raw, _, _, model_dir = trained_model
    from cauce.components.deploy.executor import smoke_instances_from

    instances = smoke_instances_from(raw, "eval", model_dir, rows=3)
    code = (
        "import json, sys\n"
        "from cauce.serving.server import build_app\n"
        f"app = build_app({model_dir!r})\n"
        f"status, body = app.handle('POST', '/predict', json.dumps({{'instances': {instances!r}}}).encode())\n"
        "loaded = sorted(m for m in ('sklearn', 'scipy', 'lightgbm', 'torch', 'keras', 'tensorflow', 'joblib') if m in sys.modules)\n"
        "print(json.dumps({'status': status, 'body': json.loads(body), 'loaded': loaded}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and len(result["body"]["predictions"]) == 3
    assert result["loaded"] == []
    served = model.load(model_dir, serving=True).predict_instances(instances)
    assert result["body"]["predictions"] == served


def test_a_bundle_without_model_onnx_still_loads_with_its_framework(trained_model, tmp_path):
    import shutil

    _, _, _, model_dir = trained_model
    old = Path(shutil.copytree(model_dir, tmp_path / "old"))
    (old / model.ONNX_FILE).unlink()
    assert type(model.load(old, serving=True)) is model.SklearnModel
