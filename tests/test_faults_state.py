"""Reliability (issue 5, item 5): a damaged, foreign, newer or unwritable state file.

Users trust the state file with the only record of what was processed. Each test makes
a real pipeline over a `local` folder, runs a first pass, damages the state the way disks,
people and other programs do, and drives the command line again. A state flexingest cannot
trust is refused with one clear line (exit 1) and left byte for byte as it was: a silent
reset would reprocess a whole bucket. A `-wal` lost after a crash is the one damage SQLite
can absorb: it may forget the last commits, which must only cause reprocessing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import FLEXINGEST, Result, connector_for, run_flexingest, slow_hook
from stores import Store

import flexingest.migrations
import flexingest.state
from flexingest.state import APPLICATION_ID, MIGRATIONS

N_FIRST = 4  # objects processed by the first pass


# --------------------------------------------------------------------------- helpers


def outputs(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths), hidden leftovers included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def done_in(path: Path) -> int:
    """Objects recorded done, read without writing (the file may belong to a running process)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    try:
        return int(db.execute("SELECT count(*) FROM objects WHERE status = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def snapshot(path: Path) -> Any:
    """The state file's bytes (or a folder's listing), to prove it was not touched."""
    if path.is_dir():
        return sorted((p.relative_to(path).as_posix(), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    return path.read_bytes()


class Setup:
    """A local folder with a few objects, a pipeline writing one JSON per object, one pass done."""

    def __init__(self, store: Store, write_pipeline: Callable[..., Path], tmp_path: Path, *,
                 hook_seconds: float = 0.0, concurrency: int = 2) -> None:
        self.store = store
        self.out = tmp_path / "out"
        steps: list[Any] = [{"write_json": {"url": str(self.out)}}]
        if hook_seconds:
            steps.insert(0, {"python": {"callable": slow_hook(tmp_path, hook_seconds)}})
        store.put_many({f"first/{i}.txt": f"first {i}".encode() for i in range(N_FIRST)})
        self.path = write_pipeline(connector_for(store), steps=steps,
                                   syncs=[{"name": "docs", "connector": "docs", "concurrency": concurrency}])
        self.state = self.path.parent / ".flexingest" / "pipeline.db"
        first = run_flexingest("run", self.path, "--once")
        assert first.code == 0, first.stderr
        assert f"done {N_FIRST}, failed 0" in first.stderr

    def rows(self) -> dict[str, dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.state}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            return {r["key"]: dict(r) for r in db.execute("SELECT * FROM objects WHERE sync = 'docs'")}
        finally:
            db.close()


@pytest.fixture
def setup(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> Setup:
    return Setup(new_store("local"), write_pipeline, tmp_path)


def garbage(n: int) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(n))


# --------------------------------------------------------------------------- damage


def corrupt_middle(state: Path) -> None:
    """Garbage over the middle of the file, from the start of the page there (a torn write)."""
    data = bytearray(state.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the page size, from the SQLite header
    start = len(data) // 2 // page * page
    assert 0 < start < len(data) - page
    data[start:start + page // 2] = garbage(page // 2)
    state.write_bytes(bytes(data))


def truncate_half(state: Path) -> None:
    data = state.read_bytes()
    state.write_bytes(data[:len(data) // 2])


def truncate_50(state: Path) -> None:
    state.write_bytes(state.read_bytes()[:50])


def empty(state: Path) -> None:
    state.write_bytes(b"")


def foreign_users_table(state: Path) -> None:
    """Another program's SQLite database (no application id) in place of the state."""
    state.unlink()
    db = sqlite3.connect(state)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
    db.executemany("INSERT INTO users (name, email) VALUES (?, ?)", [("ada", "ada@example.org"),
                                                                      ("bob", "bob@example.org")])
    db.commit()
    db.close()


def foreign_application_id(state: Path) -> None:
    """A SQLite database that says, in its header, that it belongs to another program."""
    state.unlink()
    db = sqlite3.connect(state)
    db.execute("PRAGMA application_id = 0x4750534B")  # "GPKG": a GeoPackage
    db.execute("CREATE TABLE objects (sync TEXT, key TEXT)")  # even with a table name like ours
    db.commit()
    db.close()


def text_file(state: Path) -> None:
    state.write_text("sync,key,status\ndocs,first/0.txt,done\n" * 50)


def directory(state: Path) -> None:
    state.unlink()
    state.mkdir()
    (state / "notes.txt").write_text("someone made a folder here")


def newer_schema(state: Path) -> None:
    """A state file written by a newer flexingest: a migration this version does not know."""
    db = sqlite3.connect(state)
    db.execute("INSERT INTO migrations VALUES ('9999_from_the_future', '2099-01-01T00:00:00.000Z')")
    db.commit()
    db.close()


DAMAGE = {
    "corrupt-middle": (corrupt_middle, "corrupt"),
    "truncated-half": (truncate_half, "corrupt"),
    "truncated-50-bytes": (truncate_50, "truncated"),
    "empty": (empty, "empty"),
    "foreign-sqlite-users-table": (foreign_users_table, "another program's SQLite database (tables: users)"),
    "foreign-application-id": (foreign_application_id, "belongs to another program (application id 0x4750534b)"),
    "text-file": (text_file, "not a SQLite database"),
    "directory": (directory, "a folder, not a file"),
    "newer-flexingest": (newer_schema, "written by a newer flexingest (schema 9999_from_the_future)"),
}


def commands(setup: Setup) -> dict[str, list[Any]]:
    """Every command that opens the state file."""
    p = setup.path
    return {
        "run --once": ["run", p, "--once"],
        "run --once --dry-run": ["run", p, "--once", "--dry-run"],
        "status": ["status", p],
        "status --json": ["status", p, "--json"],
        "retry": ["retry", p],
        "process --sync": ["process", p, "--connector", "docs", "--sync", "docs", "first/0.txt"],
    }


def assert_refused(result: Result, state: Path, why: str, what: str) -> None:
    assert result.code == 1, f"{what}: exit {result.code}\n{result.stderr}"
    assert "Traceback" not in result.stderr, f"{what}:\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{what}: one line expected, got:\n{result.stderr}"
    [line] = lines
    assert line.startswith(f"error: state file {state} cannot be used: "), f"{what}: {line}"
    assert why in line, f"{what}: {line!r} should say {why!r}"
    assert "It was not changed." in line, f"{what}: {line}"
    assert "move it away to start over (every object will then be processed again)" in line, f"{what}: {line}"
    assert result.stdout == "", f"{what}: nothing on stdout when refused: {result.stdout!r}"


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_state_is_refused_and_never_reset(damage: str, setup: Setup, cli: Callable[..., Result]) -> None:
    damage_fn, why = DAMAGE[damage]
    damage_fn(setup.state)
    before = snapshot(setup.state)
    folder_before = sorted(os.listdir(setup.state.parent))
    outputs_before = {name: (setup.out / name).read_bytes() for name in outputs(setup.out)}
    setup.store.put("second/new.txt", b"an object the refused passes must not process")

    for what, args in commands(setup).items():
        assert_refused(cli(*args), setup.state, why, what)
        assert snapshot(setup.state) == before, f"{what} changed the refused state file"
        assert sorted(os.listdir(setup.state.parent)) == folder_before, f"{what} left files beside the state"
    assert {name: (setup.out / name).read_bytes() for name in outputs(setup.out)} == outputs_before, \
        "nothing was processed on a refused state"

    # and through a real process, as cron would run it
    again = run_flexingest("run", setup.path, "--once")
    assert_refused(again, setup.state, why, "run --once (subprocess)")
    assert snapshot(setup.state) == before


def test_wal_deleted_after_kill_9_only_causes_reprocessing(new_store: Callable[[str], Store],
                                                           write_pipeline: Callable[..., Path],
                                                           tmp_path: Path) -> None:
    setup = Setup(new_store("local"), write_pipeline, tmp_path, hook_seconds=0.1, concurrency=2)
    n = 40
    setup.store.put_many({f"second/{i:02d}.txt": f"second {i}".encode() for i in range(n)})
    wal, shm = Path(f"{setup.state}-wal"), Path(f"{setup.state}-shm")

    proc = subprocess.Popen([FLEXINGEST, "run", str(setup.path), "--once"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while done_in(setup.state) < N_FIRST + 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    committed = done_in(setup.state)
    assert N_FIRST + 10 <= committed < N_FIRST + n, "the kill should land in the middle of the pass"
    assert wal.exists() and wal.stat().st_size > 0, "the crash leaves committed transactions in the -wal"

    # Those commits are in the -wal only: the main file alone does not have them.
    alone = tmp_path / "main-file-alone.db"
    shutil.copyfile(setup.state, alone)
    in_main_file = done_in(alone)
    assert in_main_file < committed, "the WAL held commits that were not checkpointed"

    wal.unlink()
    shm.unlink(missing_ok=True)
    again = run_flexingest("run", setup.path, "--once")
    assert again.code == 0, again.stderr
    assert "Traceback" not in again.stderr
    reprocessed = N_FIRST + n - in_main_file
    assert f"listed {N_FIRST + n}, new {reprocessed}," in again.stderr, again.stderr

    rows = setup.rows()
    everything = [f"first/{i}.txt" for i in range(N_FIRST)] + [f"second/{i:02d}.txt" for i in range(n)]
    assert sorted(rows) == sorted(everything)
    assert all(r["status"] == "done" for r in rows.values()), "every object ends done: nothing lost"
    # (a temporary file the kill interrupted may remain: tests/test_sync.py's kill -9 test covers that)
    written = [name for name in outputs(setup.out) if not name.endswith(".part")]
    assert written == sorted(f"{k}.json" for k in everything), "each output exactly once"
    for key in everything:
        assert json.loads((setup.out / f"{key}.json").read_text())["key"] == key
    db = sqlite3.connect(setup.state)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    assert "listed 44, new 0, changed 0" in run_flexingest("run", setup.path, "--once").stderr


def migrations(state: Path) -> list[str]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY name")]
    finally:
        db.close()


def test_state_reopens_and_lists_its_migrations(setup: Setup, cli: Callable[..., Result]) -> None:
    again = cli("run", setup.path, "--once")
    assert again.code == 0, again.stderr
    assert f"listed {N_FIRST}, new 0, changed 0" in again.stderr
    assert migrations(setup.state) == [name for name, _ in MIGRATIONS]
    db = sqlite3.connect(f"file:{setup.state}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    status = cli("status", setup.path, "--json")
    assert status.code == 0
    assert json.loads(status.stdout)["syncs"]["docs"]["done"] == N_FIRST


def test_schema_is_migrated_forward_then_refused_by_the_older_code(setup: Setup, cli: Callable[..., Result],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer flexingest adds a migration: it applies it to the existing file and keeps every row."""
    future = ("0099_objects_note", "ALTER TABLE objects ADD COLUMN note TEXT")
    with monkeypatch.context() as m:
        m.setattr(flexingest.migrations, "MIGRATIONS", [*MIGRATIONS, future])
        setup.store.put("second/new.txt", b"new")
        newer = cli("run", setup.path, "--once")
        assert newer.code == 0, newer.stderr
        assert f"listed {N_FIRST + 1}, new 1, changed 0" in newer.stderr, "the rows survived the migration"
        assert migrations(setup.state) == [name for name, _ in MIGRATIONS] + ["0099_objects_note"]
        assert "note" in setup.rows()["first/0.txt"]
    before = setup.state.read_bytes()
    older = cli("run", setup.path, "--once")  # the current code, after that upgrade: a downgrade
    assert_refused(older, setup.state, "written by a newer flexingest (schema 0099_objects_note); upgrade flexingest",
                   "run after a downgrade")
    assert setup.state.read_bytes() == before


# --------------------------------------------------------------------------- permissions


def unprivileged() -> list[str]:
    """A command prefix that makes file permissions apply (root bypasses them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: util-linux 'setpriv' is needed to drop CAP_DAC_OVERRIDE for this test"
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def flexingest_unprivileged(*args: Any) -> Result:
    proc = subprocess.run([*unprivileged(), FLEXINGEST, *[str(a) for a in args]], check=False, capture_output=True,
                          text=True, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("what", ["folder", "file"])
def test_unwritable_state_is_a_clear_error(what: str, setup: Setup) -> None:
    target = setup.state.parent if what == "folder" else setup.state
    mode = target.stat().st_mode
    before = setup.state.read_bytes()
    target.chmod(0o555 if what == "folder" else 0o444)
    try:
        status = flexingest_unprivileged("status", setup.path, "--json")
        assert status.code == 0, f"status only reads: it works on a file it cannot write\n{status.stderr}"
        assert json.loads(status.stdout)["syncs"]["docs"]["done"] == N_FIRST
        assert sorted(p.name for p in setup.state.parent.iterdir()) == ["pipeline.db", "pipeline.db.lock"]
        for args in (["run", setup.path, "--once"], ["retry", setup.path]):
            result = flexingest_unprivileged(*args)
            assert result.code == 1, f"{args[0]}: exit {result.code}\n{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
            [line] = result.stderr.strip().splitlines()
            detail = "the file is not writable" if what == "file" else \
                f"its folder {setup.state.parent} is not writable"
            assert line.startswith(f"error: state file {setup.state} cannot be used: {detail} by this user. "
                                   "It was not changed. Fix the permissions"), line
            assert setup.state.read_bytes() == before
    finally:
        target.chmod(mode)
    assert run_flexingest("run", setup.path, "--once").code == 0, "works again once the permissions are fixed"


def test_new_state_in_a_read_only_folder(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                         tmp_path: Path) -> None:
    store = new_store("local")
    store.put("a.txt", b"a")
    locked = tmp_path / "read-only"
    locked.mkdir()
    path = write_pipeline(connector_for(store), steps=[{"write_json": {"url": str(tmp_path / "out")}}],
                          syncs=[{"name": "docs", "connector": "docs"}], state=str(locked / "state.db"))
    locked.chmod(0o555)
    try:
        result = flexingest_unprivileged("run", path, "--once")
    finally:
        locked.chmod(0o755)
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: cannot create the lock file {locked / 'state.db.lock'}: Permission denied"
    assert list(locked.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_the_service_refuses_a_corrupt_state_before_its_first_pass(setup: Setup) -> None:
    """The service checks the whole file (quick_check) once at start: a corrupt page anywhere
    stops it before any pass, instead of passes running on a file it never checked."""
    corrupt_middle(setup.state)
    before = setup.state.read_bytes()
    result = run_flexingest("run", setup.path, timeout=60)
    assert_refused(result, setup.state, "corrupt", "run (the service)")
    assert setup.state.read_bytes() == before


def open_at_once(state: Path, count: int = 10) -> list[str]:
    """``count`` processes open ``state`` at the same moment; the errors of those that failed."""
    code = ("import sys, time\n"
            "from flexingest.state import State\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "State(sys.argv[1]).close()\n")
    start = time.time() + 1.5  # all of them open at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state), str(start)], stderr=subprocess.PIPE,
                              text=True) for _ in range(count)]
    results = [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        if p.stderr:
            p.stderr.close()
    return [err for code, err in results if code]


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_ten_concurrent_first_opens_of_a_new_state_file_all_succeed(tmp_path: Path, round_: int) -> None:
    state = tmp_path / "new" / "state.db"
    assert open_at_once(state) == []
    assert migrations(state) == [name for name, _ in MIGRATIONS]


def test_a_new_state_file_is_written_in_wal_mode_before_anyone_opens_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Turning a file to WAL needs it alone, and SQLite does not wait for that ("database is
    locked" whatever the busy timeout): a new file appears in WAL mode already, so that the
    processes that open it at once never have to turn it."""
    state = tmp_path / "state.db"
    seen: list[bytes] = []
    link = os.link

    def spy(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(Path(source).read_bytes()[:100])  # the file as it appears under its name
        link(source, target, *args, **kwargs)

    monkeypatch.setattr(flexingest.state.os, "link", spy)
    flexingest.state.State(state).close()
    assert len(seen) == 1 and seen[0].startswith(b"SQLite format 3\x00")
    assert seen[0][18:20] == b"\x02\x02", "the file format's read and write versions say WAL"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"], "no temporary, -wal or -shm left"


@pytest.mark.slow
def test_a_state_file_in_rollback_journal_mode_opened_by_ten_at_once(tmp_path: Path) -> None:
    """A file written in rollback-journal mode (as flexingest wrote it before WAL, or copied
    by a tool that resets it) is turned to WAL by the first open; the others wait for it."""
    state = tmp_path / "state.db"
    flexingest.state.State(state).close()
    with sqlite3.connect(state) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    assert state.read_bytes()[18:20] == b"\x01\x01"
    assert open_at_once(state) == []
    assert state.read_bytes()[18:20] == b"\x02\x02"
