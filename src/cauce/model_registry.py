"""Operating registered models: list and explain versions, approve or reject a pending
one, roll the champion back. MLflow (sqlite) with the local endpoint, or Vertex AI Model
Registry with Vertex endpoints: the same operations, what `cauce models` calls.

A version's story is kept in the registry itself: its aliases (``champion``,
``challenger``, ``pending``), its status (MLflow tag ``cauce.status`` / Vertex label
``cauce-status``: pending, champion, challenger, rejected, retired, rolled-back), the
champion it replaced (``cauce.replaced``: where a rollback goes back to) and its lineage
record (cauce.lineage), whose ``deployment`` says how the training run served it: an
approval or a rollback deploys with the same endpoint, port and canary share, through
deploy's own traffic rules (the serving version answers until its successor passed its
smoke test).

Every operation checks everything it can before it changes anything: approving a
version that is not pending, rejecting one that is not pending, rolling back with no
previous champion are errors that leave registry and endpoint as they were. A deploy
that fails leaves the registry as it was too (deploy itself restores the traffic).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cauce.artifacts import CauceError
from cauce.components.register.executor import (
    LINEAGE_TAG,
    MODEL_DIR_TAG,
    REASON_TAG,
    REPLACED_TAG,
    STATUS_TAG,
    vertex_label_key,
)

_REF = re.compile(r"(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?")


@dataclass
class Version:
    name: str
    version: str
    aliases: list[str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    lineage_uri: str = ""
    replaced: str = ""
    reason: str = ""
    model_dir: str = ""  # where the registry keeps the files (a local folder or gs://)
    known_dirs: tuple[str, ...] = ()  # every folder a deployment of this version may name
    resource_name: str = ""  # Vertex: projects/.../models/<id>
    created: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` -> (name, alias, version)."""
    match = _REF.fullmatch(ref or "")
    if not match:
        raise CauceError(f"{ref!r} does not name a model version: expected NAME, NAME@ALIAS or NAME/VERSION (a number)")
    return match["name"], match["alias"] or "", match["version"] or ""


def _smoke_instances(record: dict[str, Any], model_dir: str) -> list[dict] | None:
    """A few rows of the training run's eval split, when its dataset is still there."""
    from cauce.components.deploy.executor import smoke_instances_from

    dataset = ((record or {}).get("data") or {}).get("dataset_uri") or ""
    if not dataset or not Path(dataset).is_dir():
        return None
    try:
        return smoke_instances_from(dataset, "eval", model_dir, 5)
    except (CauceError, OSError, KeyError, ValueError):
        return None


def deployment_settings(record: dict[str, Any] | None, **overrides: Any) -> dict[str, Any]:
    """How to serve a version: its training run's deployment, options given win."""
    recorded = dict(((record or {}).get("deployment")) or {})
    settings = {
        "endpoint_name": recorded.get("endpoint_name") or "",
        "port": int(float(recorded.get("port") or 8080)),
        "canary_traffic_percentage": int(float(recorded.get("canary_traffic_percentage") or 100)),
        "machine_type": recorded.get("machine_type") or "n1-standard-2",
    }
    settings.update({key: value for key, value in overrides.items() if value not in (None, "", 0)})
    if not settings["endpoint_name"]:
        raise CauceError("no endpoint to deploy to: the version records none; pass --endpoint NAME")
    return settings


class _Registry:
    """What both registries share: the checks and the order of the steps."""

    target = ""

    def list(self, name: str) -> list[Version]:
        raise NotImplementedError

    def get(self, name: str, alias: str = "", version: str = "") -> Version:
        raise NotImplementedError

    def resolve(self, ref: str, default_alias: str = "") -> Version:
        name, alias, version = parse_ref(ref)
        if not alias and not version:
            if not default_alias:
                raise CauceError(f"{ref!r} names a model, not a version: give NAME/VERSION or NAME@ALIAS")
            alias = default_alias
        return self.get(name, alias, version)

    def lineage(self, version: Version) -> dict[str, Any] | None:
        from cauce import lineage

        if not version.lineage_uri:
            return None
        return lineage.read_record(version.lineage_uri)

    def approve(self, ref: str, **overrides: Any) -> dict[str, Any]:
        """Deploy a pending version through deploy's canary path, then make it champion."""
        version = self.resolve(ref)
        if version.status != "pending":
            raise CauceError(
                f"{version.label} is {version.status or 'not marked'}, not pending: only a version a training run "
                "left waiting for approval (require_approval=true) can be approved"
            )
        champion = self._alias_version(version.name, "champion")
        deployed = self._deploy(version, deployment_settings(self._record_or_none(version), **overrides))
        self._promote(version, replaced=champion.version if champion else "", drop_alias="pending")
        return {"version": version.label, "replaced": champion.version if champion else "", **deployed}

    def make_champion(self, name: str, version: str) -> dict[str, Any]:
        """Point ``champion`` at a version a deploy has just put in service: its status
        becomes champion, the one it replaced retired (what rollback goes back to), and
        ``pending`` is dropped. The training pipeline's deploy step calls it last, so the
        alias never names a version nothing serves (a failed deploy leaves the version
        pending, for `cauce models approve` to retry or `reject`)."""
        target = self.get(name, version=version)
        champion = self._alias_version(name, "champion")
        replaced = champion.version if champion and champion.version != target.version else ""
        self._promote(target, replaced=replaced, drop_alias="pending")
        return {"version": target.label, "replaced": replaced}

    def reject(self, ref: str, reason: str) -> Version:
        version = self.resolve(ref)
        if not reason or not reason.strip():
            raise CauceError("say why the version is rejected: --reason TEXT")
        if version.status != "pending":
            raise CauceError(f"{version.label} is {version.status or 'not marked'}, not pending: only a pending version can be rejected")
        self._set_status(version, "rejected", reason=reason.strip(), drop_alias="pending")
        return version

    def rollback(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Serve the champion the current one replaced again, and make it champion."""
        current = self._alias_version(name, "champion")
        if current is None:
            self.list(name)  # an unknown model is named as such
            raise CauceError(f"model {name!r} has no champion: there is nothing to roll back")
        if not current.replaced:
            raise CauceError(
                f"{current.label} is the first champion of {name!r}: there is no previous champion to roll back to"
            )
        previous = self.get(name, version=current.replaced)
        settings = deployment_settings(self._record_or_none(current) or self._record_or_none(previous), **overrides)
        deployed = self._deploy(previous, settings)
        self._restore(previous, current)
        return {"version": previous.label, "rolled_back": current.label, **deployed}

    def _record_or_none(self, version: Version) -> dict[str, Any] | None:
        try:
            return self.lineage(version)
        except CauceError:
            return None

    def _alias_version(self, name: str, alias: str) -> Version | None:
        try:
            return self.get(name, alias=alias)
        except CauceError:
            return None


# -- MLflow and the local endpoint -----------------------------------------------------------


class LocalRegistry(_Registry):
    target = "local"

    def __init__(self, tracking_uri: str = ""):
        from cauce.components.register.executor import mlflow_client

        self.client = mlflow_client(tracking_uri)

    def _model_exists(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            names = sorted(model.name for model in self.client.search_registered_models())
            raise CauceError(f"no registered model {name!r} in MLflow; registered: {names or 'none'}") from None

    def _version(self, mv: Any) -> Version:
        tags = dict(mv.tags or {})
        model_dir = self._files(mv)
        return Version(
            name=mv.name,
            version=str(mv.version),
            aliases=sorted(mv.aliases or []),
            status=tags.get(STATUS_TAG, ""),
            metrics={k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")},
            lineage_uri=tags.get(LINEAGE_TAG, ""),
            replaced=tags.get(REPLACED_TAG, ""),
            reason=tags.get(REASON_TAG, ""),
            model_dir=model_dir,
            known_dirs=tuple(d for d in (model_dir, tags.get(MODEL_DIR_TAG, "")) if d),
            created=_iso(mv.creation_timestamp),
            tags=tags,
        )

    def _files(self, mv: Any) -> str:
        from urllib.parse import unquote, urlparse

        uri = mv.source
        if uri.startswith("runs:/"):
            run_id, _, relative = uri[len("runs:/") :].partition("/")
            uri = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{relative}"
        parsed = urlparse(uri)
        return unquote(parsed.path) if parsed.scheme in ("file", "") else uri

    def list(self, name: str) -> list[Version]:
        self._model_exists(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        # Search results carry no aliases: read each version itself.
        full = [self.client.get_model_version(name, mv.version) for mv in found]
        return sorted((self._version(mv) for mv in full), key=lambda v: int(v.version))

    def get(self, name: str, alias: str = "", version: str = "") -> Version:
        from mlflow.exceptions import MlflowException

        self._model_exists(name)
        try:
            mv = self.client.get_model_version_by_alias(name, alias) if alias else self.client.get_model_version(name, version)
        except MlflowException:
            what = f"alias {alias!r}" if alias else f"version {version}"
            raise CauceError(f"model {name!r} has no {what}; see `cauce models list {name}`") from None
        return self._version(mv)

    def deployments(self, version: Version) -> list[dict[str, Any]]:
        """The local endpoints serving ``version`` and its share of their traffic."""
        from cauce.paths import cauce_home

        found = []
        dirs = {str(Path(d).resolve()) for d in version.known_dirs}
        for state_file in sorted((cauce_home() / "serving").glob("*/state.json")):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            for deployed_id, model_dir in (state.get("deployments") or {}).items():
                if str(Path(model_dir).resolve()) in dirs:
                    found.append({
                        "endpoint": state.get("endpoint"), "url": state.get("predict_url"),
                        "deployed_model_id": deployed_id,
                        "traffic": (state.get("traffic_split") or {}).get(deployed_id, 0),
                    })  # fmt: skip
        return found

    def _deploy(self, version: Version, settings: dict[str, Any]) -> dict[str, Any]:
        from cauce.components.deploy.executor import deploy_local, local_endpoint

        current = local_endpoint(settings["endpoint_name"]) or {}
        record = self._record_or_none(version)
        result = deploy_local(
            model_dir=version.model_dir,
            endpoint_name=settings["endpoint_name"],
            port=settings["port"],
            # The serving process keeps its log folder: a rollout reuses the running process.
            request_log_dir=current.get("request_log_dir", ""),
            smoke_instances=_smoke_instances(record, version.model_dir),
            traffic_percentage=settings["canary_traffic_percentage"],
            promote=True,
        )
        return {"endpoint_url": result["predict_url"], "deployed_model_id": result["deployed_model_id"], "rollout": result.get("rollout", "")}

    def _promote(self, version: Version, replaced: str, drop_alias: str = "") -> None:
        from cauce.components.register.executor import set_mlflow_status

        self.client.set_registered_model_alias(version.name, "champion", version.version)
        if drop_alias and drop_alias in version.aliases:
            self.client.delete_registered_model_alias(version.name, drop_alias)
        set_mlflow_status(self.client, version.name, version.version, "champion", replaced=replaced)

    def _set_status(self, version: Version, status: str, reason: str = "", drop_alias: str = "") -> None:
        from cauce.components.register.executor import set_mlflow_status

        if drop_alias and drop_alias in version.aliases:
            self.client.delete_registered_model_alias(version.name, drop_alias)
        set_mlflow_status(self.client, version.name, version.version, status, reason=reason)

    def _restore(self, previous: Version, current: Version) -> None:
        self.client.set_registered_model_alias(previous.name, "champion", previous.version)
        self.client.set_model_version_tag(previous.name, previous.version, STATUS_TAG, "champion")
        self.client.set_model_version_tag(current.name, current.version, STATUS_TAG, "rolled-back")


def _iso(millis: Any) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(int(millis) / 1000, dt.timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return ""


# -- Vertex AI Model Registry and endpoints --------------------------------------------------


class VertexRegistry(_Registry):
    target = "google-cloud"

    def __init__(self, project: str, region: str, api_endpoint: str = "", credentials: Any = None):
        from cauce.components.register.executor import init_vertex

        self.project, self.region, self.api_endpoint, self.credentials = project, region, api_endpoint, credentials
        self.aiplatform = init_vertex(project, region, api_endpoint, credentials)

    def _parent(self, name: str) -> Any:
        from cauce.components.register.executor import newest_resource

        parent = newest_resource(self.aiplatform.Model.list(filter=f'display_name="{name}"'))
        if parent is None:
            raise CauceError(f"no model named {name!r} in Vertex AI Model Registry ({self.project}, {self.region})")
        return parent

    def _version(self, name: str, model: Any) -> Version:
        labels = dict(model.labels or {})
        resource = model.gca_resource
        description = resource.description or ""
        lineage = re.search(r"lineage: (\S+)", description)
        metrics = {}
        for name_value in re.findall(r"([\w.]+)=([-\d.eE+]+)", description.split(";")[0]):
            try:
                metrics[name_value[0]] = float(name_value[1])
            except ValueError:
                pass
        version_description = resource.version_description or ""
        return Version(
            name=name,
            version=str(model.version_id),
            aliases=sorted(a for a in resource.version_aliases if a != "default"),
            status=labels.get(vertex_label_key(STATUS_TAG), ""),
            metrics=metrics,
            lineage_uri=lineage[1] if lineage else "",
            replaced=labels.get(vertex_label_key(REPLACED_TAG), ""),
            reason=version_description.split(": ", 1)[1] if ": " in version_description else "",
            model_dir=model.uri or "",
            known_dirs=(model.uri or "",),
            resource_name=model.resource_name,
            created=str(resource.version_create_time or ""),
            tags=labels,
        )

    def list(self, name: str) -> list[Version]:
        parent = self._parent(name)
        registry = self.aiplatform.models.ModelRegistry(parent.resource_name)
        versions = [self._version(name, registry.get_model(info.version_id)) for info in registry.list_versions()]
        return sorted(versions, key=lambda v: int(v.version))

    def get(self, name: str, alias: str = "", version: str = "") -> Version:
        from google.api_core import exceptions

        parent = self._parent(name)
        try:
            model = self.aiplatform.Model(model_name=f"{parent.resource_name}@{alias or version}")
        except exceptions.NotFound:
            what = f"alias {alias!r}" if alias else f"version {version}"
            raise CauceError(f"model {name!r} has no {what}; see `cauce models list {name} --target google-cloud`") from None
        return self._version(name, model)

    def deployments(self, version: Version) -> list[dict[str, Any]]:
        found = []
        for endpoint in self.aiplatform.Endpoint.list():
            split = dict(endpoint.traffic_split or {})
            for deployed in endpoint.list_models():
                if deployed.model == version.resource_name and str(deployed.model_version_id) == version.version:
                    found.append({"endpoint": endpoint.display_name, "url": endpoint.resource_name,
                                  "deployed_model_id": deployed.id, "traffic": split.get(deployed.id, 0)})
        return found

    def _deploy(self, version: Version, settings: dict[str, Any]) -> dict[str, Any]:
        from cauce.components.deploy.vertex import deploy_vertex

        record = self._record_or_none(version)
        result = deploy_vertex(
            model_resource_name=f"{version.resource_name}@{version.version}",
            endpoint_display_name=settings["endpoint_name"],
            project=self.project,
            location=self.region,
            machine_type=settings["machine_type"],
            traffic_percentage=settings["canary_traffic_percentage"],
            smoke_instances=_smoke_instances(record, version.model_dir) if version.model_dir.startswith("/") else None,
            api_endpoint=self.api_endpoint,
            credentials=self.credentials,
            promote=True,
        )
        return {"endpoint_url": result["endpoint_url"], "deployed_model_id": result["deployed_model_id"]}

    def _registry(self, version: Version) -> Any:
        return self.aiplatform.models.ModelRegistry(version.resource_name)

    def _promote(self, version: Version, replaced: str, drop_alias: str = "") -> None:
        from cauce.components.register.executor import set_vertex_status

        registry = self._registry(version)
        registry.add_version_aliases(["champion"], version.version)
        if drop_alias and drop_alias in version.aliases:
            registry.remove_version_aliases([drop_alias], version.version)
        set_vertex_status(
            self.project, self.region, version.resource_name, version.version, "champion", replaced=replaced,
            api_endpoint=self.api_endpoint, credentials=self.credentials,
        )  # fmt: skip

    def _set_status(self, version: Version, status: str, reason: str = "", drop_alias: str = "") -> None:
        from cauce.components.register.executor import set_vertex_status

        if drop_alias and drop_alias in version.aliases:
            self._registry(version).remove_version_aliases([drop_alias], version.version)
        set_vertex_status(
            self.project, self.region, version.resource_name, version.version, status, reason=reason,
            api_endpoint=self.api_endpoint, credentials=self.credentials,
        )  # fmt: skip

    def _restore(self, previous: Version, current: Version) -> None:
        from cauce.components.register.executor import update_vertex_version

        self._registry(previous).add_version_aliases(["champion"], previous.version)
        status = vertex_label_key(STATUS_TAG)
        update_vertex_version(self.aiplatform, f"{previous.resource_name}@{previous.version}", labels={status: "champion"})
        update_vertex_version(self.aiplatform, f"{current.resource_name}@{current.version}", labels={status: "rolled-back"})


def open_registry(
    target: str = "local", tracking_uri: str = "", project: str = "", region: str = "", api_endpoint: str = ""
) -> _Registry:
    if target == "local":
        return LocalRegistry(tracking_uri)
    if target == "google-cloud":
        if not project or not region:
            raise CauceError("--target google-cloud needs --project and --region (the Vertex AI Model Registry's)")
        return VertexRegistry(project, region, api_endpoint)
    raise CauceError(f"--target must be 'local' or 'google-cloud', got {target!r}")
