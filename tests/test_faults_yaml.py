"""Reliability (issue 5, item 11): malicious or broken pipeline files.

Whatever a pipeline file holds — python tags, alias bombs, absurd nesting or size, bytes
that are not text, the wrong shapes — `flexingest validate` answers with located errors and
exit 2, quickly, without a traceback and without running anything the file asks for. Then
hypothesis throws thousands of mutated pipelines and random bytes at the loader: the only
outcomes are a Pipeline or a ConfigError whose every issue says something.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from conftest import Result, run_flexingest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flexingest.config import Pipeline
from flexingest.exceptions import ConfigError
from flexingest.loader import load_pipeline

SECONDS = 5.0  # the most any hostile file may take, flexingest's start-up included

HEAD = "version: 1\nconnectors: [{name: docs, type: local, config: {path: docs}}]\nsteps: [extract_text]\n"


def alias_bomb_lists() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return HEAD + "\n".join(lines) + "\nsyncs: [{name: s, connector: docs, include: *a9}]\n"


def alias_bomb_mappings() -> str:
    lines = ["b0: &b0 {k: v}"]
    lines += [f"b{i}: &b{i} {{" + ", ".join(f"k{j}: *b{i - 1}" for j in range(8)) + "}" for i in range(1, 9)]
    return HEAD + "\n".join(lines) + "\n"


def merge_key_bomb() -> str:
    lines = ["m0: &m0 {name: s, connector: docs}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: *m{i - 1}}}" for i in range(1, 25)]
    return HEAD + "\n".join(lines) + "\nsyncs: [*m24]\n"


def nested_block(levels: int) -> str:
    return HEAD + "syncs:\n" + "".join(" " * (2 * i) + "- \n" for i in range(levels))


# name: (file content, what stderr must say)
HOSTILE: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "python-object-apply-os-system": (
        lambda t: f"version: !!python/object/apply:os.system ['touch {t}/PWNED']\n".encode(),
        "version: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    "python-object-new-popen": (
        lambda t: f"version: 1\nstate: !!python/object/new:subprocess.Popen [[touch, {t}/PWNED]]\n".encode(),
        "state: tag 'tag:yaml.org,2002:python/object/new:subprocess.Popen' is not allowed"),
    "python-name": (
        lambda t: (HEAD + "syncs: !!python/name:os.system\n").encode(),
        "syncs: tag 'tag:yaml.org,2002:python/name:os.system' is not allowed"),
    "python-module": (
        lambda t: (HEAD + "state: !!python/module:os\n").encode(),
        "state: tag 'tag:yaml.org,2002:python/module:os' is not allowed"),
    "python-object-in-a-list": (
        lambda t: b"version: 1\nconnectors: [!!python/object:collections.OrderedDict {name: x}]\n",
        "connectors[0]: tag 'tag:yaml.org,2002:python/object:collections.OrderedDict' is not allowed"),
    "binary": (
        lambda t: (HEAD + "state: !!binary aGVsbG8gd29ybGQ=\n").encode(),
        "state: tag 'tag:yaml.org,2002:binary' is not allowed"),
    "set-and-omap": (
        lambda t: (HEAD + "syncs: !!set {a, b}\nstate: !!omap [{a: 1}]\n").encode(),
        "syncs: tag 'tag:yaml.org,2002:set' is not allowed"),
    "custom-tag": (
        lambda t: (HEAD + "state: !Ref AWS::Region\n").encode(),
        "state: tag '!Ref' is not allowed"),
    "alias-bomb-lists": (lambda t: alias_bomb_lists().encode(), "alias bomb?"),
    "alias-bomb-mappings": (lambda t: alias_bomb_mappings().encode(), "alias bomb?"),
    "merge-key-bomb": (lambda t: merge_key_bomb().encode(), "alias bomb?"),
    "recursive-alias": (lambda t: (HEAD + "syncs: &s [*s]\n").encode(), "recursive alias"),
    "10000-levels-of-[": (lambda t: ("[" * 10_000 + "]" * 10_000 + "\n").encode(),
                          "1:101: values are nested more than 100 levels deep"),
    "10000-levels-of-{": (lambda t: ("a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n").encode(),
                          "values are nested more than 100 levels deep"),
    "deep-block-nesting": (lambda t: nested_block(1_000).encode(), "values are nested more than 100 levels deep"),
    "20-MB-file": (lambda t: (HEAD + "# " + "x" * (20 * 1024 * 1024) + "\n").encode(),
                   "file is larger than 1 MiB; is it really a pipeline file?"),
    "500000-values": (lambda t: (HEAD + "syncs: [" + "1," * 500_000 + "1]\n").encode(),
                      "the file has more than 20000 values; refusing to load it"),
    "nul-byte": (lambda t: HEAD.replace("steps", "st\0eps").encode(),
                 "3:3: invalid YAML: character #x0000 is not allowed"),
    "invalid-utf-8": (lambda t: HEAD.encode().replace(b"extract_text", b"extract_\xff\xfetext"),
                      f"3:17: not UTF-8 text (byte 0xff at offset {HEAD.index('extract_text') + 8})"),
    "utf-16": (lambda t: HEAD.encode("utf-16"), "1:1: not UTF-8 text (byte 0xff at offset 0)"),
    "tabs-for-indentation": (
        lambda t: b"version: 1\nconnectors:\n\t- name: docs\n\t  type: local\n\t  config: {path: docs}\n",
        "3:1: invalid YAML: while scanning for the next token found character '\\t' that cannot start any token"),
    "list-where-a-mapping-is-expected": (
        lambda t: b"version: 1\nconnectors: [{name: docs, type: local, config: [path, docs]}]\n"
                  b"steps: [extract_text]\nsyncs: [{name: s, connector: docs, schedule: [every, 5m]}]\n",
        "2:40: connectors[0].config: input should be a valid dictionary"),
    "top-level-list": (lambda t: b"- version: 1\n- connectors: []\n",
                       "1:1: the top level must be a mapping with 'version', 'connectors', ..."),
    "numbers-where-strings-are-expected": (
        lambda t: b"version: 1\nconnectors: [{name: 5, type: local, config: {path: 7}}]\n"
                  b"steps: [{write_jsonl: {path: 3}}]\nsyncs: [{name: 12, connector: 5, prefix: 3, include: [1]}]\n",
        "2:21: connectors[0].name: input should be a valid string"),
    "every-field-null": (
        lambda t: b"version: null\nstate: null\n"
                  b"connectors: [{name: null, id: null, type: null, config: null}]\nsteps: null\n"
                  b"syncs: [{name: null, connector: null, prefix: null, include: null, exclude: null,"
                  b" min_size: null, max_size: null, min_age: null, schedule: null, on_change: null,"
                  b" concurrency: null, max_attempts: null, steps: null}]\n",
        "1:10: version: input should be 1, got None"),
    "null-document": (lambda t: b"~\n", "1:1: the top level must be a mapping"),
    "empty-file": (lambda t: b"", "the file is empty; a pipeline needs at least 'version: 1' and 'connectors'"),
    "connector-name-a-mapping-and-a-step-naming-it": (
        lambda t: b"version: 1\nconnectors: [{name: {x: docs}, type: s3, config: {bucket: b}}]\n"
                  b"steps: [{copy: {url: 's3://b/x', connector: docs}}]\n",
        "2:15: connectors[0].name: input should be a valid string"),
    "lone-surrogate-escape": (lambda t: HEAD.replace("path: docs", 'path: "d\\ud800x"').encode(),
                              "connectors[0].config.path: a lone UTF-16 surrogate \\ud800 (character 2) is not a "
                              "character"),
    "lone-surrogate-in-a-key": (lambda t: (HEAD + '"k\\udc00": 1\n').encode(),
                                "key: a lone UTF-16 surrogate \\udc00 (character 2) is not a character"),
    "terminal-escapes-in-a-key": (lambda t: (HEAD + '"\\e]0;pwned\\a\\e[2J": 1\n').encode(),
                                  "\\x1b]0;pwned\\x07\\x1b[2J: unknown field"),
    "terminal-escapes-in-a-variable-message": (
        lambda t: HEAD.replace("path: docs", 'path: "${DOCS:?\\e[2J\\e[31mgone}"').encode(),
        "connectors[0].config.path: \\x1b[2J\\x1b[31mgone (environment variable DOCS is not set)"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_file_is_a_clear_error(case: str, tmp_path: Path) -> None:
    make, expected = HOSTILE[case]
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(make(tmp_path))
    started = time.monotonic()
    result = run_flexingest("validate", path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.code == 2, f"exit {result.code}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith(f"{path}"), "every line names the file"
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr, "nothing drives the terminal"
    assert len(result.stderr) < 100_000
    assert result.stdout == ""
    assert elapsed < SECONDS, f"took {elapsed:.1f}s"
    assert not (tmp_path / "PWNED").exists(), "nothing the file asked for was run"


def test_dev_zero_is_refused_without_reading_it_all(cli: Callable[..., Result]) -> None:
    started = time.monotonic()
    result = cli("validate", "/dev/zero")
    assert result.code == 2
    assert result.stderr.startswith("/dev/zero: file is larger than 1 MiB")
    assert time.monotonic() - started < SECONDS


def test_every_command_refuses_a_hostile_file_with_exit_2(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"version: !!python/object/apply:os.system ['touch {tmp_path}/PWNED']\n" + alias_bomb_lists())
    for args in (["validate"], ["test"], ["run", "--once"], ["run", "--once", "--dry-run"], ["status"],
                 ["retry"], ["process", "--connector", "docs", "a.txt"]):
        result = cli(args[0], path, *args[1:])
        assert result.code == 2, (args, result.stderr)
        assert "alias bomb?" in result.stderr or "is not allowed" in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / ".flexingest").exists(), "no state is created for an invalid file"


@pytest.mark.parametrize("value", ["100000000000000000000", "'99999999999999999d'", ".inf", ".nan", "-1", "1e400"])
def test_absurd_durations_are_a_clear_error(value: str, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(HEAD + f"syncs: [{{name: s, connector: docs, min_age: 1s, schedule: {{every: {value}}}}}]\n")
    result = run_flexingest("validate", path)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.code == 2, result.stderr
    assert f"{path}:4:" in result.stderr and "syncs[0].schedule.every: " in result.stderr, result.stderr


def test_dates_are_plain_text(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """A plain date is text in a pipeline file ("prefix: 2024-01-01"), not a refused timestamp tag."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(HEAD + "syncs: [{name: 2024-01-01, connector: docs, prefix: 2024-01-01, include: [2024-01-01]}]\n")
    result = cli("validate", path)
    assert result.code == 0, result.stderr
    sync = load_pipeline(path, env={}).syncs[0]
    assert (sync.name, sync.prefix, sync.include) == ("2024-01-01", "2024-01-01", ["2024-01-01"])


# --------------------------------------------------------------------------- hypothesis

CONNECTORS: list[dict[str, Any]] = [
    {"name": "docs", "id": 42, "type": "s3", "config": {
        "bucket": "my-documents", "region": "us-east-1", "aws_access_key_id": "${KEY_ID}",
        "aws_secret_access_key": "${SECRET:-fallback}", "endpoint_url": "http://127.0.0.1:9000"}},
    {"name": "docs", "type": "gcs", "config": {"bucket": "g", "project": "p", "anonymous": True}},
    {"name": "docs", "type": "azure_blob", "config": {"container": "c", "account_name": "acc",
                                                     "account_key": "a2V5"}},
    {"name": "docs", "id": 7, "type": "local", "config": {"path": "docs"}},
]
STEPS: list[Any] = [
    {"extract_text": {"on_unsupported": "skip"}}, {"write_jsonl": {"path": "out/docs.jsonl"}},
    {"copy": {"url": "out/copies", "connector": "docs"}}, {"write_json": {"url": "out/json"}},
    {"webhook": {"url": "http://hooks.example/x", "headers": {"Authorization": "Bearer ${TOKEN}"}}},
    {"command": {"argv": ["echo", "{path}", "{key}"], "timeout": "10s"}},
    {"python": {"callable": "mymodule:enrich"}}, "extract_text",
]
SYNCS: list[dict[str, Any]] = [
    {"name": "contracts", "connector": "docs", "prefix": "contracts/", "include": ["**/*.pdf"],
     "exclude": ["**/drafts/**"], "min_size": 1, "max_size": "10MB", "min_age": "30s",
     "schedule": {"every": "5m"}, "on_change": "reprocess", "concurrency": 8, "max_attempts": 3},
    {"name": "nightly", "connector": 42, "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris"},
     "on_change": "ignore"},
    {"name": "small", "connector": "docs", "include": ["*.txt"]},
]
FIELDS = sorted({"version", "state", "connectors", "steps", "syncs", "name", "id", "type", "config", "bucket",
                 "region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile",
                 "endpoint_url", "role_arn", "anonymous", "timeout", "project", "service_account_json",
                 "container", "account_name", "account_key", "sas_token", "connection_string", "account_url",
                 "path", "connector", "prefix", "include", "exclude", "min_size", "max_size", "min_age",
                 "schedule", "every", "cron", "timezone", "on_change", "concurrency", "max_attempts", "url",
                 "headers", "argv", "callable", "max_retries", "backoff", "on_unsupported", "max_chars",
                 "max_bytes", "extract_text", "write_jsonl", "write_json", "copy", "webhook", "command",
                 "python", "<<"})
NASTY = ["", " ", "5m", "0s", "-1s", "1y", "10MB", "-5", "1e309", "[", "**", "/", "..", "../../etc", "/abs",
         "C:\\x", "~", "s3", "gcs", "azure_blob", "local", "extract_text", "*/15 * * * *", "61 * * * *",
         "Mars/Olympus", "http://", "ftp://x", "m:f", "no_colon", "docs", "42", "null", "yes", "on", "0x1F",
         "1_000", ".inf", "2024-01-01", "12:30:00", "=", "<<", "&a", "*a", "!!python/name:os.system",
         "\x00", "\x1b[2J", "\u2028", "\ufeff", "\ud800", "\x85", "é", "日本", "🎉", "a\nb", "'", '"']
VARS = ["KEY_ID", "SECRET", "TOKEN", "X", "EMPTY", "1BAD", "", "X Y"]

SNIPPETS = ["!!python/object/apply:os.system ['true'] ", "&a ", "*a", "*undefined ", "<<: *a\n", "\t", "\0",
            "\ufeff", "---\n", "...\n", "%YAML 1.1\n", "? ", ": ", "- ", "[", "]", "{", "}", "'", '"', "#", "|",
            ">", "\n", "\r", "\\", "\x85", "\u2028", "!!binary ", "!!set ", "!Ref ", "${", "$${", ",", "  "]
CHARS = ("abcxyz_-./:*?[]{}$!&@#%'\"\\ \t\n" "0123456789" "\x00\x07\x1b\x7f\x85\xa0\xe9\u2028\ufeff\u65e5"
         "\U0001f389")
FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml, when PyYAML was built with it
MUTATIONS = ["drop", "rename", "replace", "reference", "add", "wrap", "duplicate"]


class Chooser:
    """The choices a document is made of: drawn by hypothesis (which shrinks them), or by a seeded
    random generator (cheap: 10,000 documents in seconds)."""

    def __init__(self, draw: st.DrawFn | None = None, seed: int = 0) -> None:
        self.draw = draw
        self.random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high)) if self.draw else self.random.randint(low, high)

    def pick(self, options: list[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def text(self, max_size: int) -> str:
        if self.draw:
            return self.draw(st.text(max_size=max_size))
        return "".join(self.random.choice(CHARS) for _ in range(self.random.randint(0, max_size)))


def _slots(doc: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Every (container, key) of the document, and every container."""
    slots: list[tuple[Any, Any]] = []
    containers: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            containers.append(node)
            for k in list(node):
                slots.append((node, k))
                visit(node[k])
        elif isinstance(node, list):
            containers.append(node)
            for i in range(len(node)):
                slots.append((node, i))
                visit(node[i])

    visit(doc)
    return slots, containers


def reference(c: Chooser) -> str:
    """A ``${...}`` reference, well formed or not."""
    if c.integer(0, 3) == 0:
        return c.pick(["${", "$${X}", "$$", "${X:-${Y}}", "prefix-${TOKEN}-suffix", "${${X}}", "${X", "${ X }"])
    name = c.pick(VARS) if c.integer(0, 2) else c.text(6)
    op = c.pick(["", "-", ":-", "?", ":?", "=", ":"])
    arg = c.pick(["", "default", "boom \x1b[31m", "${X}", "$${"]) if c.integer(0, 2) else c.text(5)
    return f"${{{name}{op}{arg}" + c.pick(["}", "}", ""])


def scalar(c: Chooser) -> Any:
    kind = c.integer(0, 7)
    if kind == 0:
        return c.pick([None, True, False])
    if kind == 1:
        return c.pick([0, 1, -1, 42, 7, 2**31, 2**63, -2**70, c.integer(-1000, 1000)])
    if kind == 2:
        return c.pick([0.0, -0.0, 0.5, 1e308, -1e-300, float("inf"), float("-inf"), float("nan")])
    if kind in (3, 4):
        return c.text(12)
    if kind == 5:
        return reference(c)
    return c.pick(NASTY)


def key(c: Chooser) -> str:
    return c.pick(FIELDS) if c.integer(0, 2) else c.pick([c.text(10), c.pick(NASTY)])


def value(c: Chooser) -> Any:
    shape = c.integer(0, 5)
    if shape == 4:
        return [scalar(c) for _ in range(c.integer(0, 3))]
    if shape == 5:
        return {key(c): scalar(c) for _ in range(c.integer(0, 3))}
    return scalar(c)


def make_document(c: Chooser) -> tuple[bytes, dict[str, str]]:
    """A valid pipeline built from parts, then mutated as data and as text; and an environment."""
    doc: dict[str, Any] = {"version": 1}
    if c.integer(0, 1):
        doc["state"] = "state/pipeline.db"
    doc["connectors"] = [{**copy.deepcopy(c.pick(CONNECTORS)), "id": 42}]
    if c.integer(0, 3) == 0:
        doc["connectors"].append({**copy.deepcopy(c.pick(CONNECTORS)), "name": "other", "id": 7})
    # small documents: loading costs about 3 microseconds a byte (PyYAML is pure Python)
    doc["steps"] = [copy.deepcopy(c.pick(STEPS)) for _ in range(c.pick([0, 1, 1, 2]))]
    doc["syncs"] = [copy.deepcopy(c.pick(SYNCS)) for _ in range(c.pick([0, 1, 1, 1, 2]))]
    if doc["syncs"] and c.integer(0, 2) == 0:
        doc["syncs"][0]["steps"] = [copy.deepcopy(c.pick(STEPS)) for _ in range(c.integer(0, 2))]

    for _ in range(c.integer(0, 6)):
        slots, containers = _slots(doc)
        op = c.pick(MUTATIONS)
        if op == "add" or not slots:
            target = c.pick(containers)
            if isinstance(target, dict):
                target[key(c)] = value(c)
            else:
                target.insert(c.integer(0, len(target)), value(c))
            continue
        container, at = c.pick(slots)
        if op == "drop":
            del container[at]
        elif op == "rename" and isinstance(container, dict):
            new = c.pick([key(c), at[:-1], at + "s", at.upper(), at.replace("_", "-")])
            container[new] = container.pop(at)
        elif op == "reference":
            old = container[at]
            container[at] = old + reference(c) if isinstance(old, str) and c.integer(0, 1) else reference(c)
        elif op == "wrap":
            container[at] = [container[at]] if c.integer(0, 1) else {"x": container[at]}
        elif op == "duplicate" and isinstance(container, list):
            container.insert(at, copy.deepcopy(container[at]))
        else:
            container[at] = value(c)

    style = c.pick(["json", "json-ascii", "yaml-block", "yaml-flow"])
    if style.startswith("json"):
        text = json.dumps(doc, ensure_ascii=style == "json-ascii", default=str)
    else:
        options = {"default_flow_style": style == "yaml-flow", "allow_unicode": True, "sort_keys": False}
        try:
            text = yaml.dump(doc, Dumper=FAST_DUMPER, **options)
        except UnicodeEncodeError:  # libyaml refuses lone surrogates; PyYAML escapes them
            text = yaml.dump(doc, Dumper=yaml.SafeDumper, **options)
    for _ in range(c.pick([0, 0, 0, 1, 2])):  # text damage: mostly the YAML stays well formed
        at = c.integer(0, len(text))
        if c.integer(0, 1):
            text = text[:at] + c.pick(SNIPPETS) + text[at:]
        else:
            text = text[:at] + text[at + c.integer(1, 20):]
    env = {"KEY_ID": "AKIAEXAMPLE", "TOKEN": "t0ken"}
    for _ in range(c.pick([0, 0, 1, 2])):
        env[c.pick(VARS[:5])] = c.pick(["", "${X}", "$${", "value", c.text(8)])
    if c.integer(0, 4) == 0:
        del env[c.pick(["KEY_ID", "TOKEN"])]
    return text.encode("utf-8", "surrogatepass"), env


@st.composite
def pipeline_documents(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Documents whose every choice hypothesis draws, and shrinks when a check fails."""
    return make_document(Chooser(draw))


def load_and_check(path: Path, env: dict[str, str]) -> float:
    """Loads ``path``: a Pipeline, or a ConfigError whose every issue says what and where. Returns seconds."""
    started = time.perf_counter()
    try:
        pipeline = load_pipeline(path, env=env)
    except ConfigError as exc:
        assert exc.issues, "a ConfigError names at least one issue"
        for issue in exc.issues:
            assert issue.message.strip(), f"an issue without a message: {issue!r}"
            assert issue.file == str(path)
            assert issue.line >= 0 and issue.column >= 0
            assert str(issue).isprintable(), f"control characters in an error line: {str(issue)!r}"
    else:
        assert isinstance(pipeline, Pipeline)
        assert pipeline.connectors
        pipeline.secrets()
    return time.perf_counter() - started


MAX_SECONDS_PER_DOCUMENT = 1.0  # the slowest seen is about 0.15 s


def check_document(folder: Path, document: tuple[bytes, dict[str, str]], timings: list[float]) -> None:
    path = folder / "pipeline.yaml"
    path.write_bytes(document[0])
    try:
        seconds = load_and_check(path, document[1])
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- the document ---\n{document[0]!r}\n--- env ---\n{document[1]!r}") from None
    timings.append(seconds)
    assert seconds < MAX_SECONDS_PER_DOCUMENT, f"one document took {seconds:.2f}s:\n{document[0]!r}"


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_mutated_pipelines_load_or_fail_clearly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The fast suite's share: 300 documents, every choice drawn (and shrunk) by hypothesis."""
    folder = tmp_path_factory.mktemp("mutated-drawn")
    timings: list[float] = []

    @_settings(300)
    @given(pipeline_documents())
    def property_(document: tuple[bytes, dict[str, str]]) -> None:
        check_document(folder, document, timings)

    property_()
    assert len(timings) >= 300


@pytest.mark.slow
def test_10000_mutated_pipelines_load_or_fail_clearly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """10,000 documents, each made from a seed by the same mutations (hypothesis draws the seed:
    drawing every choice would cost ~10 ms a document; a failure prints the document itself).

    About 3 ms of CPU a document (2 ms loading it, 0.25 ms making it, 0.4 ms hypothesis): ~30 s
    on one free core. The slowest document seen took 0.15 s."""
    folder = tmp_path_factory.mktemp("mutated-seeded")
    timings: list[float] = []
    started = time.monotonic()

    @_settings(10_000)
    @given(st.integers(0, 2**64))
    @example(1008069)  # once: an escaped UTF-16 pair reached pydantic as two lone surrogates
    def property_(seed: int) -> None:
        check_document(folder, make_document(Chooser(seed=seed)), timings)

    property_()
    elapsed = time.monotonic() - started
    assert len(timings) >= 10_000
    assert elapsed < 180, f"10,000 documents took {elapsed:.0f}s (loading them {sum(timings):.0f}s)"  # a hang guard


def test_random_bytes_are_a_config_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / "pipeline.yaml"

    @_settings(1_000)
    @given(st.binary(max_size=2_000) | st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")))
    def property_(data: bytes) -> None:
        path.write_bytes(data)
        with pytest.raises(ConfigError) as info:
            load_pipeline(path, env={})
        assert info.value.issues and all(i.message.strip() for i in info.value.issues)
        assert all(str(i).isprintable() for i in info.value.issues)

    property_()


def test_escaped_utf16_pairs_are_joined_and_bad_variable_bytes_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD.replace("path: docs", 'path: "docs-\\ud83c\\udf89"'))
    assert load_pipeline(path, env={}).connectors[0].config.path == "docs-\U0001f389"
    path.write_text(HEAD.replace("path: docs", "path: '${RAW}'"))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, env={"RAW": b"a\xffb".decode("utf-8", "surrogateescape")})
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:2:55: connectors[0].config.path: a variable used here has a value that is not UTF-8 text"]

