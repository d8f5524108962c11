"""cauce.lineage on its own: what a record gives back to rebuild a model, and where the
commit a spec was compiled from ends up (only in the training spec's ``code_version``
default: the exported component files, which `cauce export --check` compares with the
committed ones, do not depend on it)."""

from __future__ import annotations

import yaml

from cauce import lineage


def record(**model) -> dict:
    return {
        "source": {"query": "SELECT * FROM `d.t`", "key_column": "id", "split_ratios": {"train": 0.8, "eval": 0.2},
                   "backend": "local", "query_parameters": {"day": "2026-01-01"}, "local_engine": {"database": "/x.duckdb"}},
        "data": {"transform_recipe": {"steps": [{"type": "zscore", "columns": ["a"]}]}},
        "model": {"framework": "sklearn", "model_type": "lightgbm", "task": "binary", "label": "y", "seed": 42,
                  "splits": {"train": "train", "eval": "eval"}, "hyperparameters": {"num_leaves": 31, "max_depth": -1,
                  "class_weight": None}, **model},
    }  # fmt: skip


def test_rebuild_gives_back_the_hyperparameters_as_given_and_the_pipeline_parameters():
    rebuilt = lineage.rebuild_arguments(record(hyperparameters_given={"num_leaves": 15.0}))
    assert rebuilt["train"]["hyperparameters"] == {"num_leaves": 15.0}
    assert rebuilt["pipeline"] == {
        "source": "SELECT * FROM `d.t`", "key_column": "id", "label": "y", "splits": {"train": 0.8, "eval": 0.2},
        "query_parameters": {"day": "2026-01-01"}, "task": "binary", "framework": "sklearn",
        "hyperparameters": {"num_leaves": 15.0}, "local_database": "/x.duckdb",
        # the recipe replaces the feature-list shorthand it was made from
        "transform_recipe": {"steps": [{"type": "zscore", "columns": ["a"]}]}, "numeric_features": [], "categorical_features": [],
    }  # fmt: skip
    # Nothing given: the framework's defaults, not the estimator's resolved parameters.
    assert lineage.rebuild_arguments(record(hyperparameters_given={}))["train"]["hyperparameters"] == {}


def test_a_record_from_before_the_given_hyperparameters_falls_back_to_the_resolved_ones():
    rebuilt = lineage.rebuild_arguments(record())
    assert rebuilt["train"]["hyperparameters"] == {"model_type": "lightgbm", "num_leaves": 31, "max_depth": -1}


def test_the_trigger_and_the_given_hyperparameters_are_recorded():
    card = {"framework": "sklearn", "hyperparameters": {"num_leaves": 31}, "hyperparameters_given": {}, "seed": 42}
    trigger = {"reason": "drift", "drift_report_uri": "gs://b/m/drift_report", "drifted_features": ["fare"]}
    built = lineage.build_record("m", card, "/m", "abc", trigger=trigger, transform_recipe={"steps": []})
    assert built["model"]["hyperparameters_given"] == {} and built["model"]["hyperparameters"] == {"num_leaves": 31}
    assert built["trigger"] == trigger and built["data"]["transform_recipe"] == {"steps": []}
    assert lineage.summary_tags(built)["trigger"] == "drift"


def test_the_commit_is_only_in_the_training_specs_code_version(tmp_path, monkeypatch):
    """Compiled with two commits, the training spec differs only in code_version's
    default; the exported component files are the same (so `cauce export --check` on a
    clean checkout of any commit compares equal)."""
    from kfp import compiler

    from cauce import catalogue
    from cauce.pipelines.training import build_training_pipeline

    specs, exported = [], []
    for commit in ("1" * 40, "2" * 40):
        monkeypatch.setenv("CAUCE_CODE_COMMIT", commit)
        path = tmp_path / f"{commit[0]}.yaml"
        compiler.Compiler().compile(build_training_pipeline(), str(path))
        specs.append(yaml.safe_load(path.read_text()))
        exported.append(catalogue.rendered_files(root=tmp_path))
    assert exported[0] == exported[1]
    first, second = (spec["root"]["inputDefinitions"]["parameters"].pop("code_version")["defaultValue"] for spec in specs)
    assert (first["commit"], second["commit"]) == ("1" * 40, "2" * 40)
    assert specs[0] == specs[1]
