"""``connectors_dir``: connector files beside the pipeline file, loaded with it, their errors in their own files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Result

from flexingest.exceptions import ConfigError
from flexingest.loader import load_pipeline


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    return write(tmp_path / "pipeline.yaml", yaml.safe_dump({
        "version": 1, "connectors_dir": "connectors.d",
        "connectors": [{"name": "inline", "type": "local", "config": {"path": "docs"}}],
        "steps": ["extract_text"],
        "syncs": [{"name": "fromdir", "connector": "archive"}],
    }, sort_keys=False))


def test_connectors_of_the_folder_are_part_of_the_pipeline(pipeline: Path) -> None:
    write(pipeline.parent / "connectors.d" / "archive.yaml", "name: archive\nid: 5\ntype: local\nconfig:\n  path: x\n")
    write(pipeline.parent / "connectors.d" / "notes.txt", "not a connector file: ignored")
    p = load_pipeline(pipeline)
    assert p.connector_names() == ["inline", "archive"]
    assert p.connector(5).name == "archive" and p.sync("fromdir").connector == "archive"
    assert p.connector_file("archive") == pipeline.parent / "connectors.d" / "archive.yaml"
    assert p.connector_file("inline") is None
    assert p.connectors_path == pipeline.parent / "connectors.d"


def test_errors_name_the_connector_file_and_line(pipeline: Path, cli: Callable[..., Result]) -> None:
    write(pipeline.parent / "connectors.d" / "archive.yaml",
          "name: archive\ntype: s3\nconfig:\n  bukcet: x\n  timeout: soon\n")
    out = cli("validate", pipeline)
    assert out.code == 2
    file = pipeline.parent / "connectors.d" / "archive.yaml"
    assert out.stderr.splitlines() == [
        f"{file}:3:1: config.bucket: required field missing",
        f"{file}:4:3: config.bukcet: unknown field 'bukcet' (did you mean 'bucket'?)",
        f"{file}:5:12: config.timeout: expected a duration like 30s, 5m, 1h30m or a number of seconds, got 'soon'",
    ]


def test_a_broken_file_names_itself_and_the_others_still_load(pipeline: Path) -> None:
    write(pipeline.parent / "connectors.d" / "archive.yaml", "name: archive\ntype: local\nconfig: {path: x}\n")
    write(pipeline.parent / "connectors.d" / "bad.yaml", "name: [unclosed\n")
    write(pipeline.parent / "connectors.d" / "twice.yaml", "name: inline\ntype: local\nconfig: {path: y}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(pipeline)
    said = [str(i) for i in caught.value.issues]
    folder = pipeline.parent / "connectors.d"
    assert any(s.startswith(f"{folder / 'bad.yaml'}:2:1: invalid YAML") for s in said), said
    assert f"{folder / 'twice.yaml'}:1:7: name: duplicate connector name 'inline' (also connectors[0])" in said
    assert len(said) == 2, "archive.yaml loaded: the sync using it is fine"


def test_a_folder_not_made_yet_is_empty_and_a_file_is_an_error(pipeline: Path) -> None:
    write(pipeline, pipeline.read_text().replace("connector: archive", "connector: inline"))
    assert load_pipeline(pipeline).connector_names() == ["inline"]
    write(pipeline.parent / "connectors.d", "a file")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(pipeline)
    assert [i.field for i in caught.value.issues] == ["connectors_dir"]
    assert caught.value.issues[0].message.endswith("connectors.d is not a folder")


def test_a_pipeline_may_take_all_its_connectors_from_the_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "version: 1\nconnectors_dir: c\nsteps: [extract_text]\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert [(i.field, i.message) for i in caught.value.issues] == [("connectors", "required field missing")]
    write(tmp_path / "c" / "only.yaml", "name: only\ntype: local\nconfig: {path: .}\n")
    assert load_pipeline(path).connector_names() == ["only"]


def test_variables_in_connector_files_need_no_secret_for_status(pipeline: Path, cli: Callable[..., Result]) -> None:
    write(pipeline.parent / "connectors.d" / "archive.yaml",
          "name: archive\ntype: s3\nconfig:\n  bucket: b\n  aws_access_key_id: ${NOT_SET_KEY_ID}\n"
          "  aws_secret_access_key: ${NOT_SET_SECRET}\n")
    assert load_pipeline(pipeline, env={}, need_secrets=False).connector("archive").name == "archive"
    with pytest.raises(ConfigError) as caught:
        load_pipeline(pipeline, env={})
    assert [i.message for i in caught.value.issues] == ["environment variable NOT_SET_KEY_ID is not set",
                                                        "environment variable NOT_SET_SECRET is not set"]
    assert all(i.file.endswith("archive.yaml") for i in caught.value.issues)
    assert cli("status", pipeline).code == 0
