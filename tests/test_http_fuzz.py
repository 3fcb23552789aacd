"""The OpenAPI schema of the HTTP interface, fuzzed with schemathesis: on every endpoint, with a valid
key, no answer is a 5xx and every answer conforms to its schema (status code, content type, body).

The application is called in-process (ASGI), over a real service whose scheduler runs in a
thread and whose job worker runs the jobs the fuzzer posts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flexingest import metrics
from flexingest.http.app import create_app
from flexingest.http.auth import Keys
from flexingest.jobs import JobWorker
from flexingest.loader import load_pipeline
from flexingest.runner import Service
from flexingest.state import State
from flexingest.sync import StopToken

KEY = "fuzz-key-0d5e2c8b"


def wait(predicate: Any, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "docs").mkdir()
    (base / "docs" / "a.txt").write_text("a")
    path = base / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "connectors_dir": "connectors.d",
        "connectors": [{"name": "docs", "id": 1, "type": "local", "config": {"path": "docs"}}],
        "steps": [{"write_jsonl": {"path": "out/records.jsonl"}}],
        "syncs": [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}}],
    }))
    pipeline = load_pipeline(path)
    State(pipeline.state_path).close()
    stop = StopToken(grace=2)
    service = Service(pipeline, list(pipeline.syncs), stop)
    thread = threading.Thread(target=service.serve, name="fuzzed-service", daemon=True)
    thread.start()
    wait(lambda: service.ready() is None, 10)
    worker = JobWorker(service)
    application = create_app(service, Keys([KEY]), worker, CollectorRegistry())
    application.pipeline_file = path  # type: ignore[attr-defined]
    worker.start()
    try:
        yield application
    finally:
        stop.request()
        thread.join(15)
        worker.join(10)
        metrics.disable()


@pytest.fixture(scope="module")
def api_schema(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = [("GET", "/v1/connectors"), ("POST", "/v1/connectors"), ("GET", "/v1/connectors/{connector_id}"),
              ("DELETE", "/v1/connectors/{connector_id}"), ("POST", "/v1/connectors/{connector_id}/test"),
              ("POST", "/v1/data-process/async"), ("GET", "/v1/data-process/{job_id}"), ("GET", "/v1/syncs"),
              ("GET", "/v1/syncs/{name}"), ("POST", "/v1/syncs/{name}/run"), ("POST", "/v1/syncs/{name}/retry"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
#: those with a body or a path parameter: something a request can get wrong
TAKING_INPUT = [(m, p) for m, p in OPERATIONS if "{" in p or (m == "POST" and not p.endswith(("/run", "/retry")))]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CASES = ([(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS]
         + [(m, p, GenerationMode.NEGATIVE) for m, p in TAKING_INPUT])


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_5xx_and_every_answer_conforms(app: Any, api_schema: Any, method: str, path: str,
                                          mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(generation_mode=mode)]
    if (method, path, mode) == ("POST", "/v1/connectors", GenerationMode.POSITIVE):
        # random bodies are almost never a valid connector: one that is (201, then 409), with the rest generated
        strategies.append(operation.as_strategy(body={"type": "local", "name": "fuzzed", "config": {"path": "docs"}}))
    for strategy in strategies:

        @given(case=strategy)
        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            response = case.call(headers={"X-API-KEY": KEY})
            case.validate_response(response, checks=CHECKS)

        fuzz()
    if (method, path) == ("POST", "/v1/connectors"):
        assert "fuzzed" in load_pipeline(app.pipeline_file).connector_names() or mode is GenerationMode.NEGATIVE


def test_the_schema_names_every_endpoint(api_schema: Any) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert paths == {"/v1/connectors", "/v1/connectors/{connector_id}", "/v1/connectors/{connector_id}/test",
                     "/v1/data-process/async", "/v1/data-process/{job_id}", "/v1/syncs", "/v1/syncs/{name}",
                     "/v1/syncs/{name}/run", "/v1/syncs/{name}/retry", "/healthz", "/readyz", "/metrics"}
    security = api_schema.raw_schema["components"]["securitySchemes"]
    assert security == {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-KEY",
                                         "description": "one of the service's API keys"}}



def test_ready_only_while_the_scheduler_runs(tmp_path: Path) -> None:
    import httpx

    from flexingest.http.server import HttpServer

    (tmp_path / "docs").mkdir()
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "connectors": [{"name": "docs", "type": "local", "config": {"path": "docs"}}],
        "steps": [{"write_jsonl": {"path": "out/records.jsonl"}}],
        "syncs": [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}}]}))
    pipeline = load_pipeline(path)
    State(pipeline.state_path).close()
    stop = StopToken(grace=2)
    service = Service(pipeline, list(pipeline.syncs), stop)
    application = create_app(service, Keys([KEY]), JobWorker(service), CollectorRegistry())
    thread = threading.Thread(target=service.serve, name="readiness-service", daemon=True)
    server = HttpServer(application, "127.0.0.1", 0, grace=2)
    server.start()
    try:
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/healthz").status_code == 200
            starting = client.get("/readyz")
            assert starting.status_code == 503
            assert starting.json() == {"status": "not ready", "reason": "starting: the scheduler is not running yet"}
            assert client.post("/v1/syncs/docs/run", headers={"X-API-KEY": KEY}).status_code == 503
            thread.start()
            wait(lambda: client.get("/readyz").status_code == 200, 10)
            stop.request()
            wait(lambda: client.get("/readyz").json().get("reason") == "stopping", 10)
            assert client.get("/healthz").status_code == 200, "the process still answers"
    finally:
        stop.request()
        server.stop(2)
        if thread.is_alive():
            thread.join(15)
        metrics.disable()
