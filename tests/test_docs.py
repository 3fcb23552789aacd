"""The README documents every command, step and connector type the code has."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexingest.cli import cli
from flexingest.config import CONNECTOR_TYPES
from flexingest.steps import BUILTIN_STEPS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


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
