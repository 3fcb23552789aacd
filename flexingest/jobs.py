"""Jobs of the HTTP API (``POST /v1/data-process/async``): these keys of this connector, processed
in the background through :func:`flexingest.sync.process_keys`.

A job is a row of the state file's ``jobs`` table from the moment it is accepted: queued,
running, then done or failed with one result per key. One worker thread runs them in the
order they came, with the service's opened connectors and its stop token: after SIGTERM
the objects in flight get the grace time, and a job that did not finish stays ``running``
in the table. At start the worker takes up every queued and running job again (keys of an
interrupted job are processed again: at least once, like a pass).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .exceptions import ApiError, FlexingestError, StateError
from .records import now_iso
from .state import Outcome, State

if TYPE_CHECKING:
    from .runner import Service

log = logging.getLogger(__name__)

MAX_KEYS = 10_000  # keys in one job
MAX_WAITING = 1_000  # jobs queued or running at once; more are refused (429)


@dataclass
class Job:
    id: str
    connector: str
    sync: str | None
    keys: list[str]
    status: str  # queued | running | done | failed
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None

    def answer(self) -> dict[str, Any]:
        """The job as ``GET /v1/data-process/{job_id}`` shows it."""
        return {"job_id": self.id, "status": self.status, "results": self.results, "error": self.error,
                "connector": self.connector, "sync": self.sync, "keys": len(self.keys),
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at}


def _job(row: Any) -> Job:
    return Job(row["id"], row["connector"], row["sync"], json.loads(row["keys"]), row["status"],
               json.loads(row["results"]) if row["results"] else [], row["error"], row["created_at"],
               row["started_at"], row["finished_at"])


def create(state: State, connector: str, sync: str | None, keys: list[str]) -> Job:
    """Queue a job (refused with 429 when MAX_WAITING jobs already wait)."""
    if len(keys) > MAX_KEYS:
        raise ApiError(413, f"{len(keys)} keys: at most {MAX_KEYS} in one job")
    job = Job(uuid.uuid4().hex, connector, sync, list(dict.fromkeys(keys)), "queued", created_at=now_iso())
    with state.transaction() as db:
        waiting = db.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        if waiting >= MAX_WAITING:
            raise ApiError(429, f"{waiting} jobs are waiting already; try again later")
        db.execute("INSERT INTO jobs (id, connector, sync, keys, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (job.id, connector, sync, json.dumps(job.keys, ensure_ascii=False), "queued", job.created_at))
    return job


def get(state: State, job_id: str) -> Job | None:
    row = state.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def next_unfinished(state: State) -> Job | None:
    """The oldest job that is queued, or was running when the service stopped."""
    row = state.db.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') "
                           "ORDER BY created_at, rowid LIMIT 1").fetchone()
    return None if row is None else _job(row)


def counts(state: State) -> dict[str, int]:
    """Jobs by status."""
    return {r[0]: r[1] for r in state.db.execute("SELECT status, count(*) FROM jobs GROUP BY status")}


def _set(state: State, job: Job) -> None:
    with state.transaction() as db:
        db.execute("UPDATE jobs SET status = ?, results = ?, error = ?, started_at = ?, finished_at = ? WHERE id = ?",
                   (job.status, json.dumps(job.results, ensure_ascii=False), job.error, job.started_at,
                    job.finished_at, job.id))


class Unrecorded(State):
    """Keys processed with no sync (``flexingest process``, a job of the HTTP API): their outcomes
    stay in memory (nothing is recorded under a sync), but the committed lengths of the files
    their steps append to (``write_jsonl``) are the pipeline's state's, read from it and
    committed to it: otherwise the next pass, opening such a file, would cut those lines."""

    def __init__(self, service_state: State) -> None:
        super().__init__(":memory:")
        self.service_state = service_state

    def output_length(self, path: str, size: int) -> int:
        return self.service_state.output_length(path, size)

    def record(self, sync: str, outcomes: list[Any], max_attempts: int,
               outputs: Mapping[str, int] | None = None, after: str | None = None) -> dict[str, int]:
        if outputs:
            self.service_state.record(sync, [], max_attempts, outputs=outputs)
        return super().record(sync, outcomes, max_attempts, after=after)


def request_keys(body: Any) -> tuple[str, list[str]]:
    """The connector and keys of a FlexOrch request body ``{"source": {"connector_id", "keys"}}``
    (``flexingest process --request``); ValueError says what is wrong."""
    source = body.get("source") if isinstance(body, dict) else None
    if not isinstance(source, dict):
        raise ValueError("the body and its 'source' must be JSON objects")
    for name in ("connector_id", "keys"):
        if name not in source:
            raise ValueError(f"missing '{name}'")
    connector, keys = source["connector_id"], source["keys"]
    if isinstance(connector, bool) or not isinstance(connector, (int, str)):
        raise ValueError("'connector_id' must be an integer id or a connector name")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError("'keys' must be a non-empty list of strings")
    return str(connector), keys


def key_results(keys: list[str], outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One ``{key, status, error}`` per key asked for (``flexingest process``, a job's results)."""
    by_key = {o.key: o for o in outcomes}
    results = []
    for key in dict.fromkeys(keys):
        o = by_key.get(key)
        status = "not processed" if o is None else o.status
        results.append({"key": key, "status": status, "version": o.version if o is not None else None,
                        "error": o.error if o is not None and status != "done" else None})
    return results


class JobWorker:
    """Runs the jobs of the state file one at a time, in a thread, until the service stops."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flexingest-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, connector: str, sync: str | None, keys: list[str]) -> Job:
        with State(self.service.pipeline.state_path, check=False) as state:
            job = create(state, connector, sync, keys)
        self._wake.set()
        return job

    def join(self, timeout: float) -> bool:
        """Wait for the job in flight after a stop; False if it is still busy."""
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        stop = self.service.stop
        state: State | None = None
        try:
            while not stop.is_set():
                try:
                    if state is None:
                        state = State(self.service.pipeline.state_path, check=False)
                    job = next_unfinished(state)
                    if job is None:
                        self._wake.wait(1.0)
                        self._wake.clear()
                        continue
                    try:
                        self._run(state, job)
                    except StateError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the worker outlives one bad job
                        log.exception("job %s: unexpected failure", job.id)
                        self._finish(state, job, "failed", [], f"unexpected {type(exc).__name__}: {exc}")
                except StateError as exc:
                    log.error("jobs: %s; trying again in 5s", exc)
                    stop.wait(5.0)
                except Exception:  # noqa: BLE001 - the worker outlives one bad job
                    log.exception("jobs: unexpected failure; trying again in 5s")
                    stop.wait(5.0)
        finally:
            if state is not None:
                state.close()

    def _run(self, state: State, job: Job) -> None:
        from .sync import process_keys

        service = self.service
        resumed = job.status == "running"
        job.status, job.started_at = "running", now_iso()
        _set(state, job)
        log.info("job %s: %s %d key(s) of connector %s%s", job.id, "resuming" if resumed else "processing",
                 len(job.keys), job.connector, f" for sync {job.sync}" if job.sync else "")
        pipeline = service.pipeline
        try:
            sync = pipeline.sync(job.sync) if job.sync is not None else None
            storage = service.storages.get(job.connector)
        except FlexingestError as exc:
            self._finish(state, job, "failed", [], str(exc))
            return
        target = state if sync is not None else Unrecorded(state)  # without a sync no outcome is recorded
        try:
            result = process_keys(pipeline, job.connector, job.keys, sync=sync, state=target, stop=service.stop,
                                  storage=storage, executor=service.executor)
        finally:
            if target is not state:
                target.close()
        if result.interrupted and service.stop.is_set():
            log.info("job %s: stopped before its end; it is taken up again at the next start", job.id)
            return  # stays running: the next start resumes it
        results = [{k: v for k, v in r.items() if k != "version"}  # FlexOrch's shape: key, status, error
                   for r in key_results(job.keys, result.outcomes)]
        ok = result.error is None and all(r["status"] in ("done", "skipped") for r in results)
        self._finish(state, job, "done" if ok else "failed", results, result.error)

    def _finish(self, state: State, job: Job, status: str, results: list[dict[str, Any]], error: str | None) -> None:
        job.status, job.results, job.error, job.finished_at = status, results, error, now_iso()
        _set(state, job)
        log.info("job %s: %s (%d key(s))%s", job.id, status, len(job.keys), f": {error}" if error else "")
