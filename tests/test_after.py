"""``after:``: what happens to a source object once it is done — deleted, moved or tagged, once,
only after its done is committed; a failing action is retried alone, never the steps."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import connector_for, run_flexingest
from stores import Store

from flexingest.state import State


def counting_hook(folder: Path) -> str:
    """A python step that counts how many times each object went through the steps."""
    module = f"count_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "def step(record):\n"
        f"    with open({str(folder / 'seen.txt')!r}, 'a') as f:\n"
        "        f.write(record['key'] + '\\n')\n"
        "    return record\n")
    return f"{module}:step"


def seen(folder: Path) -> list[str]:
    return sorted((folder / "seen.txt").read_text().split()) if (folder / "seen.txt").exists() else []


def rows(path: Path) -> dict[str, dict[str, Any]]:
    with State(path.parent / ".flexingest" / "pipeline.db", create=False) as state:
        return {r["key"]: dict(r) for r in state.objects("docs")}


def tags_of(store: Store, key: str) -> dict[str, str]:
    if store.kind == "s3":
        return dict(store.fs.get_tags(store.path(key)))
    if store.kind == "gcs":
        return dict(store.fs.info(store.path(key)).get("metadata") or {})
    if store.kind == "azure_blob":
        from azure.storage.blob import BlobServiceClient
        from stores import azurite_connection_string

        assert store.server is not None
        client = BlobServiceClient.from_connection_string(azurite_connection_string(store.server))
        return dict(client.get_blob_client(store.bucket, key).get_blob_tags())
    path = os.path.join(store.bucket, key)
    return {name[5:]: os.getxattr(path, name).decode() for name in os.listxattr(path) if name.startswith("user.")}


@pytest.mark.parametrize("action", ["delete", "move_to", "tag"])
def test_after_acts_once_after_done_on_every_backend(action: str, store: Store, write_pipeline: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    store.put_many({"in/a.txt": b"a", "in/sub/b.txt": b"b", "keep/c.txt": b"c"})
    after = {"delete": {"delete": True}, "move_to": {"move_to": "done/"},
             "tag": {"tag": {"flexingest": "processed"}}}[action]
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": counting_hook(tmp_path)}}],
                          syncs=[{"name": "docs", "connector": "docs", "prefix": "in/", "after": after}])
    first = run_flexingest("run", path, "--once")
    assert first.code == 0, first.stderr
    assert "after: 2 done" in first.stderr
    keys = set(store.keys())
    if action == "delete":
        assert keys == {"keep/c.txt"}
    elif action == "move_to":
        assert keys == {"done/a.txt", "done/sub/b.txt", "keep/c.txt"}
        assert store.read("done/sub/b.txt") == b"b"
    else:
        assert keys == {"in/a.txt", "in/sub/b.txt", "keep/c.txt"}
        assert tags_of(store, "in/a.txt") == {"flexingest": "processed"} == tags_of(store, "in/sub/b.txt")
    state = rows(path)
    assert all(r["status"] == "done" for r in state.values())
    if action != "tag":
        assert all(r["gone_at"] is not None for r in state.values()), "what left the bucket is gone"
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert "new 0, changed 0" in again.stderr, "a tag changes no version: nothing to process again"
    assert seen(tmp_path) == ["in/a.txt", "in/sub/b.txt"], "the steps ran once per object"


def test_a_failing_action_is_retried_alone_never_the_steps(new_store: Callable[[str], Store],
                                                           write_pipeline: Callable[..., Path],
                                                           tmp_path: Path) -> None:
    """The crash or the failure between the commit and the action: the next pass repeats only it."""
    store = new_store("s3")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    dest = f"s3://fi-no-such-archive-{uuid.uuid4().hex[:8]}/done"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": counting_hook(tmp_path)}}],
                          syncs=[{"name": "docs", "connector": "docs", "after": {"move_to": dest}}])
    first = run_flexingest("run", path, "--once")
    assert first.code == 0, "the objects are done: an action failing never undoes that"
    assert "after: 0 done, 2 failed" in first.stderr and "failed (tried again on the next pass)" in first.stderr
    status = json.loads(run_flexingest("status", path, "--json").stdout)["syncs"]["docs"]
    assert status["done"] == 2 and status["after"]["pending"] == 2 and status["after"]["failing"] == 2
    assert "not found" in (status["after"]["error"] or "")
    archive = dest.removeprefix("s3://").split("/")[0]
    store.fs.mkdir(archive)  # the destination exists now
    second = run_flexingest("run", path, "--once")
    assert second.code == 0, second.stderr
    assert "after: 2 done" in second.stderr
    assert sorted(store.fs.find(archive)) == [f"{archive}/done/a.txt", f"{archive}/done/b.txt"]
    assert store.keys() == []
    assert seen(tmp_path) == ["a.txt", "b.txt"], "only the action was repeated, never the steps"
    assert json.loads(run_flexingest("status", path, "--json").stdout)["syncs"]["docs"]["after"]["pending"] == 0


def test_an_object_changed_since_it_was_processed_is_left_alone(new_store: Callable[[str], Store],
                                                                write_pipeline: Callable[..., Path],
                                                                tmp_path: Path) -> None:
    store = new_store("local")
    store.put("a.txt", b"first")
    module = f"rewrite_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(  # the object is rewritten while it is processed
        "import os, time\n"
        "def step(record):\n"
        f"    path = os.path.join({store.bucket!r}, record['key'])\n"
        "    time.sleep(0.01)\n"
        "    with open(path, 'wb') as f:\n"
        "        f.write(b'second, longer')\n"
        "    return record\n")
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": f"{module}:step"}}],
                          syncs=[{"name": "docs", "connector": "docs", "after": {"delete": True}}])
    run_flexingest("run", path, "--once")
    assert "a.txt" in store.keys(), "a version nobody processed is never deleted"


def test_validate_refuses_a_move_that_would_loop(write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    connector = {"name": "docs", "type": "local", "config": {"path": str(tmp_path)}}
    loops = write_pipeline(connector, steps=["extract_text"], name="loops.yaml",
                           syncs=[{"name": "docs", "connector": "docs", "after": {"move_to": "processed/"}}])
    result = run_flexingest("validate", loops)
    assert result.code == 2
    line = next(i for i, t in enumerate(loops.read_text().splitlines(), 1) if "move_to" in t)
    assert f"loops.yaml:{line}:" in result.stderr and "syncs[0].after.move_to: moves objects to 'processed/'" in \
        result.stderr and "exclude: ['processed/**']" in result.stderr
    fine = write_pipeline(connector, steps=["extract_text"], name="fine.yaml",
                          syncs=[{"name": "docs", "connector": "docs", "prefix": "in/",
                                  "after": {"move_to": "processed/"}},
                                 {"name": "pdfs", "connector": "docs", "include": ["*.pdf"],
                                  "after": {"move_to": "archive/"}, "exclude": ["archive/**"]}])
    assert run_flexingest("validate", fine).code == 0
    two = write_pipeline(connector, steps=["extract_text"], name="two.yaml",
                         syncs=[{"name": "docs", "connector": "docs", "after": {"delete": True, "tag": {"a": "b"}}}])
    result = run_flexingest("validate", two)
    assert result.code == 2 and "give one of delete: true, move_to: PREFIX or tag" in result.stderr
