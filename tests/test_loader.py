"""The pipeline file: every kind of mistake gives its exact message and location."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flexingest.exceptions import ConfigError
from flexingest.loader import interpolate, load_pipeline

GOOD = """\
version: 1
connectors:
  - name: production-docs
    id: 42
    type: s3
    config:
      bucket: my-documents
      region: us-east-1
      aws_access_key_id: ${AWS_ACCESS_KEY_ID}
      aws_secret_access_key: ${AWS_SECRET_ACCESS_KEY}
steps:
  - extract_text: {}
  - write_jsonl: {path: out/documents.jsonl}
syncs:
  - name: contracts
    connector: production-docs
    prefix: contracts/
    include: ["**/*.pdf"]
    exclude: ["**/drafts/**"]
    min_size: 1
    min_age: 30s
    schedule: {every: 5m}
    on_change: reprocess
    concurrency: 8
    max_attempts: 3
"""
ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"}


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, env=ENV if env is None else env)
    prefix = f"{path}:"
    return [str(i).removeprefix(prefix).lstrip() for i in info.value.issues]


def test_the_spec_example_loads(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, GOOD), env=ENV)
    assert p.connector("production-docs").config.bucket == "my-documents"
    assert p.connector(42).name == "production-docs"
    assert p.connector("42").name == "production-docs"
    sync = p.sync("contracts")
    assert sync.min_age.total_seconds() == 30
    assert sync.schedule.every.total_seconds() == 300
    assert [s.name for s in p.steps_for(sync)] == ["extract_text", "write_jsonl"]
    assert p.state_path == tmp_path / ".flexingest" / "pipeline.db"


def test_secrets_never_appear_in_repr_or_dump(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, GOOD), env=ENV)
    for text in (repr(p), str(p), p.model_dump_json(), repr(p.connectors[0].config)):
        assert ENV["AWS_SECRET_ACCESS_KEY"] not in text
        assert ENV["AWS_ACCESS_KEY_ID"] not in text
    assert "**********" in repr(p.connectors[0].config)
    assert p.secrets() == set(ENV.values())


def test_unknown_connector_reference_names_line_column_and_known_names(tmp_path: Path) -> None:
    text = GOOD.replace("connector: production-docs", "connector: prod-docs")
    assert errors(tmp_path, text) == [
        "16:16: syncs[0].connector: unknown connector 'prod-docs' (did you mean 'production-docs'?) "
        "(known: production-docs)"]


def test_connector_by_id(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, GOOD.replace("connector: production-docs", "connector: 42")), env=ENV)
    assert p.connector(p.syncs[0].connector).name == "production-docs"
    assert errors(tmp_path, GOOD.replace("connector: production-docs", "connector: 7")) == [
        "16:16: syncs[0].connector: unknown connector 7 (known: production-docs)"]


def test_typo_in_a_field_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    assert errors(tmp_path, GOOD.replace("region:", "regoin:")) == [
        "8:7: connectors[0].config.regoin: unknown field 'regoin' (did you mean 'region'?)"]
    assert errors(tmp_path, GOOD.replace("syncs:", "sync:")) == [
        "14:1: sync: unknown field 'sync' (did you mean 'syncs'?)"]


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("type: s3", "type: s4").replace("on_change: reprocess", "on_change: maybe") \
        .replace("concurrency: 8", "concurrency: 0").replace("extract_text: {}", "extract_txt: {}")
    assert errors(tmp_path, text) == [
        "5:11: connectors[0].type: unknown connector type 's4' (known: azure_blob, gcs, local, s3)",
        "12:5: steps[0]: unknown step 'extract_txt' (did you mean 'extract_text'?) (known: chunk, command, "
        "copy, extract_text, python, unpack, webhook, write_json, write_jsonl)",
        "23:16: syncs[0].on_change: input should be 'reprocess' or 'ignore', got 'maybe'",
        "24:18: syncs[0].concurrency: input should be greater than or equal to 1",
    ]


def test_missing_variable_names_itself_and_where_it_is_used(tmp_path: Path) -> None:
    assert errors(tmp_path, GOOD, env={"AWS_ACCESS_KEY_ID": "x"}) == [
        "10:30: connectors[0].config.aws_secret_access_key: environment variable AWS_SECRET_ACCESS_KEY is not set"]


def test_interpolation_forms() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("a-${SET}-b", env) == ("a-value-b", [])
    assert interpolate("${UNSET:-fallback}", env) == ("fallback", [])
    assert interpolate("${EMPTY:-fallback}", env) == ("fallback", [])
    assert interpolate("${EMPTY-fallback}", env) == ("", [])
    assert interpolate("$${SET} costs $5", env) == ("${SET} costs $5", [])
    assert interpolate("${UNSET:?set UNSET to the bucket name}", env)[1] == [
        "set UNSET to the bucket name (environment variable UNSET is not set)"]
    assert interpolate("${UNSET}", env)[1] == ["environment variable UNSET is not set"]
    assert "invalid variable reference" in interpolate("${not valid}", env)[1][0]


def test_required_variable_message(tmp_path: Path) -> None:
    text = GOOD.replace("bucket: my-documents", "bucket: ${BUCKET:?set BUCKET to the documents bucket}")
    assert errors(tmp_path, text) == [
        "7:15: connectors[0].config.bucket: set BUCKET to the documents bucket "
        "(environment variable BUCKET is not set)"]


def test_missing_required_fields(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors:
          - name: docs
            type: s3
            config: {region: eu-west-1}
        steps:
          - write_jsonl: {}
        """) == [
        "5:5: connectors[0].config.bucket: required field missing",
        "7:5: steps[0].write_jsonl.path: required field missing",
    ]


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    text = GOOD.replace("aws_secret_access_key: ${AWS_SECRET_ACCESS_KEY}", "aws_secret_access_key: [hunter2-secret]")
    out = errors(tmp_path, text)
    assert out == ["10:7: connectors[0].config.aws_secret_access_key: input should be a valid string"]
    assert "hunter2" not in "".join(out)


def test_credentials_that_go_together(tmp_path: Path) -> None:
    text = GOOD.replace("      aws_secret_access_key: ${AWS_SECRET_ACCESS_KEY}\n", "")
    assert errors(tmp_path, text) == [
        "6:5: connectors[0].config: 'aws_access_key_id' and 'aws_secret_access_key' go together: "
        "give both or neither"]


def test_duplicate_names_and_keys(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors:
          - {name: a, id: 1, type: local, config: {path: x}}
          - {name: a, id: 1, type: local, config: {path: y}}
        steps: [extract_text]
        syncs:
          - {name: s, connector: a}
          - {name: s, connector: a, connector: a}
        """) == [
        "4:12: connectors[1].name: duplicate connector name 'a' (also connectors[0])",
        "4:19: connectors[1].id: duplicate connector id 1 (also connectors[0])",
        "8:12: syncs[1].name: duplicate sync name 's' (also syncs[0])",
        "8:29: syncs[1].connector: duplicate key (the later one would silently win)",
    ]


def test_a_sync_needs_steps(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        syncs:
          - name: s
            connector: a
        """) == ["4:5: syncs[0]: no steps: give this sync 'steps' or declare top-level 'steps'"]


def test_bad_schedules_globs_and_durations(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        steps: [extract_text]
        syncs:
          - {name: s1, connector: a, schedule: {every: 5x}}
          - {name: s2, connector: a, schedule: {cron: "* * *"}}
          - {name: s3, connector: a, schedule: {cron: "0 * * * *", timezone: Mars/Olympus}}
          - {name: s4, connector: a, schedule: {hourly: true}}
          - {name: s5, connector: a, include: ["[abc"], min_size: 10KB, max_size: 1KB}
          - {name: s6, connector: a, schedule: {every: 5m, cron: "* * * * *"}}
        """) == [
        "5:48: syncs[0].schedule.every: expected a duration like 30s, 5m, 1h30m or a number of seconds, got '5x'",
        "6:47: syncs[1].schedule.cron: invalid crontab '* * *': Wrong number of fields; got 3, expected 5",
        "7:70: syncs[2].schedule.timezone: unknown time zone 'Mars/Olympus' (e.g. UTC, Europe/Paris)",
        "8:30: syncs[3].schedule: a schedule is {every: 5m} or {cron: '*/15 * * * *', timezone: UTC}",
        "9:30: syncs[4].include: unclosed '[' in glob '[abc'",
        "10:30: syncs[5].schedule: a schedule is {every: 5m} or {cron: '*/15 * * * *', timezone: UTC}",
    ]


def test_step_shapes(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        steps:
          - extract_text
          - extract_text:
          - {extract_text: {}, write_jsonl: {path: x}}
          - copy: {url: out, bogus: 1}
          - write_jsonl: {path: x, connector: nope}
        """) == [
        "6:5: steps[2]: a step is one step name with its options, e.g. '- write_jsonl: {path: out.jsonl}'",
        "7:22: steps[3].copy.bogus: unknown field 'bogus' (expected one of: url, connector)",
        "8:28: steps[4].write_jsonl.connector: unknown field 'connector' (expected one of: path)",
    ]


def test_step_shorthands_load(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        steps:
          - extract_text
          - extract_text:
          - copy: {url: out, connector: a}
        """), env={})
    assert [s.name for s in p.steps] == ["extract_text", "extract_text", "copy"]
    assert p.steps[2].options.connector == "a"


def test_step_connector_reference_is_checked(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        steps:
          - copy: {url: out, connector: backup}
        """, env={}) == ["4:33: steps[0].copy.connector: unknown connector 'backup' (known: a)"]


def test_a_destination_url_must_be_of_its_connectors_kind(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        version: 1
        connectors: [{name: a, type: s3, config: {bucket: b}}]
        steps:
          - copy: {url: "s3://other-bucket/mirror", connector: a}
          - copy: {url: "s3a://other-bucket/mirror", connector: a}
          - copy: {url: mirror/, connector: a}
          - write_json: {url: "gs://elsewhere/json", connector: a}
        """, env={}) == ["7:23: steps[3].write_json.url: gs:// is not a place in connector 'a' (s3): give a path "
                         "inside its bucket, or a URL like s3://bucket/path"]


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty; a pipeline needs at least 'version: 1' and 'connectors'"),
    ("- a\n- b\n", "1:1: the top level must be a mapping with 'version', 'connectors', ..."),
    ("version: 1\nconnectors: [\n",
     "3:1: invalid YAML: while parsing a flow node expected the node content, but found '<stream end>'"),
    ("version: 1\n---\nversion: 1\n", "3:1: one pipeline per file: found a second YAML document"),
    ("version: 2\nconnectors: [{name: a, type: local, config: {path: x}}]\nsteps: [extract_text]\n",
     "1:10: version: input should be 1, got 2"),
])
def test_broken_files(tmp_path: Path, text: str, message: str) -> None:
    assert errors(tmp_path, text, env={})[0] == message


def test_python_tags_are_refused(tmp_path: Path) -> None:
    out = errors(tmp_path, "version: !!python/object/apply:os.system ['echo pwned']\n", env={})
    assert "1:10: version: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in out


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    assert errors(tmp_path, "\n".join(lines) + "\n", env={}) == [
        "5:45: the file expands to more than 100000 values (an alias bomb?): this alias crossed the bound; "
        "refusing to load it"], "the line and column of the alias whose expansion crossed the bound"


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    out = errors(tmp_path, "version: 1\nconnectors: &c [*c]\n", env={})
    assert any("recursive alias" in line or "invalid YAML" in line for line in out)


def test_merge_keys_work(tmp_path: Path) -> None:
    text = """\
        version: 1
        connectors: [{name: a, type: local, config: {path: x}}]
        steps: [extract_text]
        syncs:
          - &first {name: one, connector: a, concurrency: 3}
          - {<<: *first, name: two}
        """
    p = load_pipeline(write(tmp_path, text), env={})
    assert [(s.name, s.concurrency) for s in p.syncs] == [("one", 3), ("two", 3)]


def test_state_path_relative_to_the_file(tmp_path: Path) -> None:
    text = GOOD.replace("version: 1\n", "version: 1\nstate: state/contracts.db\n")
    p = load_pipeline(write(tmp_path, text), env=ENV)
    assert p.state_path == tmp_path / "state" / "contracts.db"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_glob_semantics(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, GOOD), env=ENV)
    sync = p.sync("contracts")
    assert sync.skip_reason("contracts/a.pdf", 10, 3600) is None
    assert sync.skip_reason("contracts/x/y/a.pdf", 10, 3600) is None
    assert sync.skip_reason("contracts/a.docx", 10, 3600) == "not included"
    assert sync.skip_reason("contracts/drafts/a.pdf", 10, 3600) == "excluded by '**/drafts/**'"
    assert sync.skip_reason("contracts/x/drafts/a.pdf", 10, 3600) == "excluded by '**/drafts/**'"
    assert sync.skip_reason("contracts/a.pdf", 0, 3600) == "smaller than min_size (0 < 1 bytes)"
    assert sync.skip_reason("contracts/a.pdf", 10, 5) == "younger than min_age (5.0s < 30s)"
