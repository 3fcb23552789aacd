"""Child processes started by steps, tracked so that none outlives flexingest.

Each child runs in its own process group (a session of its own: a signal meant for
flexingest is not delivered to it by the terminal or by systemd's ``KillMode=mixed``).
:func:`end` stops groups with SIGTERM, then SIGKILL after a short wait; the pass calls it
for the children of steps it closes, the command line for all of them before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any, Iterable

TERM_WAIT = 2.0  # seconds between SIGTERM and SIGKILL

_live: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session and track it until :func:`forget`."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    with _lock:
        _live.add(proc)
    return proc


def forget(proc: subprocess.Popen[bytes]) -> None:
    with _lock:
        _live.discard(proc)


def live() -> list[subprocess.Popen[bytes]]:
    with _lock:
        return [p for p in _live if p.poll() is None]


def end(procs: Iterable[subprocess.Popen[bytes]] | None = None, wait: float = TERM_WAIT) -> int:
    """End the process groups of ``procs`` (default: every tracked child): TERM, then KILL.

    Returns how many were still running.
    """
    targets = [p for p in (live() if procs is None else procs) if p.poll() is None]
    for proc in targets:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for proc in targets:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in targets:
        _signal_group(proc, signal.SIGKILL)  # the group too: grandchildren left behind by the child
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        forget(proc)
    return len(targets)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
