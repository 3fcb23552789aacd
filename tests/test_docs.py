"""The README documents every command, step and connector type the code has."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexingest.cli import cli
from flexingest.config import CONNECTOR_TYPES
from flexingest.steps import BUILTIN_STEPS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command: str) -> None:
    assert f"`flexingest {command} " in README or f"`flexingest {command}`" in README


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_help_has_an_example(command: str) -> None:
    assert "Example" in (cli.commands[command].help or "")


@pytest.mark.parametrize("step", sorted(BUILTIN_STEPS))
def test_every_step_is_documented(step: str) -> None:
    assert f"| `{step}` |" in README


@pytest.mark.parametrize("kind", CONNECTOR_TYPES)
def test_every_connector_type_is_documented(kind: str) -> None:
    assert f"| `{kind}` |" in README


def test_the_readme_opens_with_the_two_commands() -> None:
    head = README[:1200]
    assert "make demo" in head and "make test" in head


def test_the_demo_does_what_the_readme_says(tmp_path: Path) -> None:
    """`make demo` as the README tells it: where the records and the state land, and what it prints."""
    import shutil
    import subprocess

    from conftest import FLEXINGEST

    shutil.copytree(ROOT / "pipelines", tmp_path / "pipelines")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    readme = (ROOT / "README.md").read_text()
    first = subprocess.run([FLEXINGEST, "run", "pipelines/demo.yaml", "--once"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    summary = first.stderr.strip().splitlines()[-1].split("INFO", 1)[1].strip()
    assert summary.startswith("documents: listed 8, new 7, changed 0, retried 0, done 7, failed 0")
    assert summary.rsplit(" in ", 1)[0] in readme, "the README shows the demo's summary line as it is"
    for path in ("out/demo/records/", "out/demo/documents.jsonl", ".flexingest/demo.db"):
        assert f"`{path}`" in readme and (tmp_path / path).exists(), path
    assert len(list((tmp_path / "out/demo/records").rglob("*.json"))) == 7
    again = subprocess.run([FLEXINGEST, "run", "pipelines/demo.yaml", "--once"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert "documents: listed 8, new 0, changed 0" in again.stderr, "run twice, the second pass processes nothing"
