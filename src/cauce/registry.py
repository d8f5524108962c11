"""Publish compiled pipeline specs as templates in a KFP registry, normally an
Artifact Registry "Kubeflow Pipelines" repository
(``https://<region>-kfp.pkg.dev/<project>/<repository>``), with
``kfp.registry.RegistryClient``.

On Artifact Registry the client authenticates with Application Default
Credentials (in Cloud Build: the build's service account); nothing secret is
passed here. Vertex runs an uploaded template by its URL:
``https://<region>-kfp.pkg.dev/<project>/<repository>/<package>/<tag>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cauce import __version__
from cauce.artifacts import CauceError

DEFAULT_TAGS = (__version__, "latest")


@dataclass
class Uploaded:
    spec: Path
    package: str  # the template's name (the spec's pipelineInfo.name)
    version: str  # sha256:<digest of the file>
    tags: list[str]
    url: str  # what PipelineJob(template_path=...) accepts, at the first tag


def check_tag(tag: str) -> None:
    """Tags name versions: 'sha256:' is the registry's version syntax, and the URL path
    must stay one segment."""
    if not tag or tag.startswith("sha256:") or "/" in tag or tag != tag.strip():
        raise CauceError(f"invalid template tag {tag!r}: a tag is one non-empty word, not 'sha256:...', without '/'")


def upload(
    specs: list[Path],
    host: str,
    tags: list[str] | tuple[str, ...] = DEFAULT_TAGS,
    context_file: str | None = None,
) -> list[Uploaded]:
    """Upload every spec with ``tags``, then read each tag back to confirm it names the
    uploaded version (a tag that already existed moves to the new version)."""
    from kfp.registry import RegistryClient
    from requests import HTTPError, RequestException

    tags = list(dict.fromkeys(tags))  # keep order, drop repeats
    for tag in tags:
        check_tag(tag)
    for spec in specs:
        if not Path(spec).is_file():
            raise CauceError(f"no compiled spec at {spec}; compile it with `cauce compile`")
        _pipeline_name(spec)
    try:
        client = RegistryClient(host=host, config_file=context_file)
    except ValueError as error:  # no host, or a context file that does not exist
        raise CauceError(f"cannot use the KFP registry {host!r}: {error}") from None
    results = []
    for spec in specs:
        try:
            package, version = client.upload_pipeline(file_name=str(spec), tags=tags)
            version = version.strip()
            moved = [t for t in tags if not client.get_tag(package, t).get("version", "").endswith(f"/versions/{version}")]
        except HTTPError as error:
            response = error.response
            raise CauceError(
                f"the registry refused {spec} ({response.status_code} from {response.url}): {response.text.strip()[:300]}"
            ) from None
        except RequestException as error:
            raise CauceError(f"cannot reach the KFP registry at {host}: {error}") from None
        if moved:
            raise CauceError(f"uploaded {package} {version}, but tags {moved} do not point at it")
        url = f"{host.rstrip('/')}/{package}/{tags[0] if tags else version}"
        results.append(Uploaded(Path(spec), package, version, tags, url))
    return results


def _pipeline_name(spec: Path) -> str:
    try:
        document = yaml.safe_load(Path(spec).read_text())
        return document["pipelineInfo"]["name"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise CauceError(f"{spec} is not a compiled pipeline spec (no pipelineInfo.name)") from None
