"""Preflight: every parameter checked against the source's schema and the task, all
problems in one message with the valid choices; empty features and thresholds resolved;
and the training spec's shape (preflight first, one train task per framework family)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from cauce import load, tasks
from cauce.artifacts import CauceError
from cauce.components.preflight.executor import run_preflight


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("preflight")
    lines = "".join(f"{i},{i % 2},{i % 3},{i * 0.5},c{i % 4},{'' if i % 10 == 0 else i * 1.5}\n" for i in range(100))
    (folder / "data.csv").write_text("id,binary,classes,x,kind,value\n" + lines)
    load.load(folder / "local.duckdb", "mine.t", [str(folder / "data.csv")])
    return folder / "local.duckdb"


def check(database, **overrides):
    values = dict(source="mine.t", key_column="id", label="binary", local_database=str(database), check_port=False)
    return run_preflight(**{**values, **overrides})


def test_empty_features_and_thresholds_resolve_from_the_schema_and_the_task(database):
    result = check(database)
    assert result.numeric_features == ["classes", "x", "value"] and result.categorical_features == ["kind"]
    assert result.thresholds == {"auc": 0.5} and result.change_thresholds == {"auc": 0.0}
    regression = check(database, label="value", task="regression", thresholds={"mean_absolute_error": {"upper_bound": 9}})
    assert regression.thresholds == {"mean_absolute_error": {"upper_bound": 9}}
    assert regression.change_thresholds == {"root_mean_squared_error": 0.0}
    assert regression.label_counts == {"rows": 100, "missing_label": 10}
    assert check(database, label="classes", task="multiclass", numeric_features=["x"]).numeric_features == ["x"]


def test_every_problem_in_one_message_with_the_valid_choices(database):
    with pytest.raises(CauceError) as raised:
        check(
            database, key_column="nope", label="kind", task="binary", framework="jax",
            numeric_features=["kind", "ghost"], slice_features=["x,ghost2"], thresholds={"rmse": 1},
            change_thresholds={"accuracy": 0}, canary_traffic_percentage=0, validation_policy="maybe",
            splits={"train": 0.8, "test": 0.2},
        )  # fmt: skip
    message = str(raised.value)
    for expected in (
        "framework 'jax' is not one of ['sklearn', 'keras', 'torch']",
        "thresholds names 'rmse', not a binary metric; valid: ['auc'",
        "change_thresholds names 'accuracy'",
        "canary_traffic_percentage 0 must be a whole number 1..100",
        "validation_policy 'maybe' is not one of ['fail', 'warn']",
        "has no 'eval' split",
        "key_column 'nope' is not a column of the source; columns: id INT64, binary INT64",
        "label 'kind' is STRING; a binary label holds 0/1 numbers or booleans (strings: task multiclass)",
        "numeric_features: 'kind' is the label",
        "numeric_features: 'ghost' is not a column",
        "slice_features: 'ghost2' (in 'x,ghost2') is not a column",
    ):
        assert expected in message, (expected, message)
    assert message.startswith("preflight found 11 problem(s)")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"label": "x"}, "label 'x' holds [0.0, 0.5, 1.0, 1.5, 2.0] ...; a binary label holds 0 and 1 (100 distinct values"),
        ({"label": "kind", "task": "regression"}, "label 'kind' is STRING; a regression label holds numbers"),
        ({"source": ""}, "source is empty: name a table"),
        ({"source": "mine.missing"}, "source:"),
        ({"label": ""}, "label is empty: name the column to predict"),
        ({"transform_recipe": {"steps": [{"type": "zscore", "columns": ["ghost"]}]}}, "transform_recipe reads ['ghost']"),
        ({"transform_recipe": {"steps": [{"type": "nope"}]}}, "transform_recipe:"),
        ({"hyperparameters": {"model_type": "deep_forest"}}, "hyperparameters for sklearn"),
    ],
)
def test_each_kind_of_mistake_is_caught(database, overrides, expected):
    with pytest.raises(CauceError, match="preflight found") as raised:
        check(database, **overrides)
    assert expected in str(raised.value)


def test_a_busy_port_is_refused_unless_the_endpoint_itself_holds_it(database, tmp_path, monkeypatch):
    monkeypatch.setenv("CAUCE_HOME", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CauceError, match=f"port {port} is in use by another program"):
            check(database, port=port, endpoint_name="mine", check_port=True)
        state = tmp_path / "serving" / "mine" / "state.json"
        state.parent.mkdir(parents=True)
        state.write_text(f'{{"port": {port}}}')
        check(database, port=port, endpoint_name="mine", check_port=True)


def test_task_metric_names_are_the_ones_evaluate_computes():
    from cauce.components.evaluate.executor import LOWER_IS_BETTER, TASK_METRICS

    for task in tasks.TASKS:
        assert set(tasks.METRICS[task]) == set(TASK_METRICS[task].values())
        assert set(tasks.DEFAULT_THRESHOLDS[task]) | set(tasks.DEFAULT_CHANGE_THRESHOLDS[task]) <= set(tasks.METRICS[task])
    assert tasks.LOWER_IS_BETTER == LOWER_IS_BETTER


def test_training_spec_has_neutral_defaults_preflight_first_and_a_train_task_per_image_family(tmp_path):
    from cauce import spec
    from cauce.images import image_for

    path = spec.compile_pipeline("training", tmp_path)
    document = yaml.safe_load(path.read_text())
    defaults = {name: p.get("defaultValue") for name, p in document["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["source"] == "" and defaults["label"] == "" and defaults["key_column"] == ""
    assert defaults["slice_features"] == [] and defaults["thresholds"] == {} and defaults["change_thresholds"] == {}
    assert defaults["framework"] == "sklearn" and "taxi" not in str(defaults)
    tasks_ = document["root"]["dag"]["tasks"]
    assert "preflight" in tasks_["extract"]["dependentTasks"]
    executors = document["deploymentSpec"]["executors"]
    train_images = {e["container"]["image"] for name, e in executors.items() if name.startswith("exec-train")}
    assert train_images == {image_for("base"), image_for("tf"), image_for("torch")}
    spec.validate_spec(path)


def test_vertex_variant_builds_one_framework_and_preflight_refuses_others(tmp_path):
    from cauce import spec
    from cauce.pipelines.vertex_training import compile_vertex_training_pipeline

    path = compile_vertex_training_pipeline(str(tmp_path / "v.yaml"), framework="keras")
    document = yaml.safe_load(Path(path).read_text())
    assert document["root"]["inputDefinitions"]["parameters"]["framework"]["defaultValue"] == "keras"
    spec.validate_spec(path)
    with pytest.raises(CauceError, match=r"framework 'torch' is not one of \['keras'\] \(this spec was built for it only\)"):
        run_preflight("", "", "", framework="torch", frameworks=["keras"], check_port=False)
