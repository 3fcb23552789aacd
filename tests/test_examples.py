"""Every shipped pipeline file validates; the JSON Schema for editors is current and useful."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import jsonschema
import pytest
import yaml
from conftest import Result

from flexingest.config import json_schema
from flexingest.loader import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted([*ROOT.glob("examples/**/*.yaml"), *ROOT.glob("pipelines/*.yaml")])


def dummy_env(path: Path) -> dict[str, str]:
    """A value for every ${VAR} the file uses, as a deployment would set them."""
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\}|:\?)", path.read_text())
    return {name: f"dummy-{name.lower()}" for name in names}


def test_there_are_examples_for_every_connector_type() -> None:
    types = {c["type"] for f in FILES for c in yaml.safe_load(f.read_text())["connectors"]}
    assert types == {"s3", "gcs", "azure_blob", "local"}
    assert (ROOT / "pipelines" / "demo.yaml") in FILES


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_validates(path: Path) -> None:
    pipeline = load_pipeline(path, env=dummy_env(path))
    assert pipeline.connectors
    schema = Path("../" * len(path.relative_to(ROOT).parts[1:]), "flexingest.schema.json").as_posix()
    assert path.read_text().startswith(f"# yaml-language-server: $schema={schema}\n")


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_validates_through_the_cli(path: Path, cli: Callable[..., Result]) -> None:
    out = cli("validate", path, env=dummy_env(path))
    assert out.code == 0, out.stderr
    assert out.stderr.startswith(f"{path}: valid (")


def test_validate_reports_errors_with_exit_2(tmp_path: Path, cli: Callable[..., Result]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nconnectors:\n  - name: x\n    type: local\n    config: {path: ., colour: red}\n")
    out = cli("validate", bad)
    assert out.code == 2
    assert out.stderr.splitlines() == [
        f"{bad}:5:23: connectors[0].config.colour: unknown field 'colour' (expected one of: path)"]


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "flexingest.schema.json").read_text())
    assert committed == json_schema(), "run: flexingest schema > flexingest.schema.json"


def test_schema_command_prints_it(cli: Callable[..., Result]) -> None:
    out = cli("schema")
    assert out.code == 0
    assert json.loads(out.stdout) == json_schema()


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_schema_accepts_the_examples(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d.pop("connectors"), "'connectors' is a required property"),
    (lambda d: d["connectors"][0].update(colour="red"), "colour"),
    (lambda d: d["connectors"][0].update(type="ftp"), "ftp"),
    (lambda d: d["syncs"][0].update(on_change="sometimes"), "sometimes"),
    (lambda d: d["steps"].append({"extract_txt": {}}), "extract_txt"),
])
def test_schema_rejects_broken_files(mutate: Callable[[dict], object], why: str) -> None:
    data = yaml.safe_load((ROOT / "examples" / "s3.yaml").read_text())
    mutate(data)
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(data, json_schema())
    assert why in str(info.value)
