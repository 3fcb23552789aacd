"""Stopping: after SIGTERM no object starts, the grace time is a deadline, no program of a step
outlives flexingest; the systemd unit and the cron line shipped in examples/ do what they say."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

from conftest import FLEXINGEST, connector_for, run_flexingest
from stores import Store

from flexingest.state import State

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def done_keys(state_path: Path) -> set[str]:
    with State(state_path, create=False) as state:
        return {r["key"] for r in state.objects("docs") if r["status"] == "done"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def recording_hook(folder: Path, log: Path, seconds: float, gate: Path) -> str:
    """A python step that notes each object it starts, then sleeps while ``gate`` exists."""
    module = f"rec_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "import os, time\n"
        "def step(record):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(record['key'] + '\\n')\n"
        f"    if os.path.exists({str(gate)!r}):\n"
        f"        time.sleep({seconds})\n"
        "    return record\n")
    return f"{module}:step"


def test_no_object_starts_after_sigterm_and_the_grace_is_a_deadline(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({f"{i}.txt": b"x" for i in range(5)})
    started, gate = tmp_path / "started.log", tmp_path / "slow"
    gate.touch()
    path = write_pipeline(connector_for(store), steps=[{"python": {"callable": recording_hook(tmp_path, started,
                                                                                              10, gate)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 1}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once", "--grace", "2s"], stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: started.exists() and started.read_text().count("\n") == 1, 30, "the first object")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert took < 4.5, f"the grace time (2s) is a deadline: the stop took {took:.1f}s"
    print(f"\nSIGTERM with a 10 s object in flight and --grace 2s: stopped in {took:.1f}s")
    assert len(started.read_text().splitlines()) == 1, "no object may start after the signal"
    assert "grace time over; 1 object(s) still in flight are left for the next pass" in stderr
    state_path = path.parent / ".flexingest" / "pipeline.db"
    assert done_keys(state_path) == set(), "what did not finish within the grace is not recorded"

    gate.unlink()
    again = run_flexingest("run", path, "--once")
    assert again.code == 0, again.stderr
    assert "listed 5, new 5, changed 0" in again.stderr
    assert done_keys(state_path) == {f"{i}.txt" for i in range(5)}


def pid_recorder(pids: Path) -> list[str]:
    """A command that records its pid and a grandchild's, then waits a minute."""
    script = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    return ["sh", "-c", script, "sh", "{path}"]


def recorded(pids: Path) -> list[int]:
    return [int(p) for p in pids.read_text().split()] if pids.exists() else []


def test_command_children_are_ended_when_the_grace_runs_out(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    pids = tmp_path / "pids"
    path = write_pipeline(connector_for(store), steps=[{"command": {"argv": pid_recorder(pids)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 2}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--grace", "1s"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(recorded(pids)) == 4, 30, "both commands and their children")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    children = recorded(pids)
    wait_for(lambda: not any(alive(p) for p in children), 3, "the programs of steps to be gone")
    assert not any(alive(p) for p in children), "no program of a step outlives flexingest"


def test_a_second_signal_ends_the_programs_of_steps_too(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store = new_store("local")
    store.put("a.txt", b"a")
    pids = tmp_path / "pids"
    path = write_pipeline(connector_for(store), steps=[{"command": {"argv": pid_recorder(pids)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    proc = subprocess.Popen([FLEXINGEST, "run", str(path), "--once", "--grace", "60s"], stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: len(recorded(pids)) == 2, 30, "the command and its child")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    children = recorded(pids)
    wait_for(lambda: not any(alive(p) for p in children), 3, "the programs of steps to be gone")


def test_systemctl_stop_with_kill_mode_mixed_loses_nothing(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """What `systemctl stop` does with the shipped unit (KillMode=mixed): SIGTERM to flexingest
    alone; the commands in flight finish and are committed; then nothing is left running."""
    store = new_store("local")
    store.put_many({f"{i}.txt": b"x" for i in range(6)})
    pids = tmp_path / "pids"
    argv = ["sh", "-c", f"echo $$ >> {pids}; sleep 2; cat \"$1\"", "sh", "{path}"]
    path = write_pipeline(connector_for(store), steps=[{"command": {"argv": argv}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 2}])
    service = subprocess.Popen([FLEXINGEST, "run", str(path), "--grace", "30s"], stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # its own group, like a unit's cgroup
    try:
        wait_for(lambda: len(recorded(pids)) == 2, 30, "two commands in flight")
        service.send_signal(signal.SIGTERM)  # the main process only, as KillMode=mixed does
        _, stderr = service.communicate(timeout=30)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
    assert service.returncode == 0, stderr
    state_path = path.parent / ".flexingest" / "pipeline.db"
    in_flight = len(recorded(pids))
    assert len(done_keys(state_path)) == in_flight == 2, "the objects in flight finished and were committed"
    try:
        os.killpg(service.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    assert not leftover, "nothing of the service's process group is left"
    again = run_flexingest("run", path, "--once")
    assert again.code == 0 and "listed 6, new 4, changed 0" in again.stderr, again.stderr


def unit_for_this_machine(tmp_path: Path, text: str) -> Path:
    unit = tmp_path / "flexingest.service"
    unit.write_text(text.replace("/opt/flexingest/.venv/bin/flexingest", FLEXINGEST))
    return unit


def verify(unit: Path) -> str:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd; make test installs it)"
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\n(exit {proc.returncode})")


def test_the_systemd_unit_verifies_and_stops_gently(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "flexingest.service").read_text()
    assert verify(unit_for_this_machine(tmp_path, text)) == "", "systemd-analyze verify finds nothing to say"
    broken = unit_for_this_machine(tmp_path, text.replace("KillMode=mixed", "KillMode=gently"))
    assert "kill mode" in verify(broken).lower(), "the verifier does look at the file"

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    service = unit["Service"]
    assert service["KillMode"] == "mixed", "systemd must not SIGTERM the programs of steps in flight"
    assert "2" in service["RestartPreventExitStatus"].split(), "an invalid pipeline must not restart forever"
    grace = int(re.search(r"--grace (\d+)s", service["ExecStart"]).group(1))  # type: ignore[union-attr]
    assert int(service["TimeoutStopSec"]) > grace, "systemd waits longer than the grace before SIGKILL"
    assert "KillSignal" not in service and "RestartForceExitStatus" not in service, "nothing redundant"


def cron_job(text: str) -> tuple[dict[str, str], str]:
    """The environment lines and the command of the one job of an /etc/cron.d file."""
    env: dict[str, str] = {}
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            name, value = line.split("=", 1)
            env[name.strip()] = value.strip()
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not a cron.d job line (5 time fields, a user, a command): {line}"
        assert fields[5] == "flexingest", "the job runs as the flexingest user"
        jobs.append(fields[6])
    assert len(jobs) == 1
    return env, jobs[0]


def test_the_cron_line_runs_a_pass(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                   tmp_path: Path) -> None:
    """The shipped crontab line, run by sh as cron would, with the env file's variables."""
    store = new_store("local")
    store.put_many({"a.txt": b"a", "b.txt": b"b"})
    connector = connector_for(store)
    connector["config"]["path"] = "${DOCS_FOLDER}"  # a variable that only the env file sets
    path = write_pipeline(connector, steps=["extract_text"], syncs=[{"name": "docs", "connector": "docs"}])
    env_file = tmp_path / "env"
    env_file.write_text(f"DOCS_FOLDER={store.bucket}\n")
    env_file.chmod(0o640)
    bin_dir = tmp_path / "bin"  # the system log, as a file: `logger -t TAG` reads the lines on stdin
    bin_dir.mkdir()
    syslog = tmp_path / "syslog"
    (bin_dir / "logger").write_text(f"#!/bin/sh\nwhile IFS= read -r line; do echo \"$2: $line\"; done >> {syslog}\n")
    (bin_dir / "logger").chmod(0o755)

    cron_env, command = cron_job((ROOT / "examples" / "crontab").read_text())
    assert set(cron_env) >= {"SHELL", "FLEXINGEST", "PIPELINE", "ENV_FILE"}
    cron_env.update(FLEXINGEST=FLEXINGEST, PIPELINE=str(path), ENV_FILE=str(env_file))
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **cron_env}  # cron's bare one
    proc = subprocess.run([cron_env["SHELL"], "-c", command], env=environment, capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert done_keys(path.parent / ".flexingest" / "pipeline.db") == {"a.txt", "b.txt"}
    assert "flexingest: " in syslog.read_text() and "docs: listed 2, new 2" in syslog.read_text()


def test_the_dask_units_verify(tmp_path: Path) -> None:
    dask = str(Path(FLEXINGEST).parent / "dask")
    for name in ("dask-scheduler.service", "dask-worker.service"):
        text = (ROOT / "examples" / "dask" / name).read_text().replace("/opt/flexingest/.venv/bin/dask", dask)
        unit = tmp_path / name
        unit.write_text(text)
        assert verify(unit) == "", f"systemd-analyze verify finds nothing to say about {name}"
