"""The FastAPI application of ``run --http``: the FlexOrch connector API, syncs, jobs, health,
metrics and the status page, over one running :class:`~flexingest.runner.Service`.

Every ``/v1/`` endpoint needs ``X-API-KEY`` when keys are configured; ``/healthz``,
``/readyz``, ``/``, ``/page.js`` and ``/openapi.json`` are open; ``/metrics`` takes the key
too (``X-API-KEY`` or ``Authorization: Bearer``) when one is configured. Errors answer
``{"detail": ...}``, and 422s keep FastAPI's shape (a list of ``{loc, msg, type}``).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import jobs as jobs_table
from .. import metrics
from ..exceptions import ApiError, FlexingestError
from ..redact import Redactor
from ..state import State
from . import connector_files
from .auth import HEADER, Keys
from .models import (
    ConnectorIn,
    ConnectorOut,
    Error,
    Health,
    JobAccepted,
    JobOut,
    ProcessIn,
    RetryOut,
    RunOut,
    SyncOut,
    SyncsOut,
    TestOut,
)
from .server import BodyLimit

if TYPE_CHECKING:
    from ..config import Pipeline
    from ..jobs import JobWorker
    from ..models import ConnectorBase
    from ..runner import Service

log = logging.getLogger(__name__)

LATE = timedelta(seconds=60)  # a sync whose pass is this much past due, and not running, is late
PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error} for code in codes}


def create_app(service: Service, keys: Keys, worker: JobWorker, registry: Any) -> FastAPI:
    """The application; ``registry`` is the ``CollectorRegistry`` that ``/metrics`` shows."""
    api_key = APIKeyHeader(name=HEADER, auto_error=False, description="one of the service's API keys")

    def authorized(given: str | None = Depends(api_key)) -> None:
        if not keys:
            return
        if given is None:
            raise HTTPException(401, f"missing {HEADER} header")
        if not keys.accepts(given):
            raise HTTPException(401, "invalid API key")

    app = FastAPI(title="flexingest", summary="FlexOrch-compatible connector API of a flexingest service",
                  version=_version(), docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)], responses=_answers(401))
    writing = threading.Lock()  # one change of connectors_dir at a time

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": _mask(service, str(exc))}, status_code=exc.status)

    @app.exception_handler(FlexingestError)
    async def _unavailable(request: Request, exc: FlexingestError) -> JSONResponse:
        return JSONResponse({"detail": _mask(service, str(exc))}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not parse the body (not UTF-8, nested too deep): malformed JSON
            return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error",
                                             "ctx": {"error": str(exc.detail)}}]}, status_code=422)
        return await http_exception_handler(request, exc)

    # ------------------------------------------------------------------ connectors

    @v1.get("/connectors", response_model=list[ConnectorOut], summary="Every connector, secrets masked")
    def list_connectors() -> list[dict[str, Any]]:
        return [connector_files.shown(c) for c in service.pipeline.connectors]

    @v1.post("/connectors", status_code=201, response_model=ConnectorOut, responses=_answers(409, 413, 503),
             summary="Create a connector (written to connectors_dir)")
    def create_connector(body: ConnectorIn) -> Any:
        with writing:
            try:
                pipeline = connector_files.create(service.pipeline, body.model_dump())
            except connector_files.InvalidConnector as exc:
                return _invalid(exc.issues)
            service.apply(pipeline)
        log.info("connector %s created over HTTP (%s)", body.name, pipeline.connector_file(body.name))
        return connector_files.shown(pipeline.connector(body.name))

    @v1.get("/connectors/{connector_id}", response_model=ConnectorOut, responses=_answers(404))
    def get_connector(connector_id: str) -> dict[str, Any]:
        return connector_files.shown(_connector(service.pipeline, connector_id))

    @v1.delete("/connectors/{connector_id}", status_code=204, response_class=Response,
               responses=_answers(404, 409, 503), summary="Remove a connector of connectors_dir")
    def delete_connector(connector_id: str) -> Response:
        with writing:
            connector = _connector(service.pipeline, connector_id)
            pipeline = connector_files.delete(service.pipeline, connector)
            service.apply(pipeline)
        log.info("connector %s deleted over HTTP", connector.name)
        return Response(status_code=204)

    @v1.post("/connectors/{connector_id}/test", response_model=TestOut, responses=_answers(404),
             summary="One bounded listing request, as `flexingest test`")
    def test_connector(connector_id: str) -> dict[str, Any]:
        from ..connectors import test_connector as check

        pipeline = service.pipeline
        answer = check(_connector(pipeline, connector_id), pipeline.base_dir)
        return {"success": answer["success"], "message": _mask(service, answer["message"])}

    # ------------------------------------------------------------------ jobs

    @v1.post("/data-process/async", status_code=202, response_model=JobAccepted,
             responses=_answers(404, 413, 429), summary="Process these keys in the background")
    def process(body: ProcessIn) -> Any:
        pipeline = service.pipeline
        if len(body.source.keys) > jobs_table.MAX_KEYS:
            raise ApiError(413, f"{len(body.source.keys)} keys: at most {jobs_table.MAX_KEYS} in one request")
        connector = _connector(pipeline, body.source.connector_id)
        sync = _sync(pipeline, body.sync) if body.sync is not None else None
        if sync is None and not pipeline.steps:
            return JSONResponse({"detail": [{"loc": ["body", "sync"], "type": "value_error",
                                             "msg": "the pipeline has no top-level steps: name a sync whose steps "
                                                    "process these keys"}]}, status_code=422)
        job = worker.submit(connector.name, sync.name if sync else None, list(body.source.keys))
        return {"job_id": job.id, "status": "queued"}

    @v1.get("/data-process/{job_id}", response_model=JobOut, responses=_answers(404))
    def get_job(job_id: str) -> dict[str, Any]:
        with _state(service) as state:
            job = jobs_table.get(state, job_id)
        if job is None:
            raise ApiError(404, f"unknown job {job_id!r}")
        answer: dict[str, Any] = _masked(service, job.answer())
        return answer

    # ------------------------------------------------------------------ syncs

    @v1.get("/syncs", response_model=SyncsOut, summary="What `status --json` says, with health and backlog")
    def list_syncs() -> dict[str, Any]:
        return _status(service)

    @v1.get("/syncs/{name}", response_model=SyncOut, responses=_answers(404))
    def get_sync(name: str) -> dict[str, Any]:
        syncs: dict[str, Any] = _status(service)["syncs"]
        if name not in syncs:
            _sync(service.pipeline, name)  # raises 404 naming the known ones
        entry: dict[str, Any] = syncs[name]
        return entry

    @v1.post("/syncs/{name}/run", status_code=202, response_model=RunOut, responses=_answers(404, 503),
             summary="A pass now (joined with the one running, if any)")
    def run_sync(name: str) -> dict[str, Any]:
        _sync(service.pipeline, name)
        return {"sync": name, "run": service.run_now(name)}

    @v1.post("/syncs/{name}/retry", response_model=RetryOut, responses=_answers(404),
             summary="Failed and dead objects back to be processed on the next pass, as `flexingest retry`")
    def retry_sync(name: str) -> dict[str, Any]:
        _sync(service.pipeline, name)
        with _state(service) as state:
            n = state.retry(name)
        log.info("%s: %d object(s) put back over HTTP, processed on the next pass", name, n)
        return {"sync": name, "retried": n}

    app.include_router(v1)

    # ------------------------------------------------------------------ operations

    @app.get("/healthz", response_model=Health, summary="The process answers")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="The scheduler runs and the state file is open and sound")
    def readyz() -> Any:
        why = service.ready()
        if why is None:
            try:
                with _state(service) as state:
                    state.db.execute("SELECT count(*) FROM runs").fetchone()
            except Exception as exc:  # noqa: BLE001 - whatever the file says, not ready
                why = f"the state file cannot be read: {exc}"
        if why is not None:
            return JSONResponse({"status": "not ready", "reason": _mask(service, why)}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, **_answers(401)},
             summary="Prometheus metrics (the API key too, when one is configured)")
    def get_metrics(request: Request) -> Response:
        if keys:
            bearer = request.headers.get("authorization", "")
            given = request.headers.get(HEADER) or (bearer[7:] if bearer[:7].lower() == "bearer " else None)
            if not keys.accepts(given):
                raise HTTPException(401, f"missing or invalid {HEADER} (or Authorization: Bearer) header")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=Response, include_in_schema=False)
    def page() -> Response:
        return Response(_file("page.html"), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    @app.get("/page.js", response_class=Response, include_in_schema=False)
    def page_js() -> Response:
        return Response(_file("page.js"), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    registry.register(StateCollector(service))
    metrics.enable(registry)
    return app


# ---------------------------------------------------------------------- helpers


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flexingest")
    except PackageNotFoundError:
        return "0"


def _file(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _state(service: Service) -> State:
    """A connection of this request's own (checked once, when the service started)."""
    return State(service.pipeline.state_path, check=False)


def _connector(pipeline: Pipeline, ref: str | int) -> ConnectorBase:
    try:
        return pipeline.connector(ref)
    except FlexingestError as exc:
        raise ApiError(404, str(exc)) from None


def _sync(pipeline: Pipeline, name: str) -> Any:
    try:
        return pipeline.sync(name)
    except FlexingestError as exc:
        raise ApiError(404, str(exc)) from None


def _redactor(service: Service) -> Redactor:
    return Redactor(service.pipeline.secrets())


def _mask(service: Service, text: str) -> str:
    return _redactor(service).mask(text)


def _masked(service: Service, value: Any, redactor: Redactor | None = None) -> Any:
    """Every string of ``value`` with the pipeline's secrets masked (errors were stored masked; this
    covers those stored before a secret was added)."""
    redactor = redactor or _redactor(service)
    if isinstance(value, str):
        return redactor.mask(value)
    if isinstance(value, dict):
        return {k: _masked(service, v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(service, v, redactor) for v in value]
    return value


_FIELD = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")


def _invalid(issues: list[Any]) -> JSONResponse:
    """422 in FastAPI's shape, with ``validate``'s message of each problem (and where it is)."""
    detail = []
    for issue in issues:
        loc: list[str | int] = ["body"]
        for index, name in _FIELD.findall(issue.field):
            loc.append(int(index) if index else name)
        detail.append({"loc": loc, "msg": issue.message, "type": "config_error", "message": str(issue)})
    return JSONResponse({"detail": detail}, status_code=422)


def _status(service: Service) -> dict[str, Any]:
    from ..report import status_report

    running = service.running()
    with _state(service) as state:
        report = status_report(service.pipeline, problems=20, state=state, running=running)
    now = datetime.now(timezone.utc)
    for name, entry in report["syncs"].items():
        entry["name"] = name
        entry["running"] = name in running
        entry["backlog"] = metrics.backlog(name)
        entry["health"] = _health(entry, now)
    answer: dict[str, Any] = _masked(service, report)
    return answer


def _health(entry: dict[str, Any], now: datetime) -> str:
    """In words: never run, failing (the last pass failed or was killed), late (past due, not running), ok."""
    last = entry["last_run"]
    if last is None:
        return "never run"
    if last["result"] in ("error", "failed", "killed"):
        return "failing"
    due = entry["next_due"]
    if due and not entry["running"] and datetime.fromisoformat(due.replace("Z", "+00:00")) < now - LATE:
        return "late"
    return "ok"


class StateCollector:
    """Gauges read from the state file at each scrape: objects by status per sync, jobs by status."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only: nothing is read when the collector is registered

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        objects = GaugeMetricFamily("flexingest_objects", "Objects in the state, by status", labels=["sync", "status"])
        job_counts = GaugeMetricFamily("flexingest_jobs", "Jobs of the HTTP API, by status", labels=["status"])
        running = GaugeMetricFamily("flexingest_pass_running", "1 while a pass of the sync is in flight",
                                    labels=["sync"])
        active = self.service.running()
        for sync in self.service.syncs:
            running.add_metric([sync.name], 1 if sync.name in active else 0)
        try:
            with _state(self.service) as state:
                rows = state.status()
                by_status = jobs_table.counts(state)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails because the state cannot be read
            log.warning("metrics: the state file cannot be read: %s", exc)
            yield running
            return
        for name, entry in rows.items():
            for status in ("done", "skipped", "failed", "dead", "pending", "gone"):
                objects.add_metric([name, status], entry.get(status) or 0)
        for status in ("queued", "running", "done", "failed"):
            job_counts.add_metric([status], by_status.get(status, 0))
        yield objects
        yield job_counts
        yield running

