"""Both Cloud Build configs checked against Cloud Build's own ``Build`` message (the
google-cloud-build client's types, ``google.devtools.cloudbuild.v1.Build``), as the
service reads a config file: its JSON form (camelCase field names, as the YAML uses)
parsed with unknown fields rejected, so a misspelt key, a wrong type or an enum value
Cloud Build does not know fails here rather than at `gcloud builds submit`. On top of
the schema: only the fields a config file may set, every substitution used is defined
(user ones) or real (built-ins), and every program a step runs is in the repository
(or made by `make setup`, for ``.venv/bin/...``) and executable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import typer
from google.cloud.devtools.cloudbuild_v1.types import Build
from google.protobuf import json_format

from cauce.cli import app
from tests.fixtures import cloudbuild

CONFIGS = ("cloudbuild.yaml", "cloudbuild-release.yaml")

# The fields of Build a config file may set (the rest, like id, status or results, are
# the service's output; https://cloud.google.com/build/docs/build-config-file-schema).
CONFIG_FIELDS = {
    "steps", "timeout", "queueTtl", "logsBucket", "options", "substitutions", "tags",
    "serviceAccount", "secrets", "availableSecrets", "artifacts", "images",
}  # fmt: skip
# BuildStep fields that only the service fills in.
STEP_OUTPUT_FIELDS = {"timing", "pullTiming", "status", "exitCode"}
# Built-in substitutions of GitHub pull-request triggers: built-in, yet named like user ones.
PULL_REQUEST_BUILT_IN = {"_HEAD_BRANCH", "_BASE_BRANCH", "_HEAD_REPO_URL", "_PR_NUMBER"}
# Cloud Build's rule for user substitution names.
USER_SUBSTITUTION = re.compile(r"_[A-Z0-9_]+")


def parse(config: dict) -> Build:
    """The config as Cloud Build reads it: a Build message, unknown fields rejected."""
    return Build.from_json(json.dumps(config), ignore_unknown_fields=False)


def strings(value) -> list[str]:
    """Every string in a parsed config (field values, list items, map values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def key_paths(value, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {prefix} | {p for k, v in value.items() for p in key_paths(v, f"{prefix}.{k}")}
    if isinstance(value, list):
        return {prefix} | {p for i, v in enumerate(value) for p in key_paths(v, f"{prefix}[{i}]")}
    return {prefix}


def as_dict(build: Build) -> dict:
    # From the message, not the YAML: only what Cloud Build kept counts.
    return json_format.MessageToDict(Build.pb(build))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_a_cloud_build_build_message(name):
    config = cloudbuild.load(name)
    build = parse(config)
    assert set(config) <= CONFIG_FIELDS, set(config) - CONFIG_FIELDS
    assert len(build.steps) == len(config["steps"]) and all(step.name for step in build.steps)
    for step in config["steps"]:
        assert not set(step) & STEP_OUTPUT_FIELDS, step["id"]
    # Nothing was dropped on the way: every key of the file is a field the message kept
    # (values compare loosely: the JSON form writes int64 as strings).
    assert key_paths(as_dict(build)) == key_paths(config)


def test_the_check_rejects_what_cloud_build_would():
    """The schema check is not vacuous: each of these is refused by the Build message."""
    config = cloudbuild.load("cloudbuild.yaml")
    broken = [
        {**config, "step": config["steps"]},  # unknown top-level field
        {**config, "steps": [{**config["steps"][0], "waitfor": ["-"]}]},  # misspelt step field
        {**config, "options": {**config["options"], "machineType": "E2_HIGHCPU_9"}},  # no such enum value
        {**config, "substitutions": {**config["substitutions"], "_WORKERS": 8}},  # values are strings
        {**config, "timeout": "half an hour"},  # a Duration is "<seconds>s"
    ]
    for candidate in broken:
        with pytest.raises(json_format.ParseError):
            parse(candidate)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_substitution_is_defined_used_and_real(name):
    build = as_dict(parse(cloudbuild.load(name)))
    defined = set(build.get("substitutions", {}))
    assert all(USER_SUBSTITUTION.fullmatch(key) for key in defined), defined
    # References anywhere in the build, substitution values included (dynamic substitutions).
    used = set().union(*(cloudbuild.references(text) for text in strings(build)))
    user = {n for n in used if n.startswith("_")} - PULL_REQUEST_BUILT_IN
    assert user <= defined, f"used but not defined: {sorted(user - defined)}"
    assert used - user <= cloudbuild.BUILT_IN | PULL_REQUEST_BUILT_IN, f"no such built-in: {sorted(used - user)}"
    assert defined <= used, f"defined but never used: {sorted(defined - used)}"
    if any("$" in value for value in build.get("substitutions", {}).values()):
        assert build["options"]["dynamicSubstitutions"] is True  # otherwise they stay literal


def _git_mode(path: str) -> str:
    listing = subprocess.run(
        ["git", "ls-files", "-s", "--", path], cwd=cloudbuild.ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return listing[0] if listing else ""


def _check_program(program: str, entry_points: set[str]) -> None:
    if "/" not in program:
        return  # on the step image's PATH (make, bash), not the repository's
    if program.startswith(".venv/bin/"):  # made by the `setup` step from pyproject.toml
        assert program.removeprefix(".venv/bin/") in entry_points, f"{program}: no such console script"
        return
    path = cloudbuild.ROOT / program
    assert path.is_file(), f"{program} is not in the repository"
    assert os.access(path, os.X_OK) and _git_mode(program) == "100755", f"{program} is not executable (in git)"


# In a `bash -c` script: the repository's scripts and the venv's programs it names.
_PROGRAM_IN_SCRIPT = re.compile(r"""(?:^|[\s"'(=])((?:\./)?(?:[\w.-]+/)+[\w.-]+\.sh|\.venv/bin/[\w-]+)""", re.M)


def _scripts_called(argv: list[str]) -> list[str]:
    """Programs a step runs: its entrypoint, a script given to bash, and the scripts and
    venv programs a ``bash -c`` script names."""
    called = [argv[0]]
    if argv[0] == "bash" and len(argv) > 1 and argv[1] != "-c":
        called.append(argv[1])
    if argv[0] == "bash" and "-c" in argv:
        called += _PROGRAM_IN_SCRIPT.findall(argv[argv.index("-c") + 1])
    return called


@pytest.mark.parametrize("name", CONFIGS)
def test_every_program_a_step_runs_exists_and_is_executable(name):
    config = cloudbuild.load(name)
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", "SHORT_SHA": "abc1234", "TAG_NAME": "v1.2.3"})
    entry_points = {"cauce", "pytest", "ruff"}
    makefile = (cloudbuild.ROOT / "Makefile").read_text()
    cli = typer.main.get_command(app)
    for step in config["steps"]:
        argv = cloudbuild.command(config, step["id"], values)
        for program in _scripts_called(argv):
            _check_program(program, entry_points)
        if argv[0] == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{step['id']}: no make target {target}"
        # Every `cauce <command> --option` a step runs is a real command and option.
        text = " ".join(argv).replace("\\\n", " ")
        for command, options in re.findall(r"\.venv/bin/cauce ([a-z][a-z-]*)((?: +[^\n;|&]*)?)", text):
            assert command in cli.commands, f"{step['id']}: cauce has no command {command!r}"
            known = {opt for param in cli.commands[command].params for opt in param.opts + param.secondary_opts}
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", options):
                assert option in known, f"{step['id']}: `cauce {command}` has no option {option}"


def test_pyproject_provides_the_console_scripts_steps_rely_on():
    text = (cloudbuild.ROOT / "pyproject.toml").read_text()
    assert 'cauce = "cauce.cli:app"' in text  # .venv/bin/cauce
    assert '"pytest' in text and '"ruff' in text  # .venv/bin/pytest, the lint step's ruff
