"""`cauce upload`: compiled specs to an Artifact Registry KFP repository through the
real ``kfp.registry.RegistryClient``, against the local stand-in in
tests/fixtures/kfp_registry.py (no mocks of the client)."""

import socket

import pytest
import yaml
from kfp.registry import RegistryClient
from typer.testing import CliRunner

from cauce import __version__, spec
from cauce.cli import app
from tests.fixtures.kfp_registry import kfp_registry  # noqa: F401

runner = CliRunner()


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("specs")
    return {name: spec.compile_pipeline(name, out) for name in ("training", "monitoring")}


def upload(registry, *arguments):
    return runner.invoke(
        app, ["upload", *map(str, arguments), "--host", registry.host, "--registry-context", str(registry.context_file)]
    )


def test_upload_publishes_templates_tagged_with_the_version_and_latest(kfp_registry, specs):  # noqa: F811
    result = upload(kfp_registry, specs["training"], specs["monitoring"])
    assert result.exit_code == 0, result.output
    assert set(kfp_registry.versions) == {"cauce-training", "cauce-monitoring"}  # named by pipelineInfo.name
    assert kfp_registry.tags["cauce-training"].keys() == {__version__, "latest"}
    assert f"template: {kfp_registry.host}/cauce-training/{__version__}" in result.output

    # What a consumer sees through the real client: the same bytes, under the tag and the version.
    client = RegistryClient(host=kfp_registry.host, config_file=str(kfp_registry.context_file))
    [version] = client.list_versions("cauce-training")
    assert {t["name"].rsplit("/", 1)[-1] for t in version["relatedTags"]} == {__version__, "latest"}
    downloaded = client.download_pipeline("cauce-training", tag="latest", file_name=str(specs["training"].parent / "got.yaml"))
    assert open(downloaded).read() == specs["training"].read_text()


def test_a_new_upload_moves_latest_and_keeps_the_old_version(kfp_registry, specs, tmp_path):  # noqa: F811
    assert upload(kfp_registry, specs["training"]).exit_code == 0
    first = kfp_registry.tags["cauce-training"]["latest"]
    changed = yaml.safe_load(specs["training"].read_text())
    changed["pipelineInfo"]["description"] = "a later build"
    later = tmp_path / "training.yaml"
    later.write_text(yaml.safe_dump(changed))

    result = upload(kfp_registry, later, "--tag", "latest", "--tag", "nightly")
    assert result.exit_code == 0, result.output
    tags = kfp_registry.tags["cauce-training"]
    assert tags["latest"] == tags["nightly"] != first and tags[__version__] == first
    assert len(kfp_registry.versions["cauce-training"]) == 2
    # Uploading identical bytes again is the same version: nothing new to run.
    assert upload(kfp_registry, later, "--tag", "again").exit_code == 0
    assert len(kfp_registry.versions["cauce-training"]) == 2 and tags["again"] == tags["latest"]


def test_upload_without_specs_compiles_every_pipeline(kfp_registry):  # noqa: F811
    result = upload(kfp_registry, "--tag", "dev")
    assert result.exit_code == 0, result.output
    assert {p: set(t) for p, t in kfp_registry.tags.items()} == {"cauce-training": {"dev"}, "cauce-monitoring": {"dev"}}


@pytest.mark.parametrize("tag", ["sha256:abc", "a/b", " "])
def test_invalid_tags_are_refused_before_uploading(kfp_registry, specs, tag):  # noqa: F811
    result = upload(kfp_registry, specs["training"], "--tag", tag)
    assert result.exit_code == 1 and "invalid template tag" in result.output
    assert not kfp_registry.requests


def test_errors_name_the_problem(kfp_registry, specs, tmp_path):  # noqa: F811
    not_a_spec = tmp_path / "notes.yaml"
    not_a_spec.write_text("hello: world\n")
    result = upload(kfp_registry, not_a_spec)
    assert result.exit_code == 1 and "not a compiled pipeline spec" in result.output

    wrong_repository = runner.invoke(
        app,
        ["upload", str(specs["training"]), "--host", f"{kfp_registry.base_url}/acme-ml/no-such-repo",
         "--registry-context", str(kfp_registry.context_file)],
    )  # fmt: skip
    assert wrong_repository.exit_code == 1 and "the registry refused" in wrong_repository.output
    assert "404" in wrong_repository.output

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = runner.invoke(app, ["upload", str(specs["training"]), "--host", f"http://127.0.0.1:{port}/p/r"])
    assert unreachable.exit_code == 1 and "cannot reach the KFP registry" in unreachable.output
