"""Faults around objects and the machine: crashes, full disks, races, odd and huge objects.

Items 1, 4, 7, 8, 9 and 10 of the reliability matrix (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
import unicodedata
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import FLEXINGEST, Result, connector_for, peak_rss_mb_of, run_flexingest
from stores import Store

from flexingest.state import State


def state_rows(path: Path, sync: str = "docs") -> dict[str, dict[str, Any]]:
    with State(path, create=False) as state:
        return {r["key"]: dict(r) for r in state.objects(sync)}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, hidden leftovers included, with its bytes."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def module(tmp_path: Path, body: str) -> str:
    name = f"hook_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    return name


# --------------------------------------------------------------------------- 1. kill -9 soak


@pytest.mark.slow
@pytest.mark.parametrize("kind, rounds, n", [("local", 30, 300), ("s3", 30, 120)])
def test_kill_9_at_random_points(kind: str, rounds: int, n: int, new_store: Callable[[str], Store],
                                 write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """30 rounds of kill -9 at a random moment of a pass, objects added and overwritten between."""
    rng = random.Random(1234)
    store = new_store(kind)
    contents = {f"soak/{i:04d}.txt": f"v0 {i}".encode() for i in range(n)}
    store.put_many(contents)
    out_json, out_copy = tmp_path / "json", tmp_path / "copy"
    hook = module(tmp_path, "import random, time\n"
                            "def jitter(record):\n    time.sleep(random.random() * 0.01)\n    return record\n")
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": f"{hook}:jitter"}},
                                                       {"write_json": {"url": str(out_json)}},
                                                       {"copy": {"url": str(out_copy)}},
                                                       {"write_jsonl": {"path": str(tmp_path / "all.jsonl")}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 8}])
    state_path = path.parent / ".flexingest" / "pipeline.db"
    started = time.monotonic()
    for round_ in range(rounds):
        proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once", "-q"], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if round_ % 5 == 4:  # the bucket moves on between crashes
            new = {f"soak/new-{round_}-{j}.txt": f"new {round_} {j}".encode() for j in range(5)}
            changed = {k: f"v{round_} {k}".encode() for k in rng.sample(sorted(contents), 3)}
            store.put_many({**new, **changed})
            contents.update(new)
            contents.update(changed)
    final = run_flexingest("run", path, "--once")
    assert final.code == 0, final.stderr
    soak_seconds = time.monotonic() - started

    rows = state_rows(state_path)
    assert sorted(rows) == sorted(contents), "every object known"
    assert {r["status"] for r in rows.values()} == {"done"}, "lost = 0: every object ends done"
    copies = files(out_copy)
    assert copies == contents, "each copy exists once, with the latest bytes, no partial or temp file"
    records = files(out_json)
    assert sorted(records) == sorted(f"{k}.json" for k in contents), "one record per object, duplicates = 0"
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_bytes().decode().splitlines()]
    seen = Counter((r["key"], r["version"]) for r in lines)
    assert max(seen.values()) == 1, f"write_jsonl: a line repeated after a kill -9: {seen.most_common(3)}"
    assert {(k, r["version"]) for k, r in rows.items()} <= set(seen), "each object's line, once"
    with sqlite3.connect(state_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"\nkill -9 soak [{kind}]: rounds={rounds} objects={len(contents)} lost=0 duplicates=0 "
          f"seconds={soak_seconds:.0f}")


# --------------------------------------------------------------------------- 4. disk full


def in_small_disk(mountpoint: Path, size: str, argv: list[str]) -> Result:
    """Run a command with a tmpfs of ``size`` mounted at ``mountpoint`` (a private mount namespace)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mountpoint), *argv],
                          capture_output=True, text=True, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_outputs_on_a_full_disk_fail_cleanly(new_store: Callable[[str], Store],
                                             write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    blobs = {f"big-{i:02d}.bin": bytes([i]) * 40_000 for i in range(12)}
    store.put_many(blobs)
    disk = tmp_path / "disk"
    out = disk / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}},
                                                       {"write_jsonl": {"path": str(disk / "records.jsonl")}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}])
    script = f'{FLEXINGEST} run "{path}" --once; echo "exit=$?"; cd "{disk}" && find . -type f -exec ls -l {{}} +'
    result = in_small_disk(disk, "256k", ["sh", "-c", script])
    assert "exit=1" in result.stdout, result.stdout + result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    rows = state_rows(path.parent / ".flexingest" / "pipeline.db")
    done = {k for k, r in rows.items() if r["status"] == "done"}
    failed = {k for k, r in rows.items() if r["status"] == "failed"}
    assert done and failed and done | failed == set(blobs)
    assert all("No space left on device" in rows[k]["error"] for k in failed)
    # what the tmpfs held: every done object complete, nothing of a failed one
    listing = result.stdout
    for key in done:
        assert f"{blobs[key].__len__()} " in listing and f"./out/{key}" in listing
    for key in failed:
        assert f"./out/{key}" not in listing, "no partial output of a failed object"
    assert ".part" not in listing


def test_state_on_a_full_disk_fails_cleanly_and_recovers(new_store: Callable[[str], Store],
                                                         write_pipeline: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({f"k/{i:05d}-{'x' * 60}.txt": b"." for i in range(4000)})
    disk = tmp_path / "disk"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs"}], state=str(disk / "state.db"))
    result = in_small_disk(disk, "160k", [FLEXINGEST, "run", str(path), "--once"])
    assert result.code == 1, result.stderr
    assert "database or disk is full" in result.stderr
    assert "Traceback" not in result.stderr
    # the tmpfs is gone with its namespace: a fresh, roomy state starts over and completes
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert len(state_rows(disk / "state.db")) == 4000


# --------------------------------------------------------------------------- 7. races with writers


@pytest.mark.parametrize("kind", ["local", "s3", "gcs", "azure_blob"])
def test_object_overwritten_while_it_is_processed(kind: str, new_store: Callable[[str], Store],
                                                  write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """The recorded version is the one processed; the newer one is processed next pass."""
    store = new_store(kind)
    store.put("doc.txt", b"first version")
    gate = tmp_path / "gate"
    hook = module(tmp_path, "import time\nfrom pathlib import Path\n"
                            "def hold(record):\n"
                            f"    Path({str(gate)!r}).with_suffix('.reached').touch()\n"
                            f"    while not Path({str(gate)!r}).exists():\n        time.sleep(0.05)\n"
                            "    return record\n")
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}},
                                                       {"python": {"callable": f"{hook}:hold"}},
                                                       {"write_json": {"url": str(tmp_path / "rec")}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not gate.with_suffix(".reached").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.05 if kind != "local" else 0.01)
    store.put("doc.txt", b"second version, longer")  # after the copy read the first one
    gate.touch()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    record = json.loads((tmp_path / "rec" / "doc.txt.json").read_text())
    assert (out / "doc.txt").read_bytes() == b"first version"
    state = state_rows(path.parent / ".flexingest" / "pipeline.db")["doc.txt"]
    assert state["version"] == record["version"], "the state records the version that was processed"

    gate.unlink()
    gate.touch()  # let the next pass through at once
    again = run_flexingest("run", path, "--once")
    assert again.code == 0
    assert "changed 1" in again.stderr
    assert (out / "doc.txt").read_bytes() == b"second version, longer"
    assert state_rows(path.parent / ".flexingest" / "pipeline.db")["doc.txt"]["version"] != state["version"]


def test_overwritten_between_listing_and_reading_records_what_was_read(new_store: Callable[[str], Store],
                                                                       write_pipeline: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    store = new_store("s3")
    store.put_many({"a.txt": b"old a", "b.txt": b"old b"})
    hook = module(tmp_path, "import time\nfrom pathlib import Path\n"
                            "def first(record):\n"
                            f"    if record['key'] == 'a.txt':\n"
                            f"        Path({str(tmp_path / 'listed')!r}).touch()\n"
                            f"        while not Path({str(tmp_path / 'go')!r}).exists():\n"
                            "            time.sleep(0.05)\n"
                            "    return record\n")
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": f"{hook}:first"}},
                                                       {"copy": {"url": str(out)}},
                                                       {"write_json": {"url": str(tmp_path / "rec")}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "listed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    store.put("a.txt", b"new a, after the listing")  # before copy reads it
    (tmp_path / "go").touch()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "a.txt: changed since it was listed; processing the new version" in stderr
    assert (out / "a.txt").read_bytes() == b"new a, after the listing"
    record = json.loads((tmp_path / "rec" / "a.txt.json").read_text())
    rows = state_rows(path.parent / ".flexingest" / "pipeline.db")
    info = store.fs.info(store.path("a.txt"))
    assert rows["a.txt"]["version"] == record["version"] == info["ETag"].strip('"')
    new_size = len(b"new a, after the listing")
    assert record["size"] == rows["a.txt"]["size"] == new_size, "the size of what was read, not of what was listed"
    assert record["modified"] == info["LastModified"].isoformat().replace("+00:00", "Z")
    again = run_flexingest("run", path, "--once")
    assert "new 0, changed 0" in again.stderr, "what was read was recorded: nothing left to do"


@pytest.mark.parametrize("kind", ["local", "s3", "gcs", "azure_blob"])
def test_object_deleted_between_listing_and_reading_is_gone(kind: str, new_store: Callable[[str], Store],
                                                            write_pipeline: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    store = new_store(kind)
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    hook = module(tmp_path, "import time\nfrom pathlib import Path\n"
                            "def first(record):\n"
                            f"    if record['key'] == 'a.txt':\n"
                            f"        Path({str(tmp_path / 'listed')!r}).touch()\n"
                            f"        while not Path({str(tmp_path / 'go')!r}).exists():\n"
                            "            time.sleep(0.05)\n"
                            "    return record\n")
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": f"{hook}:first"}},
                                                       {"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "listed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    store.delete("a.txt")
    (tmp_path / "go").touch()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "failed 0" in stderr and "gone 1" in stderr
    rows = state_rows(path.parent / ".flexingest" / "pipeline.db")
    assert rows["a.txt"]["gone_at"] is not None and rows["a.txt"]["status"] != "failed"
    assert rows["b.txt"]["status"] == "done"
    assert set(files(out)) == {"b.txt"}


# --------------------------------------------------------------------------- 8. odd listings


@pytest.mark.parametrize("kind", ["local", "s3", "gcs", "azure_blob"])
def test_a_thousand_objects_in_one_second_zero_bytes_and_placeholders(kind: str, new_store: Callable[[str], Store],
                                                                      write_pipeline: Callable[..., Path],
                                                                      tmp_path: Path) -> None:
    store = new_store(kind)
    objects = {f"burst/{i:04d}.txt": b"" if i % 10 == 0 else f"{i}".encode() for i in range(1000)}
    store.put_many(objects)
    if kind == "local":
        stamp = time.time() - 60
        for key in objects:
            os.utime(Path(store.bucket) / key, (stamp, stamp))
    elif kind == "s3":
        store.fs.call_s3("put_object", Bucket=store.bucket, Key="folder/", Body=b"")
    elif kind == "gcs":
        store.fs.call("POST", f"{store.server.url}/upload/storage/v1/b/{store.bucket}/o",
                      uploadType="media", name="folder/", data=b"", json_out=True)
    else:
        from azure.storage.blob import BlobServiceClient
        from stores import azurite_connection_string

        client = BlobServiceClient.from_connection_string(azurite_connection_string(store.server))
        container = client.get_container_client(store.bucket)
        container.upload_blob("folder/", b"")
        container.upload_blob("marker", b"", metadata={"hdi_isfolder": "true"})
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 16}])
    result = run_flexingest("run", path, "--once")
    assert result.code == 0, result.stderr
    assert "listed 1000, new 1000" in result.stderr, "placeholders are not objects"
    assert files(out) == objects
    assert sorted(state_rows(path.parent / ".flexingest" / "pipeline.db")) == sorted(objects)


# --------------------------------------------------------------------------- 9. huge objects


@pytest.mark.slow
def test_a_2_gb_object_through_copy_and_extract_text_in_bounded_memory(new_store: Callable[[str], Store],
                                                                       write_pipeline: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    store = new_store("local")
    big = Path(store.bucket) / "huge.txt"
    with open(big, "wb") as f:  # 2 GiB of text, written for real (not sparse): it is read back
        chunk = (b"lorem ipsum dolor sit amet " * 40 + b"\n") * 1000
        for _ in range((2 * 1024**3) // len(chunk)):
            f.write(chunk)
    size = big.stat().st_size
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}},
                                                       {"extract_text": {}},
                                                       {"write_jsonl": {"path": str(tmp_path / "r.jsonl")}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    peak, result = peak_rss_mb_of([FLEXINGEST, "run", str(path), "--once"])
    assert result.code == 0, result.err if hasattr(result, "err") else result.stderr
    assert (out / "huge.txt").stat().st_size == size
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["metadata"]["truncated"] is True and len(record["text"]) == 10_000_000
    print(f"\n2 GiB object through copy + extract_text: peak RSS {peak:.0f} MB")
    assert peak < 300, f"peak RSS {peak:.0f} MB"
    big.unlink()
    shutil.rmtree(out)


@pytest.mark.slow
def test_a_large_object_from_s3_streams_in_bounded_memory(new_store: Callable[[str], Store],
                                                          write_pipeline: Callable[..., Path],
                                                          tmp_path: Path) -> None:
    store = new_store("s3")
    payload = os.urandom(1024 * 1024) * 200  # 200 MiB
    store.put("big.bin", payload)
    out = tmp_path / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    peak, result = peak_rss_mb_of([FLEXINGEST, "run", str(path), "--once"])
    assert result.code == 0, result.stderr
    assert (out / "big.bin").read_bytes() == payload
    print(f"\n200 MiB object from S3 through copy: peak RSS {peak:.0f} MB")
    assert peak < 200, f"peak RSS {peak:.0f} MB"


# --------------------------------------------------------------------------- 10. hostile keys


def test_hostile_and_awkward_keys(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                  tmp_path: Path) -> None:
    store = new_store("s3")
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    long_segment = "s" * 300 + ".txt"
    key_1024 = "/".join(["d" * 200] * 5)[:1020] + ".txt"
    keys = {
        "../up.txt": "unsafe", "a/../../up2.txt": "unsafe", "/abs/olute.txt": "unsafe",
        "back\\slash.txt": "unsafe", "nul\x00byte.txt": None, "double//slash.txt": "unsafe",
        f"long/{long_segment}": "unsafe", key_1024: "done",
        "clash": "done", "clash/inner.txt": "folder", nfc: "done", nfd: "done",
        "Case.txt": "done", "case.txt": "done", "./dot.txt": "unsafe",
    }
    for key in keys:
        if "\x00" in key:
            continue  # S3 refuses NUL in keys; the step's check is covered in test_output_keys
        store.fs.call_s3("put_object", Bucket=store.bucket, Key=key, Body=key.encode("utf-8", "surrogatepass"))
    out = tmp_path / "dest" / "out"
    path = write_pipeline(connector_for(store), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}], name="p.yaml")
    result = run_flexingest("run", path, "--once")
    assert result.code == 1
    assert not (tmp_path / "dest" / "up.txt").exists() and not (tmp_path / "up2.txt").exists()
    assert not Path("/abs/olute.txt").exists()
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
            and not p.is_relative_to(out)} <= {"p.yaml", ".flexingest/p.db", ".flexingest/p.db-wal",
                                              ".flexingest/p.db-shm", ".flexingest/p.db.lock"}
    rows = state_rows(path.parent / ".flexingest" / "p.db")
    for key, expected in keys.items():
        if expected is None:
            continue
        row = rows[key]
        if expected == "done":
            assert row["status"] == "done", (key, row["error"])
            assert (out / key).read_bytes() == key.encode()
        elif expected == "unsafe":
            assert row["status"] == "dead" and "unsafe key" in row["error"], (key, row["error"])
        else:  # "clash" (a file) and "clash/inner.txt" (needs a folder "clash") cannot both exist
            assert row["status"] == "failed" and "a file of that name is in the way" in row["error"], row
    assert (out / nfc).read_bytes() != (out / nfd).read_bytes(), "NFC and NFD are different keys"
    assert (out / "Case.txt").exists() and (out / "case.txt").exists()


def test_output_keys_check_refuses_nul_and_long_segments() -> None:
    from flexingest.exceptions import UnsafeKey
    from flexingest.objects import check_key

    for key, why in [("a\x00b", "NUL"), ("x/" + "y" * 256, "255 bytes"), ("a/./b", "'.'"), ("", "empty")]:
        with pytest.raises(UnsafeKey, match=why):
            check_key(key)
    assert check_key("a/b c/ü.txt") == ["a", "b c", "ü.txt"]


def test_process_refuses_keys_that_would_read_outside_a_local_folder(tmp_path: Path) -> None:
    """`process` keys come from people and request bodies: on a local connector none may name a
    file outside the folder, whether by '..', an absolute path or a linked folder."""
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("the secret file")
    docs = tmp_path / "deep" / "docs"
    docs.mkdir(parents=True)
    (docs / "ok.txt").write_text("fine")
    (docs / "linked").symlink_to(secret.parent, target_is_directory=True)
    out = tmp_path / "out.jsonl"
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: deep/docs}}\n"
                    f"steps: [extract_text, {{write_jsonl: {{path: {out}}}}}]\n")
    hostile = ["../../private/secret.txt", str(secret), "linked/secret.txt", "./ok.txt", "a//ok.txt"]
    result = run_flexingest("process", path, "--connector", "docs", "ok.txt", *hostile, "missing.txt")
    assert result.code == 1
    lines = {r["key"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert lines["ok.txt"]["status"] == "done"
    for key in hostile:
        assert lines[key]["status"] == "failed" and "unsafe key" in lines[key]["error"], lines[key]
    assert lines["missing.txt"]["status"] == "gone"
    assert lines["missing.txt"]["error"].endswith("missing.txt: not found")
    written = out.read_text()
    assert "fine" in written and "secret" not in written


def test_local_listing_follows_file_links_but_never_enters_a_linked_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "inside.txt").write_text("a whole other tree")
    (tmp_path / "shared.txt").write_text("linked file")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "plain.txt").write_text("plain")
    (docs / "link.txt").symlink_to(tmp_path / "shared.txt")
    (docs / "tree").symlink_to(elsewhere, target_is_directory=True)
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: docs}}\n"
                    "steps: [extract_text, {write_jsonl: {path: out.jsonl}}]\n"
                    "syncs:\n  - {name: docs, connector: docs}\n")
    result = run_flexingest("run", path, "--once")
    assert result.code == 0, result.stderr
    records = {r["key"]: r["text"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert records == {"plain.txt": "plain", "link.txt": "linked file"}


def test_a_local_file_name_that_is_not_utf8_fails_alone_and_visibly(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "good.txt").write_text("fine")
    with open(os.fsencode(docs) + b"/bad\xffname.txt", "wb") as f:
        f.write(b"bytes")
    os.mkdir(os.fsencode(docs) + b"/dir\xfe")
    with open(os.fsencode(docs) + b"/dir\xfe/inner.txt", "wb") as f:
        f.write(b"inner")
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: docs}}\n"
                    "steps: [extract_text, {write_jsonl: {path: out.jsonl}}]\n"
                    "syncs:\n  - {name: docs, connector: docs, max_attempts: 2}\n")
    for attempt in (1, 2):
        result = run_flexingest("run", path, "--once")
        assert result.code == 1, result.stderr
        assert "Traceback" not in result.stderr
        rows = state_rows(path.parent / ".flexingest" / "p.db")
        assert rows["good.txt"]["status"] == "done"
        for key in ("bad\\xffname.txt", "dir\\xfe/inner.txt"):
            assert rows[key]["attempts"] == attempt
            assert rows[key]["status"] == ("failed" if attempt == 1 else "dead")
            assert "the file name is not UTF-8 text" in rows[key]["error"], rows[key]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["good.txt"]
    status = run_flexingest("status", path, "--json")
    assert status.code == 0 and "bad\\\\xffname.txt" in status.stdout


def test_a_step_error_naming_undecodable_bytes_is_recorded(tmp_path: Path) -> None:
    """An error message carrying a lone surrogate (a non-UTF-8 file name a step echoed) is
    stored escaped: it neither crashes the commit nor leaves the pass recorded as ok."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    hook = module(tmp_path, "def boom(record):\n"
                            "    raise ValueError('cannot open ' + b'x\\xff'.decode('utf-8', 'surrogateescape'))\n")
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: docs}}\n"
                    f"steps: [{{python: {{callable: '{hook}:boom'}}}}]\n"
                    "syncs:\n  - {name: docs, connector: docs}\n")
    result = run_flexingest("run", path, "--once")
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    row = state_rows(path.parent / ".flexingest" / "p.db")["a.txt"]
    assert row["status"] == "failed" and row["error"].endswith("cannot open x\\udcff"), row
    status = json.loads(run_flexingest("status", path, "--json").stdout)
    assert status["syncs"]["docs"]["last_run"]["result"] == "failed"


def test_keys_with_control_characters_cannot_drive_the_terminal_or_forge_lines(tmp_path: Path) -> None:
    """A bucket's key is anyone's text: logs, dry-run lines and status show it escaped, on one line."""
    key = "evil\x1b[2J\rname\nFAKE ERROR line\t.txt"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / key).write_text("x")
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: docs}}\n"
                    "steps: [{command: {argv: ['false']}}]\nsyncs:\n  - {name: docs, connector: docs}\n")
    shown = "evil\\x1b[2J\\rname\\nFAKE ERROR line\\t.txt"
    dry = run_flexingest("run", path, "--once", "--dry-run")
    assert dry.stdout.splitlines() == [f"docs\tnew\t{shown}"]
    run = run_flexingest("run", path, "--once")
    assert run.code == 1
    status = run_flexingest("status", path)
    for output in (run.stderr, status.stdout, dry.stdout):
        assert "\x1b" not in output and "\r" not in output, output
        assert not any(line.startswith("FAKE") for line in output.splitlines()), output
    assert f"docs: {shown} failed: command 'false' exited with status 1" in run.stderr
    assert f"{shown}: command 'false' exited with status 1" in status.stdout
    rows = state_rows(path.parent / ".flexingest" / "p.db")
    assert list(rows) == [key], "the state keeps the key itself"
