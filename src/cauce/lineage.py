"""Lineage: where a registered model version came from, as one JSON record.

The register step gathers the record from what the run's steps already wrote — the
extract Dataset's metadata (query, its hash and parameters, tables, BigQuery job id or
local engine snapshot, per-split fingerprints), the model bundle's ``cauce_model.json``
(framework, hyperparameters as given to train and as resolved, seed, hashes of the fitted
transform and encoded arrays), the evaluation (blessing, reasons, metrics), the champion
lookup, the pipeline run's id and name, the code (cauce version, the images the compiled
spec names, the commit) and, when monitoring started the run, the drift that did. Nothing
is recomputed here.

The record is written as ``lineage.json`` into the register step's ``lineage`` artifact,
next to the model, and referenced from the registry version: MLflow tags (and the file
as a run artifact) locally; Vertex labels and the version description on Google Cloud.
``rebuild_arguments`` turns a record back into the inputs that make the same model.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from cauce.artifacts import CauceError

FORMAT = "cauce.lineage/v1"
LINEAGE_FILE = "lineage.json"


# -- compile time ----------------------------------------------------------------------------


def code_version(images: dict[str, str]) -> dict[str, Any]:
    """What the compiled spec carries about the code: cauce's version, the images its
    steps run (step -> image, as the spec names them) and the commit of the repository
    it was compiled from. ``CAUCE_CODE_COMMIT`` names the commit where there is no git
    checkout (a build from a source archive)."""
    from cauce import __version__

    return {"cauce": __version__, "images": dict(sorted(images.items())), "commit": _commit()}


def _commit() -> str:
    if os.environ.get("CAUCE_CODE_COMMIT"):
        return os.environ["CAUCE_CODE_COMMIT"]
    try:
        found = subprocess.run(  # noqa: S603, S607 - fixed command, no shell
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = found.stdout.strip()
    return commit if found.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def component_images(*components: Any) -> dict[str, str]:
    """step name -> container image, for the components a pipeline is built from."""
    images = {}
    for component in components:
        try:
            container = component.component_spec.implementation.container
        except AttributeError:
            continue
        if container is not None and container.image:
            images[component.component_spec.name] = container.image
    return images


# -- run time --------------------------------------------------------------------------------


def build_record(
    model_name: str,
    model_card: dict[str, Any],
    model_uri: str,
    content_hash: str,
    dataset: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    champion: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
    deployment: dict[str, Any] | None = None,
    status: str = "",
    transform_recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage record of one registered version.

    ``dataset`` is the extract Dataset as ``{"uri", "metadata"}``, ``evaluation`` the
    evaluation summary (``evaluation.json``) with its ``uri``, ``champion`` the champion
    Model artifact's metadata; each may be missing when the version was registered
    outside the training pipeline, and the record then says so (``None``).
    ``transform_recipe`` is the recipe the fitted transform was fitted from (the
    bundle's ``transform.json`` holds it)."""
    data_hashes = dict(model_card.get("data_hashes") or {})
    transform_sha256 = data_hashes.pop("transform", None)
    source = None
    data = {"transform_sha256": transform_sha256, "encoded_splits": data_hashes, "transform_recipe": transform_recipe}
    if dataset:
        meta = dataset.get("metadata") or {}
        source = {
            "backend": meta.get("backend"),
            "query": meta.get("query"),
            "query_sha256": meta.get("query_sha256"),
            "query_parameters": meta.get("query_parameters"),
            "identifiers": meta.get("identifiers"),
            "tables": meta.get("tables"),
            "key_column": meta.get("key_column"),
            "split_ratios": meta.get("split_ratios"),
            "bigquery_job_id": meta.get("job_id"),
            "local_engine": meta.get("local_engine"),
        }
        data.update(
            dataset_uri=dataset.get("uri"),
            split_rows=meta.get("split_rows"),
            split_fingerprints=meta.get("split_fingerprints"),
        )
    evaluated = None
    if evaluation:
        evaluated = {
            "uri": evaluation.get("uri"),
            "blessed": evaluation.get("blessed"),
            "reasons": evaluation.get("reasons") or [],
            "metrics": evaluation.get("metrics") or {},
            "slices": evaluation.get("slices") or [],
            "thresholds": evaluation.get("thresholds"),
            "change_thresholds": evaluation.get("change_thresholds"),
        }
    compared = None
    if champion is not None:
        compared = {
            "found": bool(champion.get("found")),
            "version": champion.get("version") or None,
            "model_dir": champion.get("model_dir") or None,
        }
    return {
        "format": FORMAT,
        "model": {
            "name": model_name,
            "uri": model_uri,
            "content_hash": content_hash,
            "status": status,
            "framework": model_card.get("framework"),
            "framework_version": model_card.get("framework_version"),
            "model_type": model_card.get("model_type"),
            "task": model_card.get("task"),
            "label": model_card.get("label"),
            "features": model_card.get("features"),
            # As given to train (what remakes the model); the estimator's resolved
            # parameters, library defaults included, are "hyperparameters".
            "hyperparameters_given": model_card.get("hyperparameters_given"),
            "hyperparameters": model_card.get("hyperparameters"),
            "seed": model_card.get("seed"),
            "splits": model_card.get("splits"),
            "metrics": model_card.get("metrics"),
            "versions": model_card.get("versions"),
        },
        "source": source,
        "data": data,
        "code": {**(code or {}), "cauce": (code or {}).get("cauce") or (model_card.get("versions") or {}).get("cauce")},
        "run": {
            "pipeline_job_id": (run or {}).get("pipeline_job_id") or None,
            "pipeline_job_name": (run or {}).get("pipeline_job_name") or None,
            "registered_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        },
        "evaluation": evaluated,
        "champion": compared,
        "trigger": trigger or None,
        "deployment": deployment or None,
    }


def write_record(record: dict[str, Any], directory: str | os.PathLike) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / LINEAGE_FILE
    target.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return target


def read_record(uri: str) -> dict[str, Any]:
    """The record at ``uri``: a ``lineage.json`` file or the folder holding it, a local
    path or ``gs://``."""
    if not uri:
        raise CauceError("this version records no lineage (it was registered without the training pipeline's record)")
    if not uri.endswith(".json"):
        uri = uri.rstrip("/") + "/" + LINEAGE_FILE
    if uri.startswith("gs://"):
        from google.api_core.exceptions import NotFound
        from google.cloud import storage

        bucket, _, name = uri[len("gs://") :].partition("/")
        try:
            text = storage.Client().bucket(bucket).blob(name).download_as_text()
        except NotFound:
            raise CauceError(f"the lineage record {uri} is gone (deleted from Cloud Storage?)") from None
    else:
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise CauceError(f"the lineage record {path} is gone (its pipeline run's folder was deleted?)")
        text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as error:
        raise CauceError(f"the lineage record {uri} is not valid JSON: {error}") from None


def summary_tags(record: dict[str, Any]) -> dict[str, str]:
    """The record's searchable core, as registry tags (MLflow: ``cauce.<key>``)."""
    source = record.get("source") or {}
    evaluation = record.get("evaluation") or {}
    champion = record.get("champion") or {}
    run = record.get("run") or {}
    code = record.get("code") or {}
    values = {
        "run_id": run.get("pipeline_job_id"),
        "run_name": run.get("pipeline_job_name"),
        "source_sha256": source.get("query_sha256"),
        "transform_sha256": (record.get("data") or {}).get("transform_sha256"),
        "seed": (record.get("model") or {}).get("seed"),
        "commit": code.get("commit"),
        "cauce_version": code.get("cauce"),
        "blessed": evaluation.get("blessed") if evaluation else None,
        "compared_with": champion.get("version") if champion.get("found") else ("none" if champion else None),
        "trigger": (record.get("trigger") or {}).get("reason"),
    }
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in values.items() if value not in (None, "")}


def rebuild_arguments(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The inputs that remake the recorded model: ``{"extract": {...}, "transform":
    {...}, "train": {...}, "pipeline": {...}}``, the last being the training pipeline's
    parameters (``cauce run training --param name=value`` for each). Transform is
    refitted from the recorded recipe (the unfitted one the bundle's ``transform.json``
    holds), train gets the hyperparameters it was given. The caller compares what it
    rebuilds with ``record["data"]`` and ``record["model"]["content_hash"]``; train's
    ``seed`` is not a pipeline parameter (the pipeline trains with 42)."""
    source, model = record.get("source"), record.get("model") or {}
    if not source or not source.get("query"):
        raise CauceError("the lineage record has no source query: the version was not registered by a training run")
    extract = {
        "source": source["query"],
        "key_column": source["key_column"],
        "splits": source["split_ratios"],
        "backend": source["backend"],
        "query_parameters": source.get("query_parameters") or {},
    }
    if source.get("local_engine"):
        extract["local_database"] = source["local_engine"]["database"]
    splits = model.get("splits") or {}
    given = model.get("hyperparameters_given")
    if given is None:
        # A record from before train kept what it was given: the resolved parameters
        # (the model type picks the estimator) remake a model of the same kind, not
        # necessarily the same bytes.
        given = {
            **({"model_type": model["model_type"]} if model.get("model_type") and model.get("framework") == "sklearn" else {}),
            # None is the estimator's own default, and KFP parameters cannot carry it.
            **{k: v for k, v in (model.get("hyperparameters") or {}).items() if v is not None},
        }
    train = {
        "hyperparameters": dict(given),
        "seed": model.get("seed"),
        "framework": _framework_key(model.get("framework")),
        "task": model.get("task"),
        "train_split": splits.get("train") or "train",
        "eval_split": splits.get("eval") or "eval",
    }
    recipe = (record.get("data") or {}).get("transform_recipe")
    transform = {"label": model.get("label"), "recipe": recipe or {}, "task": model.get("task")}
    pipeline = {
        "source": extract["source"],
        "key_column": extract["key_column"],
        "label": model.get("label"),
        "splits": extract["splits"],
        "query_parameters": extract["query_parameters"],
        "task": train["task"],
        "framework": train["framework"],
        "hyperparameters": train["hyperparameters"],
    }
    if recipe:  # the recipe replaces the feature-list shorthand it was made from
        pipeline.update(transform_recipe=recipe, numeric_features=[], categorical_features=[])
    if extract.get("local_database"):
        pipeline["local_database"] = extract["local_database"]
    return {"extract": extract, "transform": transform, "train": train, "pipeline": pipeline}


def _framework_key(framework: str | None) -> str:
    # The card names the framework as train's `framework` parameter does.
    return framework or "sklearn"
