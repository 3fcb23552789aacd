"""The HTTP interface of ``flexingest run --http``, through a real service on a loopback port.

One service for the module (``api``): a pipeline with a ``connectors_dir``, a local connector
``docs`` (id 42) whose sync fails on keys containing "bad", a connector with secrets that is
never contacted, a connector of the folder used by a sync, and a slow sync.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import run_flexingest
from httpservice import KEY, HttpService, wait_for
from prometheus_client.parser import text_string_to_metric_families

SECRET = "vault-Secret-Never-Shown-0987"
KEY_ID = "AKIA-VAULT-NEVER-SHOWN"


@dataclass
class Api:
    service: HttpService
    base: Path
    pipeline: Path

    @property
    def client(self) -> httpx.Client:
        return self.service.client

    @property
    def state(self) -> Path:
        return self.base / ".flexingest" / "pipeline.db"

    def runs(self, sync: str) -> int:
        with sqlite3.connect(f"file:{self.state}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM runs WHERE sync = ? AND ended_at IS NOT NULL",
                                  (sync,)).fetchone()[0])

    def objects(self, sync: str) -> dict[str, str]:
        with sqlite3.connect(f"file:{self.state}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT key, status FROM objects WHERE sync = ?", (sync,)).fetchall())

    def job(self, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """POST a job, wait until it has finished; its last answer."""
        accepted = self.client.post("/v1/data-process/async", json=body)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]

        def finished() -> dict[str, Any] | None:
            answer: dict[str, Any] = self.client.get(f"/v1/data-process/{job_id}").json()
            return answer if answer["status"] in ("done", "failed") else None

        result: dict[str, Any] = wait_for(finished, timeout, f"job {job_id}", every=0.1)
        return result


def write_hooks(folder: Path) -> str:
    module = f"checks_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(
        "import time\n"
        "def check(record):\n"
        "    if 'bad' in record['key']:\n"
        "        raise ValueError('refused ' + record['key'])\n"
        "    return record\n"
        "def slow(record):\n"
        "    time.sleep(1.5)\n"
        "    return record\n")
    return module


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("http-api")
    for folder, files in (("docs", {"a.txt": "alpha", "bad.txt": "refused"}), ("slow", {"s.txt": "slow"})):
        (base / folder).mkdir()
        for name, text in files.items():
            (base / folder / name).write_text(text)
    hooks = write_hooks(base)
    (base / "connectors.d").mkdir()
    (base / "connectors.d" / "dirconn.yaml").write_text(
        yaml.safe_dump({"name": "dirconn", "id": 7, "type": "local", "config": {"path": "../docs"}}))
    pipeline = base / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "version": 1,
        "connectors_dir": "connectors.d",
        "connectors": [
            {"name": "docs", "id": 42, "type": "local", "config": {"path": "docs"}},
            {"name": "slowdocs", "type": "local", "config": {"path": "slow"}},
            {"name": "vault", "id": 9, "type": "s3",
             "config": {"bucket": "vault", "endpoint_url": "http://127.0.0.1:9", "aws_access_key_id": KEY_ID,
                        "aws_secret_access_key": SECRET}},
        ],
        "steps": [{"python": {"callable": f"{hooks}:check"}}, {"write_jsonl": {"path": "out/records.jsonl"}}],
        "syncs": [
            {"name": "docs", "connector": 42, "schedule": {"every": "1h"}},
            {"name": "fromdir", "connector": "dirconn", "schedule": {"every": "1h"}},
            {"name": "slow", "connector": "slowdocs", "schedule": {"every": "1h"},
             "steps": [{"python": {"callable": f"{hooks}:slow"}}]},
        ],
    }, sort_keys=False))
    service = HttpService(pipeline)
    try:
        service.ready()
        api = Api(service, base, pipeline)
        wait_for(lambda: api.runs("docs") and api.runs("fromdir") and api.runs("slow"), 30, "the first passes")
        yield api
    finally:
        code = service.stop()
        assert code == 0, service.log()
        assert KEY not in service.log(), "an API key reached the log"
        assert SECRET not in service.log()


# ---------------------------------------------------------------------- open endpoints and auth


def test_health_and_readiness_need_no_key(api: Api) -> None:
    assert httpx.get(f"{api.service.url}/healthz").json() == {"status": "ok", "reason": None}
    ready = httpx.get(f"{api.service.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


V1 = [("GET", "/v1/connectors"), ("POST", "/v1/connectors"), ("GET", "/v1/connectors/42"),
      ("DELETE", "/v1/connectors/42"), ("POST", "/v1/connectors/42/test"), ("POST", "/v1/data-process/async"),
      ("GET", "/v1/data-process/x"), ("GET", "/v1/syncs"), ("GET", "/v1/syncs/docs"),
      ("POST", "/v1/syncs/docs/run"), ("POST", "/v1/syncs/docs/retry")]


@pytest.mark.parametrize("headers,detail", [({}, "missing X-API-KEY header"),
                                            ({"X-API-KEY": "wrong-key"}, "invalid API key"),
                                            ({"X-API-KEY": KEY[:-1]}, "invalid API key"),
                                            ({"Authorization": f"Bearer {KEY}"}, "missing X-API-KEY header")],
                         ids=["missing", "wrong", "prefix", "bearer-is-not-the-api-header"])
def test_every_v1_endpoint_needs_the_key(api: Api, headers: dict[str, str], detail: str) -> None:
    runs = api.runs("docs")
    with httpx.Client(base_url=api.service.url, headers=headers) as anonymous:
        for method, path in V1:
            answer = anonymous.request(method, path, json={"source": {"connector_id": 42, "keys": ["a.txt"]}})
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json() == {"detail": detail}
            assert answer.headers["content-type"] == "application/json"
    assert api.runs("docs") == runs, "nothing ran for a refused request"
    assert [c["name"] for c in api.client.get("/v1/connectors").json()][:1] == ["docs"], "the right key works"


def test_metrics_take_the_key_as_header_or_bearer(api: Api) -> None:
    url = f"{api.service.url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(url, headers={"X-API-KEY": KEY}).status_code == 200


# ---------------------------------------------------------------------- connectors


def test_connectors_are_listed_with_secrets_masked(api: Api) -> None:
    answer = api.client.get("/v1/connectors")
    assert answer.status_code == 200
    assert SECRET not in answer.text and KEY_ID not in answer.text
    by_name = {c["name"]: c for c in answer.json()}
    assert by_name["docs"] == {"id": 42, "type": "local", "name": "docs", "config": {"path": "docs"}}
    assert by_name["vault"]["config"] == {"bucket": "vault", "endpoint_url": "http://127.0.0.1:9",
                                          "aws_access_key_id": "**********", "aws_secret_access_key": "**********"}
    assert by_name["dirconn"] == {"id": 7, "type": "local", "name": "dirconn", "config": {"path": "../docs"}}
    assert api.client.get("/v1/connectors/42").json() == by_name["docs"]
    assert api.client.get("/v1/connectors/docs").json() == by_name["docs"]
    assert api.client.get("/v1/connectors/9").json() == by_name["vault"]
    missing = api.client.get("/v1/connectors/404")
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("unknown connector '404' (known: docs, slowdocs, vault, dirconn")


def test_a_posted_connector_is_written_and_usable_at_once(api: Api) -> None:
    folder = api.base / "incoming"
    folder.mkdir()
    (folder / "new.txt").write_text("fresh")
    created = api.client.post("/v1/connectors", json={"type": "local", "name": "incoming",
                                                      "config": {"path": str(folder)}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {"id": 43, "type": "local", "name": "incoming", "config": {"path": str(folder)}}
    written = api.base / "connectors.d" / "incoming.yaml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert yaml.safe_load(written.read_text()) == {"name": "incoming", "id": 43, "type": "local",
                                                   "config": {"path": str(folder)}}
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")], "no temporary file left"
    assert api.client.get("/v1/connectors/43").json() == body
    job = api.job({"source": {"connector_id": 43, "keys": ["new.txt"]}})
    assert job["status"] == "done" and job["results"] == [{"key": "new.txt", "status": "done", "error": None}]
    assert run_flexingest("validate", api.pipeline).code == 0, "the file written is a valid connector file"


def test_posted_secrets_are_written_as_given_and_never_echoed(api: Api) -> None:
    secret = f"posted-{uuid.uuid4().hex}"
    created = api.client.post("/v1/connectors", json={
        "type": "s3", "name": "posted-vault",
        "config": {"bucket": "b", "endpoint_url": "http://127.0.0.1:9", "aws_access_key_id": "AKIA-POSTED",
                   "aws_secret_access_key": secret, "region": "${HOME}"}})
    assert created.status_code == 201, created.text
    assert secret not in created.text and "AKIA-POSTED" not in created.text
    assert created.json()["config"]["aws_secret_access_key"] == "**********"
    assert created.json()["config"]["region"] == "${HOME}", "a posted value is literal: no interpolation"
    text = (api.base / "connectors.d" / "posted-vault.yaml").read_text()
    assert secret in text and "$${HOME}" in text
    assert secret not in api.client.get("/v1/connectors").text
    assert secret not in api.service.log()


def invalid(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = api.client.post("/v1/connectors", json=body)
    assert answer.status_code == 422, answer.text
    detail: list[dict[str, Any]] = answer.json()["detail"]
    return detail


def test_an_invalid_connector_is_422_with_the_messages_of_validate(api: Api, tmp_path: Path) -> None:
    body = {"type": "s3", "name": "broken", "config": {"buckt": "x", "region": 5}}
    detail = invalid(api, body)
    assert not (api.base / "connectors.d" / "broken.yaml").exists(), "nothing written"
    assert {(tuple(d["loc"]), d["msg"]) for d in detail} == {
        (("body", "config", "buckt"), "unknown field 'buckt' (did you mean 'bucket'?)"),
        (("body", "config", "region"), "input should be a valid string"),
        (("body", "config", "bucket"), "required field missing"),
    }
    # the same connector in a file of a connectors_dir: validate says the same
    (tmp_path / "connectors.d").mkdir()
    (tmp_path / "connectors.d" / "broken.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"version": 1, "connectors_dir": "connectors.d"}))
    validate = run_flexingest("validate", tmp_path / "p.yaml")
    assert validate.code == 2
    said = {line.split(": ", 1)[1] for line in validate.stderr.splitlines() if "broken.yaml" in line}
    assert said == {d["message"].split(": ", 1)[1] for d in detail}
    assert all(d["message"].startswith(str(Path("connectors.d") / "broken.yaml") + ":")
               or "/connectors.d/broken.yaml:" in d["message"] for d in detail)

    assert [d["msg"] for d in invalid(api, {"type": "ftp", "name": "x", "config": {}})] == [
        "unknown connector type 'ftp' (known: azure_blob, gcs, local, s3)"]
    assert [d["msg"] for d in invalid(api, {"type": "local", "name": "../../etc/passwd", "config": {"path": "/"}})] \
        == ["a connector created over HTTP is named with letters, digits, '.', '_' and '-' (it names its file), "
            "at most 100"]


def test_connector_bodies_are_checked_as_requests(api: Api) -> None:
    extra = invalid(api, {"type": "local", "name": "x", "config": {"path": "."}, "colour": "red"})
    assert [(d["loc"], d["type"]) for d in extra] == [(["body", "colour"], "extra_forbidden")]
    wrong = invalid(api, {"type": "local", "name": 3, "config": "."})
    assert {tuple(d["loc"]) for d in wrong} == {("body", "name"), ("body", "config")}
    taken = api.client.post("/v1/connectors", json={"type": "local", "name": "docs", "config": {"path": "."}})
    assert taken.status_code == 409 and taken.json() == {"detail": "a connector named 'docs' exists already"}
    same_id = api.client.post("/v1/connectors", json={"type": "local", "name": "other", "id": 42,
                                                      "config": {"path": "."}})
    assert same_id.status_code == 409 and same_id.json() == {"detail": "a connector with id 42 exists already"}


def test_delete_rules(api: Api) -> None:
    created = api.client.post("/v1/connectors", json={"type": "local", "name": "temporary", "config": {"path": "."}})
    assert created.status_code == 201
    cid = created.json()["id"]
    file = api.base / "connectors.d" / "temporary.yaml"
    assert file.exists()
    gone = api.client.delete(f"/v1/connectors/{cid}")
    assert gone.status_code == 204 and gone.content == b""
    assert not file.exists()
    assert api.client.get(f"/v1/connectors/{cid}").status_code == 404
    assert api.client.delete(f"/v1/connectors/{cid}").status_code == 404

    in_file = api.client.delete("/v1/connectors/docs")
    assert in_file.status_code == 409
    assert in_file.json()["detail"].startswith("connector 'docs' is declared in the pipeline file")
    used = api.client.delete("/v1/connectors/dirconn")
    assert used.status_code == 409 and used.json() == {"detail": "connector 'dirconn' is used by sync(s) fromdir"}
    assert (api.base / "connectors.d" / "dirconn.yaml").exists()


def test_connector_test_answers_as_flexingest_test(api: Api) -> None:
    ok = api.client.post("/v1/connectors/42/test")
    assert ok.status_code == 200
    assert ok.json() == {"success": True, "message": "Connection established successfully."}
    created = api.client.post("/v1/connectors", json={"type": "local", "name": "nowhere",
                                                      "config": {"path": str(api.base / "no-such-folder")}})
    assert created.status_code == 201
    failed = api.client.post("/v1/connectors/nowhere/test").json()
    cli = json.loads(run_flexingest("test", api.pipeline, "nowhere").stdout)
    assert failed == {"success": False, "message": cli["message"]}
    assert "not found" in failed["message"]
    assert api.client.post("/v1/connectors/nope/test").status_code == 404


# ---------------------------------------------------------------------- jobs


def test_a_job_processes_exactly_its_keys(api: Api) -> None:
    accepted = api.client.post("/v1/data-process/async",
                               json={"source": {"connector_id": 42, "keys": ["a.txt", "bad.txt", "missing.txt"]}})
    assert accepted.status_code == 202
    assert set(accepted.json()) == {"job_id", "status"} and accepted.json()["status"] == "queued"
    job = api.job({"source": {"connector_id": 42, "keys": ["a.txt", "bad.txt", "missing.txt"]}})
    assert job["status"] == "failed"
    results = job["results"]
    assert [(r["key"], r["status"]) for r in results] == [("a.txt", "done"), ("bad.txt", "failed"),
                                                          ("missing.txt", "gone")]
    assert results[0]["error"] is None
    assert "ValueError: refused bad.txt" in results[1]["error"]
    assert "not found" in results[2]["error"]
    assert set(api.objects("docs")) == {"a.txt", "bad.txt"}, "without a sync, the state is not touched"


def test_a_job_with_a_sync_records_its_outcome(api: Api) -> None:
    (api.base / "docs" / "job-only.txt").write_text("only by the job")
    job = api.job({"source": {"connector_id": "docs", "keys": ["job-only.txt"]}, "sync": "docs"})
    assert job["status"] == "done", job
    assert api.objects("docs")["job-only.txt"] == "done"


def test_jobs_answer_404_for_unknown_things(api: Api) -> None:
    assert api.client.get("/v1/data-process/no-such-job").status_code == 404
    unknown = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 4242, "keys": ["a"]}})
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("unknown connector 4242")
    no_sync = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": ["a"]},
                                                                "sync": "nope"})
    assert no_sync.status_code == 404 and no_sync.json()["detail"].startswith("unknown sync 'nope'")


# ---------------------------------------------------------------------- bad input


def post_raw(api: Api, content: Any, **headers: str) -> httpx.Response:
    return api.client.post("/v1/data-process/async", content=content,
                           headers={"Content-Type": "application/json", **headers})


def test_malformed_bodies_are_422_naming_the_field(api: Api) -> None:
    malformed = post_raw(api, b'{"source": {"connector_id": 42, "keys": [')
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
    extra = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": ["a"]}, "x": 1})
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "x"]
    deeper = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": ["a"], "y": 2}})
    assert deeper.json()["detail"][0]["loc"] == ["body", "source", "y"]
    wrong = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": "a.txt"}})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "source", "keys"]
    flag = api.client.post("/v1/data-process/async", json={"source": {"connector_id": True, "keys": ["a"]}})
    assert flag.status_code == 422 and {tuple(d["loc"][:3]) for d in flag.json()["detail"]} == {
        ("body", "source", "connector_id")}
    empty = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": []}})
    assert empty.status_code == 422
    missing = api.client.post("/v1/data-process/async", json={})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "source"]
    not_utf8 = post_raw(api, b'{"source": {"connector_id": 42, "keys": ["\xff"]}}')
    assert not_utf8.status_code == 422 and not_utf8.json()["detail"][0]["type"] == "json_invalid"
    too_deep = post_raw(api, b"[" * 100_000)
    assert too_deep.status_code == 422 and too_deep.json()["detail"][0]["type"] == "json_invalid"


def test_too_many_keys_is_413(api: Api) -> None:
    keys = [f"k{i}.txt" for i in range(10_001)]
    answer = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": keys}})
    assert answer.status_code == 413
    assert answer.json() == {"detail": "10001 keys: at most 10000 in one request"}
    ok = api.client.post("/v1/data-process/async", json={"source": {"connector_id": 42, "keys": keys[:10_000]}})
    assert ok.status_code == 202


def test_a_body_over_1_mib_is_413(api: Api) -> None:
    big = json.dumps({"source": {"connector_id": 42, "keys": ["x" * 1024] * 2048}}).encode()  # 2 MiB
    assert len(big) > 2 * 1024 * 1024
    answer = post_raw(api, big)
    assert answer.status_code == 413 and answer.json() == {"detail": "the request body is larger than 1024 KiB"}
    connector = api.client.post("/v1/connectors", content=big, headers={"Content-Type": "application/json"})
    assert connector.status_code == 413


def test_a_chunked_body_over_1_mib_is_413(api: Api) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"source": {"connector_id": 42, "keys": ['
        for _ in range(150):  # 150 x 10 KB = 1.5 MB, no Content-Length
            sent += 10_000
            yield b'"' + b"y" * 9_997 + b'",'
        yield b'"z"]}}'

    answer = post_raw(api, chunks())
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413 and answer.json() == {"detail": "the request body is larger than 1024 KiB"}
    small = post_raw(api, iter([b'{"source": {"connector_id": 42, ', b'"keys": ["a.txt"]}}']))
    assert small.status_code == 202, "a small chunked body is fine"


# ---------------------------------------------------------------------- syncs


def test_syncs_say_what_status_json_says(api: Api) -> None:
    answer = api.client.get("/v1/syncs")
    assert answer.status_code == 200
    report = answer.json()
    status = json.loads(run_flexingest("status", api.pipeline, "--json").stdout)
    assert report["pipeline"] == status["pipeline"] and report["state"] == status["state"]
    assert set(report["syncs"]) == set(status["syncs"]) == {"docs", "fromdir", "slow"}
    for name, entry in status["syncs"].items():
        ours = report["syncs"][name]
        for field in ("done", "skipped", "failed", "dead", "pending", "gone", "next_due"):
            assert ours[field] == entry[field], (name, field)
        if entry["last_run"]["ended_at"]:
            assert ours["last_run"] == entry["last_run"]
        assert {p["key"] for p in ours["problems"]} == {p["key"] for p in entry["problems"]}
        assert ours["name"] == name and ours["health"] in ("ok", "failing") and isinstance(ours["backlog"], int)
    docs = api.client.get("/v1/syncs/docs").json()
    assert docs["name"] == "docs" and docs["health"] == "failing", "bad.txt failed in the last pass"
    assert [p["key"] for p in docs["problems"]] == ["bad.txt"]
    assert docs["problems"][0]["status"] == "failed" and "refused bad.txt" in docs["problems"][0]["error"]
    unknown = api.client.get("/v1/syncs/nope")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "unknown sync 'nope' (known: docs, fromdir, slow)"}


def test_run_now_starts_a_pass_or_joins_the_running_one(api: Api) -> None:
    before = api.runs("docs")
    started = api.client.post("/v1/syncs/docs/run")
    assert started.status_code == 202 and started.json() == {"sync": "docs", "run": "started"}
    wait_for(lambda: api.runs("docs") == before + 1, 30, "the pass asked for")

    slow_before = api.runs("slow")
    (api.base / "slow" / f"{uuid.uuid4().hex}.txt").write_text("one more")  # the pass takes 1.5 s
    assert api.client.post("/v1/syncs/slow/run").json() == {"sync": "slow", "run": "started"}
    wait_for(lambda: api.client.get("/v1/syncs/slow").json()["running"], 10, "the slow pass to run")
    assert api.client.post("/v1/syncs/slow/run").json() == {"sync": "slow", "run": "joined"}
    wait_for(lambda: api.runs("slow") == slow_before + 1, 30, "the slow pass")
    time.sleep(1)
    assert api.runs("slow") == slow_before + 1, "joined: no second pass"
    assert api.client.post("/v1/syncs/nope/run").status_code == 404


def test_retry_puts_failed_objects_back(api: Api) -> None:
    wait_for(lambda: api.objects("docs").get("bad.txt") == "failed", 10, "bad.txt failed")
    answer = api.client.post("/v1/syncs/docs/retry")
    assert answer.status_code == 200 and answer.json() == {"sync": "docs", "retried": 1}
    assert api.objects("docs")["bad.txt"] == "pending"
    assert api.client.post("/v1/syncs/nope/retry").status_code == 404


# ---------------------------------------------------------------------- metrics


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.client.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_what_the_passes_do(api: Api) -> None:
    answer = api.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    before = scrape(api)
    done = ("flexingest_objects_processed_total", (("status", "done"), ("sync", "docs")))
    passes = ("flexingest_pass_duration_seconds_count", (("sync", "docs"),))
    new = [f"metrics-{uuid.uuid4().hex[:6]}-{i}.txt" for i in range(3)]
    for name in new:
        (api.base / "docs" / name).write_text(name)
    runs = api.runs("docs")
    api.client.post("/v1/syncs/docs/run")
    wait_for(lambda: api.runs("docs") == runs + 1, 30, "the pass")
    after = scrape(api)
    assert after[done] == before.get(done, 0) + 3
    assert after[passes] == before[passes] + 1
    assert after[("flexingest_objects", (("status", "done"), ("sync", "docs")))] >= 3
    assert after[("flexingest_listed_objects", (("sync", "docs"),))] >= 5
    assert after[("flexingest_backlog", (("sync", "docs"),))] == 0
    assert after[("flexingest_last_pass_timestamp_seconds", (("sync", "docs"),))] > time.time() - 60
    steps = {dict(labels)["step"] for name, labels in after if name == "flexingest_step_duration_seconds_count"}
    assert {"python", "write_jsonl"} <= steps
    assert ("flexingest_listing_duration_seconds_count", (("sync", "docs"),)) in after
    assert ("flexingest_jobs", (("status", "done"),)) in after
    assert all(name.startswith("flexingest_") for name, _ in after)


def test_lines_written_by_a_job_without_a_sync_are_kept_by_the_next_pass(api: Api) -> None:
    """write_jsonl cuts what follows the committed length of its file when it opens it: a job's
    lines must be committed in the service's state too, or the next pass would cut them."""
    key = f"job-line-{uuid.uuid4().hex[:6]}.txt"
    (api.base / "docs" / key).write_text("a line of its own")
    job = api.job({"source": {"connector_id": 42, "keys": [key]}})
    assert job["status"] == "done", job
    records = api.base / "out" / "records.jsonl"

    def lines_of(k: str) -> int:
        return sum(1 for line in records.read_text().splitlines() if json.loads(line)["key"] == k)

    assert lines_of(key) == 1
    runs = api.runs("docs")
    assert api.client.post("/v1/syncs/docs/run").status_code == 202
    wait_for(lambda: api.runs("docs") == runs + 1, 30, "the pass")
    assert lines_of(key) == 2, "the job's line is kept, and the pass wrote the object's own line"
