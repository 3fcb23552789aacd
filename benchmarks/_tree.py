"""Measuring a command together with every process it starts (BM-8, BM-9).

``_measure.measure`` reports ``getrusage(RUSAGE_CHILDREN)`` of a wrapper: exact for a command
that waits for its own children, but a process pool or a Dask cluster may leave workers that
nobody waits for, whose CPU would then be lost. Here the wrapper makes itself a *child
subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so that every orphaned descendant is
re-parented to it; after the command exits it waits for them (and kills any still alive after
``linger`` seconds), so ``RUSAGE_CHILDREN`` covers the whole tree. Meanwhile the parent
samples ``/proc`` every ``interval`` seconds: the command's own CPU (its process only, the
*coordinator*), and each descendant's, by role (from its command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from _measure import children, command_line, cpu_seconds, system_busy_seconds
from _setup import Server

_WRAPPER = r"""
import ctypes, json, os, resource, signal, subprocess, sys, time
spec = json.loads(sys.argv[1])
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(spec["stdout"], "wb") as out, open(spec["stderr"], "wb") as err:
    t0 = time.perf_counter()
    p = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=spec["cwd"])
    print(json.dumps({"pid": p.pid}), flush=True)
    try:
        rc = p.wait(timeout=spec["timeout"])
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        rc = -9999
    wall = time.perf_counter() - t0
orphans = 0
killed = 0
deadline = time.monotonic() + spec["linger"]
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid:
        orphans += 1
        continue
    if time.monotonic() > deadline:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                for child in f.read().split():
                    try:
                        os.kill(int(child), signal.SIGKILL)
                        killed += 1
                    except ProcessLookupError:
                        pass
        deadline = float("inf")
    time.sleep(0.02)
linger = time.perf_counter() - t0 - wall
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "utime": ru.ru_utime, "stime": ru.ru_stime, "orphans": orphans,
                  "killed": killed, "linger": linger, "maxrss_kb": ru.ru_maxrss}), flush=True)
"""

_TICK = os.sysconf("SC_CLK_TCK")


def _own_cpu(pid: int) -> tuple[float, int] | None:
    """(own user+system CPU seconds, parent pid) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def role_of(cmdline: str, depth: int) -> str:
    """A short name for a descendant process, from its command line and depth below the command
    (a process pool's workers and Dask's nannies are its children, Dask's workers grandchildren)."""
    if "multiprocessing.resource_tracker" in cmdline:
        return "resource tracker"
    if "multiprocessing.spawn" in cmdline or "multiprocessing.forkserver" in cmdline:
        return "spawned children" if depth == 1 else "their children"
    if "--reference-child" in cmdline:
        return "reference workers"
    return Path(cmdline.split("\0", 1)[0]).name or "?"


@dataclass
class TreeMeasurement:
    label: str
    argv: list[str]
    env_shown: dict[str, str]
    rc: int
    wall: float
    cpu: float  # every process of the tree, orphans included (rusage of the subreaper)
    coordinator_cpu: float  # the command's own process (last /proc sample before it exited)
    roles: dict[str, float]  # sampled own CPU of descendants, by role
    processes: int  # descendants seen (besides the command itself)
    orphans: int  # descendants still alive when the command exited (reaped by the wrapper)
    linger: float  # seconds they lived on after it
    server_cpu: float | None
    others_cpu: float
    peak_rss: int
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def workers_cpu(self) -> float:
        return max(0.0, self.cpu - self.coordinator_cpu)

    def command(self) -> str:
        return command_line(self.argv, self.env_shown)


def measure_tree(label: str, argv: Sequence[Any], *, env: dict[str, str] | None = None,
                 env_shown: dict[str, str] | None = None, cwd: str | Path | None = None,
                 server: Server | None = None, timeout: float = 900, check: bool = True,
                 interval: float = 0.05, linger: float = 15.0) -> TreeMeasurement:
    """Run ``argv`` once; wall time, CPU of the whole tree, the coordinator's own CPU."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="flexingest-bm-tree-") as tmp:
        spec = {"argv": argv, "stdout": os.path.join(tmp, "out"), "stderr": os.path.join(tmp, "err"),
                "cwd": str(cwd) if cwd else None, "timeout": timeout, "linger": linger}
        server_cpu0 = cpu_seconds(server.process.pid) if server else None
        busy0 = system_busy_seconds()
        wrapper = subprocess.Popen([sys.executable, "-S", "-c", _WRAPPER, json.dumps(spec)],
                                   stdout=subprocess.PIPE, env=env if env is not None else os.environ.copy(),
                                   text=True)
        assert wrapper.stdout is not None
        first = json.loads(wrapper.stdout.readline())
        root = int(first["pid"])
        seen: dict[int, tuple[str, float]] = {}  # pid -> (role, last own CPU)
        coordinator = [0.0]
        stop = threading.Event()

        def poll() -> None:
            while True:
                sample = _own_cpu(root)
                if sample is not None:
                    coordinator[0] = max(coordinator[0], sample[0])
                stack = [(pid, 0) for pid in children(wrapper.pid)]
                while stack:
                    pid, depth = stack.pop()
                    stack.extend((child, depth + 1) for child in children(pid))
                    if pid == root:
                        continue
                    own = _own_cpu(pid)
                    if own is None:
                        continue
                    if pid not in seen:
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                        except OSError:
                            cmd = "?"
                        seen[pid] = (role_of(cmd, depth), own[0])
                    else:
                        seen[pid] = (seen[pid][0], max(seen[pid][1], own[0]))
                if stop.wait(interval):
                    return

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        raw = wrapper.stdout.read()
        wrapper.wait()
        stop.set()
        poller.join()
        server_cpu = cpu_seconds(server.process.pid) - server_cpu0 if server and server_cpu0 is not None else None
        busy = system_busy_seconds() - busy0
        result = json.loads(raw.strip().splitlines()[-1])
        out = Path(spec["stdout"]).read_text(errors="replace")
        err = Path(spec["stderr"]).read_text(errors="replace")
    roles: dict[str, float] = {}
    for role, cpu in seen.values():
        roles[role] = roles.get(role, 0.0) + cpu
    total = float(result["utime"]) + float(result["stime"])
    m = TreeMeasurement(label=label, argv=argv, env_shown=dict(env_shown or {}), rc=int(result["rc"]),
                        wall=float(result["wall"]), cpu=total, coordinator_cpu=min(coordinator[0], total),
                        roles=roles, processes=len(seen), orphans=int(result["orphans"]),
                        linger=float(result["linger"]), server_cpu=server_cpu,
                        others_cpu=0.0, peak_rss=int(result["maxrss_kb"]) * 1024, stdout=out, stderr=err)
    m.others_cpu = max(0.0, busy - total - (server_cpu or 0.0))
    if check and not m.ok:
        tail = (m.stderr.strip() or m.stdout.strip())[-2000:]
        raise RuntimeError(f"{label} exited {m.rc}: {m.command()}\n{tail}")
    return m


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median [min-max]`` of repeated measurements."""
    ordered = sorted(values)
    mid = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                        + ordered[len(ordered) // 2]) / 2
    if len(ordered) == 1:
        return fmt.format(mid)
    return f"{fmt.format(mid)} [{fmt.format(ordered[0])}-{fmt.format(ordered[-1])}]"


def med(values: Sequence[float]) -> float:
    import statistics

    return statistics.median(values)
