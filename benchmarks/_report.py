"""What a benchmark prints: tables, the machine and the versions on top, the command lines to
reproduce each figure, how busy the rest of the machine was; with ``--save`` everything is
copied to ``benchmarks/results/<name>-<date>.txt``."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from _setup import REPO, RESULTS, MiB, command_output, log, servers

if TYPE_CHECKING:
    from _measure import Measurement


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


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
    rev = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = command_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "flexingest"])
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
            self.emit(f"  [{m.label.rsplit(' #', 1)[0]}] {line}")  # a repeated run's number left out

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
