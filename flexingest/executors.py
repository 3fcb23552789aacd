"""Where the steps of a pass run: threads of this process, a local process pool, or a Dask cluster.

The coordinator (the process that runs the pass) alone lists, diffs and writes the state.
With ``processes`` or ``dask`` it sends *batches* of objects (their key, version, size and
time: never a secret) to workers and commits the outcomes that come back; an object is
``done`` only once the coordinator has committed it, so a worker that dies loses nothing.

A worker rebuilds what it needs once per process, not per object: the pipeline, from the
file's text as written (its ``${VAR}`` are resolved by the *worker's* environment: secrets
are never sent), its connectors and its steps. Steps that append to one shared output
(``write_jsonl``: ``Step.runs_on = "coordinator"``) and every step after them run on the
coordinator, with the records the workers return.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exceptions import FlexingestError
from .objects import ObjectInfo
from .state import Outcome

if TYPE_CHECKING:
    from .config import Pipeline
    from .connectors import Storage
    from .steps import Step, StepCall

log = logging.getLogger(__name__)

#: one object's result: its outcome (None: not started, the pass was stopping) and, when the
#: coordinator runs steps after the workers', the records it needs for them
Result = tuple[Outcome | None, list[Any] | None]

TARGET_TASK_SECONDS = 0.5  # batch=auto: objects per task so that a task takes about this long
MAX_BATCH = 256


class ExecutorUnavailable(FlexingestError):
    """The process pool or the Dask cluster cannot take work (unreachable, died)."""

    transient = True


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild a sync's steps: no secret, only the file as written."""

    pipeline_file: str  # where the coordinator loaded it from: relative paths resolve against its folder
    pipeline_text: str  # the file's text: ${VAR} are resolved from the worker's own environment
    sync: str | None  # whose steps run (None: the top-level steps, as `flexingest process`)
    connector: str  # the connector the objects belong to
    record_as: str | None  # the sync name recorded in each record
    worker_steps: int  # how many of the steps run on workers; the rest run on the coordinator

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.pipeline_file}\0{self.pipeline_text}".encode()).hexdigest()[:16]


def split_steps(calls: list[StepCall]) -> int:
    """How many of the steps may run on workers: those before the first that must run on the
    coordinator (``Step.runs_on``); it, and every step after it, run on the coordinator."""
    from .steps import step_class

    for i, call in enumerate(calls):
        if step_class(call.name).runs_on == "coordinator":
            return i
    return len(calls)


def placement(pipeline: Pipeline) -> list[str]:
    """Where each list of steps runs with the pipeline's executor (``flexingest validate``)."""
    if pipeline.executor.type == "threads":
        return []
    lines = []
    for sync in [None, *pipeline.syncs]:
        calls = pipeline.steps_for(sync)
        if not calls or (sync is not None and sync.steps is None):
            continue
        n = split_steps(calls)
        where = f"sync {sync.name}" if sync is not None else "top-level steps"
        lines.append(f"{where}: on the {pipeline.executor.type} workers: {', '.join(c.name for c in calls[:n]) or '-'}"
                     f"; on this process (the coordinator): {', '.join(c.name for c in calls[n:]) or '-'}")
    return lines


def check_secrets(pipeline: Pipeline, executor: Executor) -> None:
    """Refuse to send secrets written in the pipeline file to a Dask cluster over plain TCP.

    Workers rebuild the pipeline from the file's text: a secret given as ``${VAR}`` is read
    from each worker's own environment and never travels; one written in the file itself
    would travel with every task, so it may only over TLS.
    """
    address = getattr(executor, "address", None)
    if executor.kind != "dask" or address is None or address.startswith("tls://"):
        return
    text = pipeline.path.read_text(encoding="utf-8")
    written = [s for s in pipeline.secrets() if s and s in text]
    if written:
        raise FlexingestError(
            f"executor dask at {address}: the pipeline file has secrets written in it, which would be sent to "
            "the workers in clear; give them as ${VAR} (each worker reads its own environment) or use a tls:// "
            "scheduler address")


# --------------------------------------------------------------------------- the worker side


class _Worker:
    """One worker process's copy of a pipeline: connectors and steps built once."""

    def __init__(self, spec: WorkerSpec) -> None:
        from .loader import load_pipeline_text
        from .processing import build_steps
        from .redact import Redactor

        self.pipeline = load_pipeline_text(spec.pipeline_text, spec.pipeline_file)
        self.redact = Redactor(self.pipeline.secrets()).mask
        self.storages: dict[str, Storage] = {}
        self.steps: dict[tuple[str | None, int], list[Step]] = {}
        self.lock = threading.Lock()
        self._build = build_steps

    def storage(self, connector: str) -> Storage:
        from .connectors import open_connector

        with self.lock:
            if connector not in self.storages:
                self.storages[connector] = open_connector(self.pipeline.connector(connector), self.pipeline.base_dir)
            return self.storages[connector]

    def steps_for(self, spec: WorkerSpec) -> list[Step]:
        key = (spec.sync, spec.worker_steps)
        with self.lock:
            if key not in self.steps:
                sync = self.pipeline.sync(spec.sync) if spec.sync is not None else None
                self.steps[key] = self._build(self.pipeline, sync, limit=spec.worker_steps)
            return self.steps[key]


_workers: dict[str, _Worker] = {}
_workers_lock = threading.Lock()


def _worker_for(spec: WorkerSpec) -> _Worker:
    with _workers_lock:
        if spec.digest not in _workers:
            _workers[spec.digest] = _Worker(spec)
        return _workers[spec.digest]


def run_batch(spec: WorkerSpec, infos: list[tuple[str, str, int, float | None]], threads: int = 1) -> list[Result]:
    """A worker's task: process a batch of objects, make the outputs durable, return the outcomes."""
    from .processing import process_object

    worker = _worker_for(spec)
    storage = worker.storage(spec.connector)
    steps = worker.steps_for(spec)
    halted = threading.Event()
    keep = spec.worker_steps < len(worker.pipeline.steps_for(
        worker.pipeline.sync(spec.sync) if spec.sync is not None else None))

    def one(info: tuple[str, str, int, float | None]) -> Result:
        outcome, records = process_object(storage, steps, ObjectInfo(*info), spec.record_as, halted.is_set,
                                          worker.redact, keep_records=keep)
        if outcome is not None and outcome.halt:
            halted.set()  # no other object of the batch can succeed either
        return outcome, records

    if threads <= 1 or len(infos) == 1:
        results = [one(info) for info in infos]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(infos))) as pool:
            results = list(pool.map(one, infos))
    for step in steps:  # outputs durable before the coordinator records anything done
        try:
            step.flush()
        except Exception as exc:  # noqa: BLE001
            message = f"could not make outputs durable: {exc}"
            results = [(Outcome(o.key, o.version, o.size, o.modified, "failed", message), None)
                       if o is not None and o.status in ("done", "skipped") else (o, r) for o, r in results]
    return results


# --------------------------------------------------------------------------- executors


class Executor:
    """Runs batches of objects; ``submit`` returns a future of their results, in order."""

    kind = "threads"
    workers = 1
    #: objects per batch, fixed, or None to adapt (see :meth:`batch_size`)
    batch: int | None = 1

    def submit(self, spec: WorkerSpec, infos: list[tuple[str, str, int, float | None]]) -> Future[list[Result]]:
        raise NotImplementedError

    def batch_size(self, concurrency: int, seconds_per_object: float | None) -> int:
        """Objects per task: fixed, or enough for about TARGET_TASK_SECONDS of work, never so many
        that fewer than two batches per worker fit in ``concurrency``."""
        ceiling = max(1, concurrency // (2 * self.workers))
        if self.batch is not None:
            return max(1, min(self.batch, ceiling))
        if seconds_per_object is None:
            return min(4, ceiling)
        return max(1, min(MAX_BATCH, ceiling, int(TARGET_TASK_SECONDS / max(seconds_per_object, 1e-4))))

    def describe(self) -> str:
        return self.kind

    def close(self) -> None:
        pass


def _spawn_context() -> Any:
    import multiprocessing

    # a fresh interpreter per worker: forking a process that runs event-loop threads is unsafe
    return multiprocessing.get_context("spawn")


def _worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle


class ProcessExecutor(Executor):
    """A local pool of worker processes (``workers: auto`` = one per core)."""

    kind = "processes"

    def __init__(self, workers: int | str = "auto", threads: int = 4, batch: int | str = "auto") -> None:
        self.workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
        self.threads = threads
        self.batch = None if batch == "auto" else int(batch)
        self._pool: Any = None
        self._lock = threading.Lock()

    def _get_pool(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_spawn_context(),
                                                 initializer=_worker_init)
            return self._pool

    def submit(self, spec: WorkerSpec, infos: list[tuple[str, str, int, float | None]]) -> Future[list[Result]]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            future: Future[list[Result]] = self._get_pool().submit(run_batch, spec, infos, self.threads)
            return future
        except BrokenProcessPool:
            self.reset()
            return self._get_pool().submit(run_batch, spec, infos, self.threads)  # type: ignore[no-any-return]

    def reset(self) -> None:
        """A worker died: the pool is broken for every task; the next submit makes a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        return f"processes ({self.workers} workers)"

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class DaskExecutor(Executor):
    """An existing Dask cluster (``address``), or a local one started on first use."""

    kind = "dask"

    def __init__(self, address: str | None = None, workers: int | str = "auto", threads: int = 1,
                 batch: int | str = "auto") -> None:
        self.address = address
        self.local_workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
        self.workers = self.local_workers
        self.threads = threads
        self.batch = None if batch == "auto" else int(batch)
        self._client: Any = None
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._counter = 0

    def _get_client(self) -> Any:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise FlexingestError(f"executor dask needs the distributed package: pip install 'flexingest[dask]' "
                                  f"({exc})") from None
        with self._lock:
            if self._client is not None and self._client.status in ("running", "connecting"):
                return self._client
            self._drop()
            try:
                if self.address is None:
                    self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                        n_workers=self.local_workers, threads_per_worker=1, processes=True, dashboard_address=None)
                    self._client = Client(self._cluster, timeout="10s")  # type: ignore[no-untyped-call]
                else:
                    self._client = Client(self.address, timeout="10s")  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                self._drop()
                raise ExecutorUnavailable(f"Dask scheduler {self.address or 'local'} unreachable: {exc}") from None
            self.workers = max(1, len(self._client.scheduler_info().get("workers", {})) or self.local_workers)
            return self._client

    def submit(self, spec: WorkerSpec, infos: list[tuple[str, str, int, float | None]]) -> Future[list[Result]]:
        client = self._get_client()
        self._counter += 1
        # the task's key names the sync and the batch, never a secret (keys show in the dashboard)
        key = f"flexingest-{spec.sync or 'process'}-{os.getpid()}-{self._counter}-{time.monotonic_ns()}"
        dask_future = client.submit(run_batch, spec, infos, self.threads, key=key, pure=False, retries=1)
        return _as_concurrent(dask_future)

    def describe(self) -> str:
        return f"dask ({self.address or f'local cluster, {self.local_workers} workers'})"

    def _drop(self) -> None:
        for thing in (self._client, self._cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing what is already broken
                    log.debug("closing %s failed", type(thing).__name__, exc_info=True)
        self._client = self._cluster = None

    def close(self) -> None:
        with self._lock:
            self._drop()


def _as_concurrent(dask_future: Any) -> Future[list[Result]]:
    """A concurrent.futures.Future completed by a Dask future (its errors translated)."""
    out: Future[list[Result]] = Future()
    out.set_running_or_notify_cancel()

    def done(f: Any) -> None:
        try:
            if f.cancelled():
                out.set_exception(ExecutorUnavailable("the Dask task was cancelled"))
                return
            out.set_result(f.result())
        except BaseException as exc:  # noqa: BLE001 - handed to the collector
            out.set_exception(_dask_error(exc))

    dask_future.add_done_callback(done)
    return out


def _dask_error(exc: BaseException) -> BaseException:
    name = type(exc).__name__
    if name == "KilledWorker":
        return ExecutorUnavailable(f"Dask workers died processing this batch ({exc})")
    lost = ("CommClosedError", "TimeoutError", "CancelledError", "FutureCancelledError")
    if name in lost or isinstance(exc, OSError):
        return ExecutorUnavailable(f"lost the Dask scheduler: {name}: {exc}")
    return exc


def make_executor(pipeline: Pipeline, override: str | None = None) -> Executor | None:
    """The executor of ``pipeline`` (or of ``--executor``); None for threads (the pass's own)."""
    config: Any = pipeline.executor
    if override is not None:
        config = parse_executor(override)
    if config.type == "threads":
        return None
    if config.type == "processes":
        return ProcessExecutor(config.workers, config.threads, config.batch)
    return DaskExecutor(config.address, config.workers, config.threads, config.batch)


def parse_executor(text: str) -> Any:
    """``--executor``: ``threads``, ``processes``, ``processes:4``, ``dask``, ``dask:4`` (a local
    cluster of 4) or ``dask:tcp://host:8786``."""
    from .config import DaskExecutor as DaskConfig
    from .config import ProcessesExecutor, ThreadsExecutor

    kind, _, arg = text.partition(":")
    if kind == "threads" and not arg:
        return ThreadsExecutor.model_validate({"type": "threads"})
    if kind == "processes":
        return ProcessesExecutor.model_validate({"type": "processes", "workers": int(arg) if arg else "auto"})
    if kind == "dask":
        if arg.isdigit():
            return DaskConfig.model_validate({"type": "dask", "workers": int(arg)})
        return DaskConfig.model_validate({"type": "dask", "address": arg or None})
    raise ValueError(f"expected threads, processes[:N], dask[:N] or dask:tcp://host:port, got {text!r}")
