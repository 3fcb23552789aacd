"""What the commands promise beyond one pass: status and retry without secrets, plugins loaded
only when named, errors as JSON, dry runs that say what would be gone, GCS emulators without
credentials, and no process-wide switch leaking into the programs of steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from conftest import Result, connector_for, run_flexingest
from stores import Store


def test_status_and_retry_need_none_of_the_connectors_secrets(new_store: Callable[[str], Store],
                                                             write_pipeline: Callable[..., Path]) -> None:
    store = new_store("local")
    store.put("a.txt", b"a")
    archive = {"name": "archive", "type": "s3",
               "config": {"bucket": "archive", "aws_access_key_id": "${ARCHIVE_KEY_ID}",
                          "aws_secret_access_key": "${ARCHIVE_SECRET:?set it in /etc/flexingest/env}"}}
    path = write_pipeline([connector_for(store), archive], steps=["extract_text"],
                          syncs=[{"name": "docs", "connector": "docs"}])
    secrets = {"ARCHIVE_KEY_ID": "AKIAEXAMPLE", "ARCHIVE_SECRET": "not-needed-to-read-the-state"}
    assert run_flexingest("run", path, "--once", env=secrets).code == 0

    status = run_flexingest("status", path, "--json")  # an operator's shell: no secrets set
    assert status.code == 0, status.stderr
    assert json.loads(status.stdout)["syncs"]["docs"]["done"] == 1
    assert run_flexingest("status", path).code == 0
    assert run_flexingest("retry", path).code == 0
    run = run_flexingest("run", path, "--once")
    assert run.code == 2, "a command that contacts connectors still needs them"
    assert "ARCHIVE_KEY_ID is not set" in run.stderr and "set it in /etc/flexingest/env" in run.stderr


BROKEN_PLUGIN = "raise RuntimeError('this plugin is broken at import')\n"


def install(site: Path, name: str, module_text: str, step: str) -> None:
    """What `pip install NAME` leaves in site-packages: a module and its entry point."""
    module = name.replace("-", "_")
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(module_text)
    info = site / f"{module}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[flexingest.steps]\n{step} = {module}:Step\n")


def test_a_broken_plugin_breaks_only_the_pipelines_that_name_it(new_store: Callable[[str], Store],
                                                               write_pipeline: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    site = tmp_path / "site"
    install(site, "flexingest-broken", BROKEN_PLUGIN, "broken")
    env = {"PYTHONPATH": str(site)}
    store = new_store("local")
    store.put("a.txt", b"a")
    plain = write_pipeline(connector_for(store), steps=["extract_text"],
                           syncs=[{"name": "docs", "connector": "docs"}], name="plain.yaml")
    for args in (["validate", plain], ["run", plain, "--once"], ["status", plain]):
        result = run_flexingest(*args, env=env)
        assert result.code == 0, f"{args[0]}: {result.stderr}"
        assert "RuntimeError" not in result.stderr and "could not be loaded" not in result.stderr

    using = write_pipeline(connector_for(store), steps=["extract_text", {"broken": {}}],
                           syncs=[{"name": "docs", "connector": "docs"}], name="using.yaml")
    line = next(i for i, text in enumerate(using.read_text().splitlines(), 1) if text.startswith("- broken"))
    result = run_flexingest("validate", using, env=env)
    assert result.code == 2
    [issue] = result.stderr.splitlines()
    assert issue == (f"{using}:{line}:3: steps[1]: step 'broken' of package flexingest-broken 0.3 could not be "
                     "loaded from 'flexingest_broken:Step': RuntimeError: this plugin is broken at import")
    run = run_flexingest("run", using, "--once", env=env)
    assert run.code == 2 and run.stderr.splitlines()[-1] == f"{using}: 1 error"


def test_errors_are_json_lines_with_log_format_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nconnectors:\n  - name: x\n    type: local\n    config: {path: ., colour: red}\n")
    for command in (["validate", bad], ["run", bad, "--once"]):
        result = run_flexingest(*command, "--log-format", "json")
        assert result.code == 2
        lines = [json.loads(line) for line in result.stderr.splitlines()]
        assert lines[0]["level"] == "error" and lines[0]["field"] == "connectors[0].config.colour"
        assert (lines[0]["line"], lines[0]["column"], lines[0]["file"]) == (5, 23, str(bad))
        assert "unknown field 'colour'" in lines[0]["message"]
    missing = run_flexingest("run", tmp_path / "missing.yaml", "--once", "--log-format", "json")
    assert missing.code == 2 and json.loads(missing.stderr.splitlines()[0])["level"] == "error"
    usage = run_flexingest("process", bad, "--log-format", "json")
    assert usage.code == 2


def test_schema_takes_the_common_options(cli: Callable[..., Result]) -> None:
    for flag in ("-q", "-v", "--log-format=json"):
        out = cli("schema", flag)
        assert out.code == 0, out.stderr
        assert json.loads(out.stdout)["title"] == "flexingest pipeline"


def test_dry_run_says_what_would_be_marked_gone(new_store: Callable[[str], Store],
                                                write_pipeline: Callable[..., Path],
                                                cli: Callable[..., Result]) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    path = write_pipeline(connector_for(store), steps=["extract_text"], syncs=[{"name": "docs", "connector": "docs"}])
    assert cli("run", path, "--once").code == 0
    store.delete("b.txt")
    dry = cli("run", path, "--once", "--dry-run")
    assert dry.code == 0
    assert dry.stdout.splitlines() == ["docs\tdone\ta.txt", "docs\tgone\tb.txt\tno longer listed: would be marked gone"]
    assert cli("status", path, "--json").code == 0
    assert json.loads(cli("status", path, "--json").stdout)["syncs"]["docs"]["gone"] == 0, "a dry run changes nothing"


def test_a_gcs_emulator_needs_no_credentials(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                            tmp_path: Path) -> None:
    """Like Google's own clients with an emulator host: an endpoint that is not Google's and no
    credentials given means anonymous, not a search for application default credentials."""
    store = new_store("gcs")
    store.put("a.txt", b"hello")
    connector = connector_for(store)
    del connector["config"]["anonymous"]
    out = tmp_path / "out"
    env_dump = tmp_path / "env.txt"
    path = write_pipeline(connector, steps=[{"copy": {"url": str(out)}},
                                            {"command": {"argv": ["sh", "-c", f"env > {env_dump}"]}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    result = run_flexingest("run", path, "--once", env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none")})
    assert result.code == 0, result.stderr
    assert (out / "a.txt").read_bytes() == b"hello"
    assert "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT" not in env_dump.read_text(), \
        "no process-wide switch of flexingest's reaches the programs of steps"
