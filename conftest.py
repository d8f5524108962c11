"""Shared pytest fixtures: an isolated CAUCE_HOME, a kfp.local runner, small
demo datasets, free ports, and the local stand-ins for Google Cloud
(tests/fixtures: the BigQuery emulator and a Vertex AI REST server)."""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = ["tests.fixtures.bigquery_emulator", "tests.fixtures.vertex_server"]


@pytest.fixture(scope="session", autouse=True)
def cauce_home(tmp_path_factory):
    """Every test session gets its own CAUCE_HOME: the suite never touches ~/.cauce,
    and subprocesses (kfp.local tasks, serving processes) inherit it."""
    home = tmp_path_factory.mktemp("cauce-home")
    previous = os.environ.get("CAUCE_HOME")
    os.environ["CAUCE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("CAUCE_HOME", None)
    else:
        os.environ["CAUCE_HOME"] = previous


@pytest.fixture
def kfp_local(tmp_path):
    """kfp.local running lightweight components in this virtualenv; returns the pipeline root."""
    from kfp import local

    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def make_raw_dataset(directory, rows: int = 4000, seed: int = 7, eval_fraction: float = 0.25):
    """A raw cauce Dataset (train/eval splits) of generated taxi trips."""
    from cauce import data
    from cauce.artifacts import atomic_dir
    from cauce.demo import generate_taxi_trips

    table = generate_taxi_trips(rows, seed)
    cut = int(rows * (1 - eval_fraction))
    with atomic_dir(directory) as out:
        split_rows = {
            "train": data.write_split(out, "train", table.slice(0, cut)),
            "eval": data.write_split(out, "eval", table.slice(cut)),
        }
        data.write_schema(out, table.schema, split_rows)
    return str(directory)


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory):
    return make_raw_dataset(tmp_path_factory.mktemp("raw") / "dataset")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, raw_dataset):
    """(raw_dataset, transformed_dir, transform_dir, model_dir) from the real transform and train executors."""
    from cauce.components.train.executor import run_train
    from cauce.components.transform.executor import run_transform
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC

    root = tmp_path_factory.mktemp("model")
    run_transform(raw_dataset, DEMO_LABEL, DEMO_NUMERIC, DEMO_CATEGORICAL, str(root / "transformed"), str(root / "transform"))
    run_train(str(root / "transformed"), str(root / "transform"), str(root / "model"), {"model_type": "logistic_regression", "max_iter": 500})
    return raw_dataset, str(root / "transformed"), str(root / "transform"), str(root / "model")


@pytest.fixture
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
