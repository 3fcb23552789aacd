"""Network faults between flexingest and the storage server (issue 5, items 2 and 3).

A fault-injecting proxy (tests/faultproxy.py) sits between flexingest and the emulator of
each cloud backend: moto (S3), fake-gcs-server (GCS), Azurite (Azure Blob). flexingest runs
as a subprocess, the way cron runs it, and the tests check what a user relies on: exit
codes, the summary and errors on stderr, state rows, output files.

- A listing that fails partway marks nothing gone; the next complete listing does.
- A hung server: timeouts fire, the pass fails cleanly and in bounded time, the next recovers.
- ``flexingest test`` answers within 15 s through a hung server.
- Error statuses, resets and truncated bodies on object reads are retried inside the pass:
  every object ends done, every output is byte-identical, nothing partial is left behind.

The slowest tests come first: xdist hands tests out in file order, and the long ones spend
their time waiting for the clients' retry back-offs and timeouts, not working.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import Result, connector_for, run_flexingest
from faultproxy import HANG, RESET, RST, TRUNCATE, Fault, FaultProxy, Request, error
from stores import Store

from flexingest.state import State

BACKENDS = ["s3", "gcs", "azure_blob"]
FLAVOR = {"s3": "s3", "gcs": "gcs", "azure_blob": "azure"}
#: the query parameter carrying the listing's continuation on each backend
PAGE_TOKEN = {"s3": "continuation-token", "gcs": "pageToken", "azure_blob": "marker"}
MIX = [error(500), error(503), error(429), RESET, RST, TRUNCATE]  # 503 on S3 is <Code>SlowDown</Code>


@pytest.fixture(params=BACKENDS)
def proxied(request: pytest.FixtureRequest, new_store: Callable[[str], Store]) -> Iterator[tuple[Store, FaultProxy]]:
    """A fresh bucket on the parametrized backend, and a fault proxy in front of its server."""
    store = new_store(request.param)
    assert store.server is not None
    proxy = FaultProxy(store.server.url, FLAVOR[store.kind])
    yield store, proxy
    proxy.stop()


def through(proxy: FaultProxy, store: Store, **extra: Any) -> dict[str, Any]:
    """The store's connector, reaching its server through the proxy."""
    assert store.server is not None
    connector = connector_for(store, **extra)
    config = connector["config"]
    for field in ("endpoint_url", "account_url"):
        if field in config:
            config[field] = config[field].replace(store.server.url, proxy.url)
    return connector


def rows(state_path: Path) -> dict[str, dict[str, Any]]:
    with State(state_path, create=False) as state:
        return {r["key"]: dict(r) for r in state.objects("docs")}


def outputs(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def object_key(request: Request) -> str | None:
    """The key of an object request (the keys live under docs/), None for listings and others."""
    return "docs/" + request.path.split("/docs/", 1)[1] if "/docs/" in request.path else None


def put_large(store: Store, key: str, data: bytes) -> None:
    """Upload in 512 KiB blocks: aiohttp warns (ResourceWarning) about raw bodies over 1 MiB."""
    block = 5 * 1024 * 1024 if store.kind == "s3" else 512 * 1024  # S3's smallest part; GCS: n x 256 KiB
    with store.fs.open(store.path(key), "wb", block_size=block) as f:
        for i in range(0, len(data), block):
            f.write(data[i:i + block])
    store.fs.invalidate_cache()


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --------------------------------------------------------------------------- a listing that fails partway


@pytest.mark.slow
def test_listing_failing_partway_marks_nothing_gone(
        proxied: tuple[Store, FaultProxy], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store, proxy = proxied
    # two pages: flexingest lists S3 and GCS 1,000 keys a page, Azure 5,000 (the service's default)
    count = 5100 if store.kind == "azure_blob" else 1100
    keys = [f"docs/{i:04d}.txt" for i in range(count)]
    store.put_many({k: b"x" for k in keys})
    (tmp_path / "keep.py").write_text("def record(record):\n    return record\n")  # a step that reads nothing
    path = write_pipeline(through(proxy, store, timeout="5s"), steps=[{"python": {"callable": "keep:record"}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    state_path = path.parent / ".flexingest" / "pipeline.db"
    first = run_flexingest("run", path, "--once")
    assert first.code == 0, first.stderr
    assert f"listed {count}, new {count}" in first.stderr and f"done {count}" in first.stderr

    store.delete("docs/0500.txt")
    token = PAGE_TOKEN[store.kind]
    proxy.rules = [lambda r: error(500) if r.method == "GET" and r.query.get(token) else None]
    before = len(proxy.log)
    failed = run_flexingest("run", path, "--once")

    assert failed.code == 1, failed.stderr
    no_traceback(failed)
    assert re.search(r"error: .*injected by faultproxy: 500", failed.stderr), failed.stderr
    state = rows(state_path)
    assert len(state) == count
    assert all(r["gone_at"] is None for r in state.values()), "a partial listing marks nothing gone"
    assert {r["status"] for r in state.values()} == {"done"}
    asked = proxy.log[before:]
    page_two = [what for r, what in asked if r.query.get(token)]
    assert page_two and set(page_two) == {"500"}, "only the second page failed, every time it was asked for"
    first_pages = [what for r, what in asked if not r.query.get(token)]
    assert first_pages and set(first_pages) == {"pass"}, "the first pages were listed"
    print(f"\n{store.kind}: the second page was asked for {len(page_two)} times before the pass gave up")

    proxy.heal()
    healed = run_flexingest("run", path, "--once")
    assert healed.code == 0, healed.stderr
    assert f"listed {count - 1}, new 0, changed 0, retried 0, done 0, failed 0, dead 0, gone 1" in healed.stderr
    state = rows(state_path)
    assert [k for k, r in state.items() if r["gone_at"] is not None] == ["docs/0500.txt"]


# --------------------------------------------------------------------------- a hung server

HANG_BOUND = 40.0  # seconds: a pass against a hung server with `timeout: 2s` must have failed by then


@pytest.mark.slow
def test_hung_server_fails_the_pass_cleanly_then_the_next_recovers(
        proxied: tuple[Store, FaultProxy], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store, proxy = proxied
    blobs = {f"docs/{i}.txt": f"document {i}".encode() for i in range(5)}
    store.put_many(blobs)
    out = tmp_path / "out"
    path = write_pipeline(through(proxy, store, timeout="2s"), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs"}])
    proxy.rules = [lambda r: HANG]

    started = time.monotonic()
    hung = run_flexingest("run", path, "--once", timeout=120)
    elapsed = time.monotonic() - started

    assert hung.code == 1, hung.stderr
    no_traceback(hung)
    assert re.search(r"error: .*time(d)? ?out", hung.stderr, re.IGNORECASE), hung.stderr
    assert elapsed < HANG_BOUND, f"the pass took {elapsed:.1f}s to give up on a hung server"
    assert proxy.faults["hang"] >= 1
    assert not out.exists()
    print(f"\n{store.kind}: failed after {elapsed:.1f}s and {proxy.faults['hang']} hung request(s)")

    proxy.heal()
    healed = run_flexingest("run", path, "--once")
    assert healed.code == 0, healed.stderr
    assert "listed 5, new 5, changed 0, retried 0, done 5, failed 0" in healed.stderr
    assert {r["status"] for r in rows(path.parent / ".flexingest" / "pipeline.db").values()} == {"done"}
    assert outputs(out) == sorted(blobs)


def test_connection_test_through_hung_servers_answers_within_15_seconds(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path]) -> None:
    """One connector per backend, each behind a hung proxy: `flexingest test` checks them at once."""
    proxies: list[FaultProxy] = []
    try:
        connectors = []
        for kind in BACKENDS:
            store = new_store(kind)
            assert store.server is not None
            proxies.append(FaultProxy(store.server.url, FLAVOR[kind]))
            proxies[-1].rules = [lambda r: HANG]
            connectors.append(through(proxies[-1], store, name=kind))
        path = write_pipeline(connectors, steps=[])

        started = time.monotonic()
        result = run_flexingest("test", path, timeout=60)
        elapsed = time.monotonic() - started

        assert result.code == 1, result.stderr
        no_traceback(result)
        answers = {a["connector"]: a for a in map(json.loads, result.stdout.splitlines())}
        assert sorted(answers) == sorted(BACKENDS)
        for answer in answers.values():
            assert answer["success"] is False, answer
            assert re.search(r"time(d)? ?out", answer["message"], re.IGNORECASE), answer["message"]
        assert elapsed < 15, f"took {elapsed:.1f}s"
        assert all(p.faults["hang"] >= 1 for p in proxies)
    finally:
        for proxy in proxies:
            proxy.stop()


# --------------------------------------------------------------------------- error statuses, resets, truncations


def flaky_reads(seed: int, forced: dict[str, Fault], share: float = 0.3, max_faulty_attempt: int = 3) -> Callable:
    """Object GETs fail: ``forced`` keys on their first request, others at random.

    The draw is seeded by (seed, key, attempt), so it does not depend on the order in which
    concurrent requests arrive. From attempt ``max_faulty_attempt + 1`` on, requests pass:
    flexingest gives an object 4 attempts, each of which may itself be retried by the client.
    """

    def rule(r: Request) -> Fault | None:
        key = object_key(r)
        if r.method != "GET" or key is None or r.attempt > max_faulty_attempt:
            return None
        if key in forced:
            return forced[key] if r.attempt == 1 else None
        rng = random.Random(f"{seed}:{key}:{r.attempt}")
        return rng.choice(MIX) if rng.random() < share else None

    return rule


def test_error_statuses_resets_and_truncated_bodies_are_retried(
        proxied: tuple[Store, FaultProxy], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    store, proxy = proxied
    rng = random.Random(5)
    blobs = {f"docs/{i:02d}.bin": rng.randbytes(rng.randrange(1_000, 64_000)) for i in range(24)}
    store.put_many(blobs)
    blobs["docs/big.bin"] = rng.randbytes(9 * 1024 * 1024)  # above copy's 8 MiB: streamed in ranges
    put_large(store, "docs/big.bin", blobs["docs/big.bin"])
    forced = {"docs/00.bin": error(503), "docs/01.bin": error(500), "docs/02.bin": error(429),
              "docs/03.bin": RESET, "docs/04.bin": RST, "docs/05.bin": TRUNCATE, "docs/big.bin": TRUNCATE}
    proxy.rules = [flaky_reads(seed=2024, forced=forced)]
    out = tmp_path / "out"
    path = write_pipeline(through(proxy, store, timeout="5s"), steps=[{"copy": {"url": str(out)}}],
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 4}])

    result = run_flexingest("run", path, "--once")

    assert result.code == 0, result.stderr
    assert f"listed {len(blobs)}, new {len(blobs)}, changed 0, retried 0, done {len(blobs)}, failed 0" in result.stderr
    no_traceback(result)
    state = rows(path.parent / ".flexingest" / "pipeline.db")
    assert sorted(state) == sorted(blobs)
    assert {r["status"] for r in state.values()} == {"done"}
    assert outputs(out) == sorted(blobs), "one file per object, no partial or temporary file left"
    for key, data in blobs.items():
        assert (out / key).read_bytes() == data, f"{key} differs from the source"
    assert set(proxy.faults) == {"500", "503", "429", "reset", "rst", "truncate"}, proxy.faults
    gets = Counter(object_key(r) for r, _ in proxy.log if r.method == "GET" and object_key(r))
    retried = {k for k, n in gets.items() if n > 1}
    assert set(forced) <= retried, "each object given a fault was asked for again"
    print(f"\n{store.kind}: {proxy.injected} faults {dict(proxy.faults)}; {sum(gets.values())} object GETs for "
          f"{len(blobs)} objects, {len(retried)} read more than once; "
          f"{result.stderr.count('(transient; attempt')} retries by the pass itself, the rest by the client library")


# --------------------------------------------------------------------------- storage down after the listing


@pytest.mark.slow
def test_storage_down_after_the_listing_trips_the_breaker(
        new_store: Callable[[str], Store], write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    """Reads all failing (503) stop the pass after a few objects; none is charged to death."""
    store = new_store("s3")
    assert store.server is not None
    proxy = FaultProxy(store.server.url, "s3")
    try:
        blobs = {f"docs/{i:02d}.txt": b"x" for i in range(40)}
        store.put_many(blobs)
        proxy.rules = [lambda r: error(503) if object_key(r) else None]
        path = write_pipeline(through(proxy, store, timeout="2s"), steps=[{"copy": {"url": str(tmp_path / "o")}}],
                              syncs=[{"name": "docs", "connector": "docs", "concurrency": 1, "max_attempts": 1}])
        started = time.monotonic()
        down = run_flexingest("run", path, "--once", timeout=300)
        elapsed = time.monotonic() - started
        assert down.code == 1, down.stderr
        no_traceback(down)
        assert "objects in a row failed with transient errors" in down.stderr
        state = rows(path.parent / ".flexingest" / "pipeline.db")
        assert 3 <= len(state) < 8, "the pass stopped instead of failing every object"
        assert {r["status"] for r in state.values()} == {"failed"}, "transient failures never make an object dead"
        print(f"\nstorage down: pass stopped after {len(state)} objects in {elapsed:.1f}s")

        proxy.heal()
        up = run_flexingest("run", path, "--once")
        assert up.code == 0, up.stderr
        assert {r["status"] for r in rows(path.parent / ".flexingest" / "pipeline.db").values()} == {"done"}
        assert outputs(tmp_path / "o") == sorted(blobs)
    finally:
        proxy.stop()
