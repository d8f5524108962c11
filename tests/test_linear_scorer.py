"""The fused linear scorer (cauce.features.LinearScorer, cauce.model's linear section):
a linear model folded into the fitted transform, which serving, batch prediction and
evaluation score linear models with.

* it reproduces scikit-learn within 1e-6 on scikit-learn's bundled breast_cancer
  (logistic regression) and diabetes (linear and ridge regression) data, encoded by
  our transform with every analyzer kind, and its per-instance and vectorized ways
  agree bit for bit;
* it enforces every serving input rule with the full path's messages;
* a bundle without coefficients, or with coefficients that do not reproduce the
  loaded model, is scored by the model itself (ONNX Runtime);
* batch prediction gives exactly the served numbers.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cauce import data, model
from cauce.artifacts import CauceError
from cauce.components.deploy.executor import smoke_instances_from
from cauce.features import FittedTransform

# Every analyzer kind: z-score, min-max, one-hot and index vocabularies, bucketize both ways.
RECIPE = {
    "steps": [
        {"type": "zscore", "columns": ["a", "b", "c", "d"]},
        {"type": "vocabulary", "columns": ["band"], "top_k": 4},
        {"type": "min_max", "columns": ["e", "f"]},
        {"type": "vocabulary", "columns": ["grade"], "encoding": "index"},
        {"type": "bucketize", "columns": ["g"], "buckets": 5, "method": "exact", "suffix": "_bucket"},
        {"type": "bucketize", "columns": ["h"], "buckets": 4, "encoding": "one_hot", "suffix": "_hot"},
        {"type": "zscore", "columns": ["rest"]},
    ]
}


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    """A real data set's columns as raw fields of every kind: numbers (a few missing),
    a categorical band of one column (strings), an integer grade used as a category."""
    rng = np.random.default_rng(3)
    missing = rng.random(len(x)) < 0.05
    columns = {name: x[:, i] for i, name in enumerate("abcdefgh")}
    columns["rest"] = x[:, 8:].sum(axis=1)
    table = {name: pa.array(values, mask=missing if name == "b" else None) for name, values in columns.items()}
    quartiles = np.quantile(x[:, 2], [0.25, 0.5, 0.75])
    table["band"] = pa.array([["low", "mid", "high", "top"][int(np.searchsorted(quartiles, v))] for v in x[:, 2]])
    table["grade"] = pa.array(np.digitize(x[:, 3], np.quantile(x[:, 3], [0.2, 0.4, 0.6, 0.8])).astype(np.int64))
    table["label"] = pa.array(y)
    return pa.table(table)


def _fit(dataset: str, estimator):
    from sklearn import datasets

    loaded = getattr(datasets, f"load_{dataset}")()
    table = _table(loaded.data, loaded.target)
    train, test = table.slice(0, 350), table.slice(350)
    transform = FittedTransform.fit_table(RECIPE, train, "label")
    estimator.fit(transform.transform_table(train), train.column("label").to_numpy())
    return transform, estimator, test


@pytest.mark.parametrize(
    ("dataset", "make", "task"),
    [
        ("breast_cancer", lambda: __import__("sklearn.linear_model").linear_model.LogisticRegression(max_iter=5000), "binary"),
        ("diabetes", lambda: __import__("sklearn.linear_model").linear_model.Ridge(alpha=0.5), "regression"),
        ("diabetes", lambda: __import__("sklearn.linear_model").linear_model.LinearRegression(), "regression"),
    ],
)
def test_reproduces_scikit_learn_and_both_ways_agree_bit_for_bit(dataset, make, task):
    transform, estimator, test = _fit(dataset, make())
    spec = model.linear_coefficients(estimator, task, transform.width)
    assert spec is not None and spec["link"] == ("logistic" if task == "binary" else "identity")
    scorer = transform.linear_scorer(spec["coefficients"], spec["intercept"], spec["link"])
    features = transform.transform_table(test)
    framework = estimator.predict_proba(features)[:, 1] if task == "binary" else estimator.predict(features)
    vectorized = scorer.score_features(features)
    assert model.linear_difference(framework, vectorized) is not None  # within 1e-6 + 1e-6 x |output|
    np.testing.assert_allclose(vectorized, framework, rtol=1e-6, atol=1e-6)
    instances = test.drop(["label"]).to_pylist()
    instances[0]["band"], instances[1]["grade"], instances[2]["g"] = "unseen", None, None
    features = transform.transform_instances(instances)
    vectorized = scorer.score_features(features)
    per_instance = scorer.score_instances(instances)
    assert per_instance == vectorized.tolist()  # == on floats: bit for bit (none is NaN)
    assert scorer.score_columns(transform.transform_columns(pa.Table.from_pylist(instances, schema=test.drop(["label"]).schema))).tolist() == per_instance
    for size in (1, 2, 9, 40):  # the few-rows and the blocked vectorized ways
        assert scorer.score_features(features[:size]).tolist() == per_instance[:size]
    big = np.repeat(features, 100, axis=0)  # past one 8192-row block
    assert scorer.score_features(big).tolist() == np.repeat(vectorized, 100).tolist()


def test_an_exactly_zero_total_is_positive_zero_both_ways():
    """Sums of signed zeros differ with the terms added (the per-instance way skips the
    zero features): both ways end with + 0.0, so an exactly zero total is +0.0 on both."""
    transform, _, test = _fit("diabetes", __import__("sklearn.linear_model").linear_model.LinearRegression())
    scorer = transform.linear_scorer([-0.0] * transform.width, -0.0, "identity")
    instances = test.drop(["label"]).to_pylist()[:3]
    per_instance = scorer.score_instances(instances)
    vectorized = scorer.score_features(transform.transform_instances(instances))
    assert per_instance == vectorized.tolist() == [0.0] * 3
    assert not np.signbit(vectorized).any() and all(math.copysign(1.0, s) == 1.0 for s in per_instance)


# ---- the trained bundle (conftest's logistic regression) ------------------------------


@pytest.fixture(scope="module")
def bundle(trained_model):
    raw, _, _, model_dir = trained_model
    return model_dir, smoke_instances_from(raw, "eval", model_dir, rows=300)


def test_train_writes_the_coefficients_checked_like_model_onnx(bundle):
    model_dir, _ = bundle
    metadata = json.loads((Path(model_dir) / model.METADATA_FILE).read_text())
    check = metadata["serving"]["linear"]
    assert check["file"] == model.LINEAR_FILE and check["checked_rows"] > 0 and check["max_abs_difference"] <= 1e-6
    spec = json.loads((Path(model_dir) / model.LINEAR_FILE).read_text())
    assert spec["format"] == model.LINEAR_FORMAT and spec["link"] == "logistic"
    assert len(spec["coefficients"]) == metadata["encoded_features"]


def test_served_model_uses_it_and_matches_onnx_runtime(bundle):
    model_dir, instances = bundle
    served = model.load(model_dir, serving=True)
    assert type(served) is model.OnnxModel and "linear" in vars(served)
    ort = model.OnnxModel(metadata=served.metadata, transform=served.transform, estimator=served.estimator)
    features = served.transform.transform_instances(instances)
    np.testing.assert_allclose(served.scores_from_features(features), ort.scores_from_features(features), atol=1e-6)
    # the framework-loaded bundle (evaluation) scores through the same scorer: the same numbers
    assert model.load(model_dir).predict_instances(instances) == served.predict_instances(instances)


def _bad_requests(instance: dict) -> list:
    """Requests breaking each serving input rule (docs/serving.md), and odd valid ones."""
    numeric, categorical = "fare", "company"
    variants = [
        {k: v for k, v in instance.items() if k != numeric},  # missing field
        {k: v for k, v in instance.items() if k != categorical},
        dict(instance, **{numeric: True}),  # booleans refused
        dict(instance, **{categorical: False}),
        dict(instance, **{numeric: "nan"}),  # non-finite spelled as strings
        dict(instance, **{numeric: "inf"}),
        dict(instance, **{numeric: "-Infinity"}),
        dict(instance, **{numeric: "1e999"}),
        dict(instance, **{numeric: 1e308}),  # outside what the model can encode
        dict(instance, **{numeric: -1e308}),
        dict(instance, **{numeric: 1e39}),  # finite, but past float32 once scaled
        dict(instance, **{numeric: "twelve"}),
        dict(instance, **{numeric: [1.0]}),
        dict(instance, **{categorical: ["x"]}),
        dict(instance, **{categorical: {"a": 1}}),
        dict(instance, **{numeric: None}),  # valid: null is missing
        dict(instance, **{categorical: None}),
        dict(instance, **{numeric: "12.5"}),  # valid: a string spelling a number
        dict(instance, **{numeric: 12}),
        dict(instance, **{numeric: float("nan")}),  # a Python caller's NaN: missing
        dict(instance, **{categorical: 7}),  # numbers as categories, spelled as training's cast spells them
        dict(instance, **{categorical: 1.0}),
        dict(instance, **{categorical: 10**30}),
        "not an object",
        [1, 2],
    ]
    return variants


def _outcome(predict, request):
    try:
        return predict(request)
    except Exception as error:  # noqa: BLE001 - the error itself is the outcome compared
        return type(error), str(error)


def test_every_input_rule_with_the_full_paths_message(bundle):
    model_dir, instances = bundle
    served = model.load(model_dir, serving=True)
    reference = model.OnnxModel(metadata=served.metadata, transform=served.transform, estimator=served.estimator)
    refused = 0
    for bad in _bad_requests(instances[0]):
        for request in ([bad], [*instances[:5], bad, *instances[5:11]], [*instances[:3], bad]):
            expected = _outcome(reference.predict_instances, request)
            got = _outcome(served.predict_instances, request)
            if isinstance(expected, tuple):  # refused: the same error, word for word
                assert got == expected, (bad, len(request))
                refused += expected[0] is CauceError
                continue
            # valid: ONNX Runtime's predictions within 1e-6 (scores rounded to 6 places), and
            # exactly what the vectorized way gives for the transform's features
            assert all(abs(a["score"] - b["score"]) <= 2e-6 for a, b in zip(got, expected))
            scores = served.linear.score_features(served.transform.transform_instances(request))
            assert got == [{"label": int(s >= 0.5), "score": round(s, 6)} for s in scores.tolist()]
    assert refused >= 3 * 14


def _copy(model_dir: str, to: Path) -> Path:
    return Path(shutil.copytree(model_dir, to))


def test_falls_back_to_onnx_runtime_without_or_with_wrong_coefficients(bundle, tmp_path, caplog):
    model_dir, instances = bundle
    without = _copy(model_dir, tmp_path / "without")
    (without / model.LINEAR_FILE).unlink()
    loaded = model.load(without, serving=True)
    assert type(loaded) is model.OnnxModel and "linear" not in vars(loaded)
    assert "predict_instances" not in vars(loaded)

    wrong = _copy(model_dir, tmp_path / "wrong")
    spec = json.loads((wrong / model.LINEAR_FILE).read_text())
    spec["coefficients"][0] += 1e-3  # a coefficient that does not describe model.onnx
    (wrong / model.LINEAR_FILE).write_text(json.dumps(spec))
    with caplog.at_level("WARNING"):
        loaded = model.load(wrong, serving=True)
    assert "linear" not in vars(loaded) and "does not reproduce" in caplog.text
    ort = model.OnnxModel(metadata=loaded.metadata, transform=loaded.transform, estimator=loaded.estimator)
    assert loaded.predict_instances(instances[:7]) == ort.predict_instances(instances[:7])

    for name, change in (("format", {"format": "other"}), ("link", {"link": "identity"}), ("width", {"coefficients": [1.0]})):
        broken = _copy(model_dir, tmp_path / name)
        (broken / model.LINEAR_FILE).write_text(json.dumps({**spec, **change}))
        assert "linear" not in vars(model.load(broken, serving=True))


def test_batch_prediction_gives_exactly_the_served_numbers(bundle, trained_model, tmp_path):
    import pyarrow.dataset as ds

    from cauce.components.batch_predict.executor import SPLIT, run_batch_predict
    from cauce.demo import DEMO_KEY

    raw, _, _, model_dir = trained_model
    out = tmp_path / "predictions"
    run_batch_predict(model_dir, output_dir=str(out), key_column=DEMO_KEY, input_dataset_dir=raw, input_split="eval", batch_size=300)
    predictions = ds.dataset(out / SPLIT, format="parquet").to_table()
    rows = data.read_split(raw, "eval")
    served = model.load(model_dir, serving=True)
    fields = served.transform.input_features
    by_key = dict(zip(predictions.column(DEMO_KEY).to_pylist(), predictions.column("score").to_pylist()))
    instances = rows.select(fields).to_pylist()
    scores = served.linear.score_instances(instances)  # the served path, unrounded
    assert scores is not None and len(scores) == rows.num_rows
    assert [by_key[key] for key in rows.column(DEMO_KEY).to_pylist()] == scores
    # and the server's answers are those numbers, rounded to 6 places
    answered = served.predict_instances(instances[:50])
    assert answered == [{"label": int(s >= 0.5), "score": round(s, 6)} for s in scores[:50]]


def test_round6_is_round_to_6_places_bit_for_bit():
    import random
    import struct

    generator = random.Random(5)
    values = [generator.random() for _ in range(200_000)] + [generator.random() ** 9 for _ in range(50_000)]
    values += [k / 1e6 + d for k in range(0, 1_000_001, 101) for d in (0.0, 5e-7, -5e-7, 4.999999e-7)]
    values += [0.0, 1.0, 0.5, 5e-324, 0.0000005, 0.9999995, 1.5, -0.25, 1e300, float("inf")]
    assert [struct.pack("d", model.round6(v)) for v in values] == [struct.pack("d", round(v, 6)) for v in values]


def test_requests_of_one_event_loop_turn_share_one_log_write(bundle, tmp_path):
    """With other requests in flight, the app holds each request's log line for one turn
    of the event loop; then one write(2) logs every line held, before any of those
    requests is answered."""
    import asyncio

    import orjson

    from cauce.serving.app import PredictionApp, RequestLog

    model_dir, instances = bundle
    app = PredictionApp(model.load(model_dir, serving=True), request_log=RequestLog(tmp_path, "test"))
    writes, events = [], []
    original = app.request_log._write

    def write(data: bytes) -> None:
        writes.append(data.count(b"\n"))
        events.append(("write", data.count(b"\n")))
        original(data)

    app.request_log._write = write

    async def request(i: int) -> None:
        async def receive():
            return {"type": "http.request", "body": orjson.dumps({"instances": instances[i : i + 1]}), "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                events.append(("answer", message["status"]))

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [], "client": ("127.0.0.1", 1)}
        await app(scope, receive, send)

    async def turn(count: int) -> None:
        tasks = {asyncio.ensure_future(request(i)) for i in range(count)}
        app.in_flight = tasks  # what cauce.serving.server gives the app: uvicorn's requests in flight
        await asyncio.gather(*tasks)

    asyncio.run(turn(5))
    assert writes == [5] and events[0] == ("write", 5) and events[1:] == [("answer", 200)] * 5
    writes.clear(), events.clear()
    app.in_flight = None  # a lone request (and any server that does not say): written at once
    asyncio.run(request(7))
    assert writes == [1] and events == [("write", 1), ("answer", 200)]
    lines = [orjson.loads(line) for line in app.request_log.path.read_bytes().splitlines()]
    assert [orjson.loads(line["request_payload"][0]) for line in lines] == instances[:5] + [instances[7]]
