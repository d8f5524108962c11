"""The component catalogue (`cauce export`): every committed component YAML loads in
KFP and carries the version and image, the catalogue page documents every component,
and another team's pipeline built from the page's example, two cauce components with a
Google Cloud Pipeline Components op, compiles and validates strictly.

(`cauce export --check`, that the committed files match the code, runs as the Cloud
Build step that checks it: tests/test_cloudbuild.py.)
"""

import re

import pytest
from kfp import compiler, components

from cauce import __version__, catalogue, spec
from cauce.artifacts import CauceError

ENTRIES = catalogue.discover()
PAGE = (catalogue.components_dir().parent / catalogue.CATALOGUE_PAGE).read_text()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_exported_component_loads_and_carries_its_version_and_image(entry):
    path = catalogue.components_dir().parent / entry.yaml_path
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == entry.kfp_name
    assert set(loaded.component_spec.inputs) == set(entry.spec.inputs)
    assert set(loaded.component_spec.outputs) == set(entry.spec.outputs)
    for name, expected in entry.spec.inputs.items():
        assert loaded.component_spec.inputs[name].default == expected.default
    assert catalogue.yaml_version(path) == __version__
    family = catalogue.family_of(entry.image)
    assert loaded.component_spec.implementation.container.image == f"ghcr.io/cauce-ml/cauce-{family}:{__version__}"
    assert f"# image: {entry.image}" in path.read_text()


def test_the_catalogue_page_documents_every_component():
    assert PAGE.startswith(f"# Component catalogue — cauce {__version__}")
    sections = PAGE.split("\n## ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == [e.name for e in ENTRIES]
    for entry, section in zip(ENTRIES, sections):
        assert f"`{entry.yaml_path.as_posix()}`" in section and f"image `{entry.image}`" in section
        for name in list(entry.spec.inputs) + list(entry.spec.outputs):
            assert f"| `{name}` |" in section, (entry.name, name)
        assert catalogue.raw_url(entry) in section  # the example loads the published file


def test_every_example_wires_outputs_that_exist():
    """Examples feed artifact inputs from other components' outputs: those outputs exist."""
    outputs = {e.name: set(e.spec.outputs) for e in ENTRIES}
    used = re.findall(r"(\w+)_task\.outputs\[\"(\w+)\"\]", PAGE)
    assert used
    for task, output in used:
        assert output in outputs[task], f"{task}_task.outputs[{output!r}]"


def test_another_teams_pipeline_combines_two_components_with_a_gcpc_op(tmp_path, monkeypatch):
    code = PAGE.split("```python\n", 1)[1].split("```", 1)[0]
    # Other teams load the YAMLs by URL at the release's tag; here, the same files from the checkout.
    prefix = catalogue.RAW_URL.format(version=__version__, path="")

    def from_checkout(url: str):
        assert url.startswith(prefix), url
        return components.load_component_from_file(str(catalogue.components_dir().parent / url[len(prefix) :]))

    monkeypatch.setattr(components, "load_component_from_url", from_checkout)
    namespace: dict = {}
    exec(compile(code, "docs/components.md", "exec"), namespace)
    path = tmp_path / "skew_check.yaml"
    compiler.Compiler().compile(namespace["skew_check"], str(path))

    info = spec.validate_spec(path)  # PipelineSpec proto, strict, and a Vertex PipelineJob
    assert info["tasks"] == ["bigquery-query-job", "extract", "monitor"]
    assert f"ghcr.io/cauce-ml/cauce-base:{__version__}" in info["images"]
    assert any("google-cloud-pipeline-components" in image for image in info["images"])
    import yaml

    tasks = yaml.safe_load(path.read_text())["root"]["dag"]["tasks"]
    assert tasks["extract"]["dependentTasks"] == ["bigquery-query-job"]
    # GCPC's table reaches extract as a google.BQTable: a lineage edge, not a copied string.
    source_table = tasks["extract"]["inputs"]["artifacts"]["source_table"]["taskOutputArtifact"]
    assert source_table == {"outputArtifactKey": "destination_table", "producerTask": "bigquery-query-job"}
    baseline = tasks["monitor"]["inputs"]["artifacts"]["baseline"]["taskOutputArtifact"]
    assert baseline == {"outputArtifactKey": "dataset", "producerTask": "extract"}


def test_export_refuses_tags_when_digests_are_required():
    with pytest.raises(CauceError, match="not pinned by digest.*CAUCE_IMAGE_"):
        catalogue.rendered_files(require_digests=True)


def test_family_of_reads_the_image_repository():
    assert catalogue.family_of("ghcr.io/cauce-ml/cauce-tf:0.1.0") == "tf"
    assert catalogue.family_of("us-docker.pkg.dev/p/r/cauce-beam@sha256:" + "0" * 64) == "beam"
    assert catalogue.family_of("localhost:5000/cauce-serving") == "serving"
    assert catalogue.family_of("python:3.11") == "custom"


def test_every_component_folder_has_a_generated_readme_that_keeps_its_prose(tmp_path):
    """components/<phase>/README.md carries the reference generated from the signatures and
    docstrings (between the markers; `cauce export --check` fails when it is stale) and
    keeps the hand-written prose outside them."""
    root = catalogue.components_dir()
    phases = sorted({entry.phase for entry in ENTRIES})
    assert {"champion", "retrain"} <= set(phases)
    assert phases == sorted(p.parent.name for p in root.glob("*/component.py"))
    tests = catalogue.components_dir().parent / "tests"
    for phase in phases:
        readme = (root / phase / "README.md").read_text()
        assert readme.count(catalogue.README_BEGIN) == readme.count(catalogue.README_END) == 1, phase
        for entry in (e for e in ENTRIES if e.phase == phase):
            assert f"## {entry.name}\n" in readme and f"`{entry.yaml_path.as_posix()}`" in readme
            for name in entry.spec.inputs or {}:
                assert f"| `{name}` |" in readme, (phase, name)
        assert list(tests.glob(f"test_{phase}*.py")), f"no tests/test_{phase}*.py, which the README names"
        # Regenerating keeps the file as it is (idempotent), prose included.
        assert catalogue.component_readme(ENTRIES, phase, readme) == readme

    # A hand-written README without markers gets the reference after its title; its prose stays.
    fresh = catalogue.component_readme(ENTRIES, "retrain", "# retrain\n\nWhy retraining is a step.\n")
    assert fresh.startswith("# retrain\n\n" + catalogue.README_BEGIN) and fresh.endswith("Why retraining is a step.\n")
    # An edited generated part is stale for `cauce export --check`; the prose around it is not.
    (tmp_path / "components" / "retrain").mkdir(parents=True)
    edited = (root / "retrain" / "README.md").read_text().replace("| `training_spec` |", "| `spec` |")
    (tmp_path / "components" / "retrain" / "README.md").write_text(edited + "\nMore prose.\n")
    stale = catalogue.stale_files(tmp_path)
    assert catalogue.Path("components/retrain/README.md") in stale
    rendered = catalogue.rendered_files(root=tmp_path)[catalogue.Path("components/retrain/README.md")]
    assert "| `training_spec` |" in rendered and rendered.endswith("\nMore prose.\n")
