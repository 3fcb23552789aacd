"""The steps that call out — command, webhook, python — and third-party steps, via the command line.

Each test writes a pipeline over a `local` connector, runs flexingest as a user would
(`run --once`, `process`, `validate`, `schema`) and checks what the user relies on: the
records written, the errors recorded in the state, what a real HTTP server on loopback
received, exit codes and stderr.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import pytest
from conftest import Result, connector_for, run_flexingest
from stores import Store

from flexingest.state import State

# --------------------------------------------------------------------------- helpers


def rows(pipeline: Path, sync: str = "docs") -> dict[str, dict[str, Any]]:
    """The state rows of ``sync`` (default state file of ``pipeline``), by key."""
    with State(pipeline.parent / ".flexingest" / f"{pipeline.stem}.db", create=False) as state:
        return {r["key"]: dict(r) for r in state.objects(sync)}


def records(path: Path) -> dict[str, dict[str, Any]]:
    """The write_jsonl output, by key (each key must appear once)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_key = {r["key"]: r for r in lines}
    assert len(by_key) == len(lines), f"a key was written twice: {[r['key'] for r in lines]}"
    return by_key


def sync_pipeline(store: Store, write_pipeline: Callable[..., Path], steps: list[Any], **top: Any) -> Path:
    """A pipeline with one sync "docs" over ``store`` running ``steps``."""
    return write_pipeline(connector_for(store), steps=steps,
                          syncs=[{"name": "docs", "connector": "docs", "concurrency": 2}], **top)


JSONL = {"write_jsonl": {"path": "out/records.jsonl"}}


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --------------------------------------------------------------------------- command

UPPER = ("import sys\n"
         "text = open(sys.argv[1], encoding='utf-8').read()\n"
         "sys.stdout.buffer.write((text.upper() + ' <' + sys.argv[2] + '>').encode('utf-8'))\n")


def test_command_stdout_becomes_the_text(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                         cli: Callable[..., Result], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"notes/a.txt": "héllo wörld".encode(), "b.txt": b"second",
                    "odd {version} {connector}.txt": b"braces"})
    path = sync_pipeline(store, write_pipeline,
                         [{"command": {"argv": [sys.executable, "-c", UPPER, "{path}", "{key}"]}}, JSONL])

    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    assert "done 3, failed 0" in result.stderr
    out = records(tmp_path / "out" / "records.jsonl")
    assert out["notes/a.txt"]["text"] == "HÉLLO WÖRLD <notes/a.txt>"
    assert out["b.txt"]["text"] == "SECOND <b.txt>"
    # placeholders inside a key (or its path) are the key's own text, never substituted again
    assert out["odd {version} {connector}.txt"]["text"] == "BRACES <odd {version} {connector}.txt>"
    assert out["b.txt"]["connector"] == "docs" and out["b.txt"]["version"] == rows(path)["b.txt"]["version"]


def test_command_non_zero_exit_fails_with_the_stderr_tail(new_store: Callable[[str], Store],
                                                         write_pipeline: Callable[..., Path],
                                                         cli: Callable[..., Result], tmp_path: Path) -> None:
    store = new_store("local")
    store.put_many({"good.txt": b"fine", "bad.txt": b"broken"})
    script = ("import sys\n"
              "if 'bad' in sys.argv[1]:\n"
              "    sys.stderr.write('first line of a long log\\n' + 'x' * 5000 + '\\nconverter: bad header\\n')\n"
              "    sys.exit(3)\n"
              "print('converted')\n")
    path = sync_pipeline(store, write_pipeline, [{"command": {"argv": [sys.executable, "-c", script, "{key}"]}},
                                                 JSONL])

    result = cli("run", path, "--once")
    assert result.code == 1
    assert "done 1, failed 1" in result.stderr
    state = rows(path)
    assert state["good.txt"]["status"] == "done"
    bad = state["bad.txt"]
    assert bad["status"] == "failed"
    assert "exited with status 3" in bad["error"]
    assert bad["error"].endswith("converter: bad header"), bad["error"][-200:]
    assert "first line of a long log" not in bad["error"], "only the tail of a long stderr is kept"
    assert len(bad["error"]) < 2500
    assert "bad.txt failed: " in result.stderr and "converter: bad header" in result.stderr
    assert list(records(tmp_path / "out" / "records.jsonl")) == ["good.txt"]


def test_command_timeout_kills_the_whole_process_group(new_store: Callable[[str], Store],
                                                      write_pipeline: Callable[..., Path],
                                                      cli: Callable[..., Result], tmp_path: Path) -> None:
    store = new_store("local")
    store.put("slow.txt", b"zzz")
    pids = tmp_path / "pids.txt"
    script = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
              "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
              "    f.write(f'{os.getpid()} {child.pid}')\n"
              "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
              "time.sleep(30)\n")
    path = sync_pipeline(store, write_pipeline,
                         [{"command": {"argv": [sys.executable, "-c", script, str(pids)], "timeout": "1s"}}, JSONL])

    started = time.monotonic()
    result = cli("run", path, "--once")
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert elapsed < 10, f"the pass took {elapsed:.1f}s: the timeout did not stop the command"
    row = rows(path)["slow.txt"]
    assert row["status"] == "failed"
    assert "timed out after 1s" in row["error"]
    assert not (tmp_path / "out" / "records.jsonl").exists()

    assert pids.exists(), "the command should have started before the timeout"
    program, grandchild = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (alive(program) or alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(program, 0)  # killed and reaped
    assert not alive(grandchild), "what the command started is killed with it"


# --------------------------------------------------------------------------- webhook

Body = Union[bytes, Callable[["Received"], bytes]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Hook:
    """A loopback HTTP server that answers POSTs as scripted and records every request."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, str], Body]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, *answers: tuple[int, dict[str, str], Body]) -> None:
        """The next answers to POSTs on ``path``, in order; then 200."""
        self.scripts.setdefault(path, []).extend(answers)

    def take(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.received.append(request)
            queue = self.scripts.get(request.path)
            status, headers, body = queue.pop(0) if queue else (200, {}, b"ok")
        return status, headers, body(request) if callable(body) else body

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


def _handler(hook: Hook) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            status, headers, payload = hook.take(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def hook_server() -> Iterator[Callable[[], Hook]]:
    """Factory: each call starts another HTTP server on 127.0.0.1 (a free port)."""
    running: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start() -> Hook:
        hook = Hook()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        hook.url = f"http://127.0.0.1:{server.server_address[1]}"
        return hook

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(5)


def webhook(url: str, **options: Any) -> dict[str, Any]:
    return {"webhook": {"url": url, "backoff": "0.01s", **options}}


def test_webhook_retries_5xx_with_one_idempotency_key(new_store: Callable[[str], Store],
                                                     write_pipeline: Callable[..., Path],
                                                     cli: Callable[..., Result],
                                                     hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    hook.answer("/hook", (500, {}, b"oops"), (502, {}, b"bad gateway"))
    store = new_store("local")
    store.put("a.txt", b"alpha text")
    path = sync_pipeline(store, write_pipeline, ["extract_text", webhook(f"{hook.url}/hook")])

    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    assert "done 1, failed 0" in result.stderr
    assert rows(path)["a.txt"]["status"] == "done"
    got = hook.on("/hook")
    assert len(got) == 3, "two failures, then the delivery that succeeded; nothing after"
    keys = {r.headers.get("idempotency-key") for r in got}
    assert len(keys) == 1 and None not in keys and len(keys.pop() or "") >= 16
    assert {r.body for r in got} == {got[0].body}, "every retry sends the same record"
    assert all(r.headers["content-type"] == "application/json" for r in got)
    record = got[0].json()
    assert (record["connector"], record["key"], record["text"]) == ("docs", "a.txt", "alpha text")
    assert record["version"] == rows(path)["a.txt"]["version"]
    assert record["size"] == len(b"alpha text")


def test_webhook_gives_up_after_max_retries(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                           cli: Callable[..., Result], hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    hook.answer("/hook", *[(503, {}, b"down for maintenance")] * 10)
    store = new_store("local")
    store.put("a.txt", b"alpha")
    path = sync_pipeline(store, write_pipeline, [webhook(f"{hook.url}/hook", max_retries=2)])

    result = cli("run", path, "--once")
    assert result.code == 1
    row = rows(path)["a.txt"]
    assert row["status"] == "failed"
    assert "answered 503 after 3 attempts" in row["error"] and "down for maintenance" in row["error"]
    assert len(hook.on("/hook")) == 3


def test_webhook_4xx_fails_at_once(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                   cli: Callable[..., Result], hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    hook.answer("/hook", (400, {}, b"field 'text' is required"))
    store = new_store("local")
    store.put("a.txt", b"alpha")
    path = sync_pipeline(store, write_pipeline, [webhook(f"{hook.url}/hook")])

    result = cli("run", path, "--once")
    assert result.code == 1
    assert "done 0, failed 1" in result.stderr
    row = rows(path)["a.txt"]
    assert row["status"] == "failed"
    assert "400" in row["error"] and "field 'text' is required" in row["error"]
    assert len(hook.on("/hook")) == 1, "a 400 is not retried"


def test_webhook_429_honours_retry_after(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                         cli: Callable[..., Result], hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    hook.answer("/hook", (429, {"Retry-After": "0"}, b"slow down"))
    store = new_store("local")
    store.put("a.txt", b"alpha")
    # a long backoff: only Retry-After: 0 makes the retry immediate
    path = sync_pipeline(store, write_pipeline, [webhook(f"{hook.url}/hook", backoff="20s")])

    started = time.monotonic()
    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    assert time.monotonic() - started < 8, "Retry-After: 0 should be honoured over the backoff"
    assert rows(path)["a.txt"]["status"] == "done"
    got = hook.on("/hook")
    assert len(got) == 2
    assert got[0].headers["idempotency-key"] == got[1].headers["idempotency-key"]


def test_webhook_idempotency_key_is_stable_per_version(new_store: Callable[[str], Store],
                                                       write_pipeline: Callable[..., Path],
                                                       cli: Callable[..., Result],
                                                       hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    store = new_store("local")
    store.put_many({"a.txt": b"alpha", "b.txt": b"beta"})
    path = write_pipeline(connector_for(store), steps=[webhook(f"{hook.url}/hook")])

    def deliver(*keys: str) -> dict[str, str]:
        before = len(hook.received)
        result = cli("process", path, "--connector", "docs", *keys)
        assert result.code == 0, result.stderr
        got = hook.received[before:]
        assert len(got) == len(keys)
        return {r.json()["key"]: r.headers["idempotency-key"] for r in got}

    first = deliver("a.txt", "b.txt")
    assert first["a.txt"] != first["b.txt"]
    assert deliver("a.txt") == {"a.txt": first["a.txt"]}, "the same version keeps its key in a new run"
    store.put("a.txt", b"alpha, edited")
    changed = deliver("a.txt", "b.txt")
    assert changed["a.txt"] != first["a.txt"], "a new version gets a new key"
    assert changed["b.txt"] == first["b.txt"]


def test_webhook_credentials_stay_on_their_origin(new_store: Callable[[str], Store],
                                                  write_pipeline: Callable[..., Path],
                                                  cli: Callable[..., Result],
                                                  hook_server: Callable[[], Hook]) -> None:
    first, second = hook_server(), hook_server()
    port = first.url.rsplit(":", 1)[1]
    first.answer("/other-port", (307, {"Location": f"{second.url}/landing"}, b""))
    first.answer("/other-host", (307, {"Location": f"http://localhost:{port}/landed"}, b""))
    first.answer("/same", (307, {"Location": "/moved?x=1"}, b""))
    token = f"tok-{uuid.uuid4().hex}"
    headers = {"Authorization": "Bearer ${TOKEN}", "X-Api-Key": "${TOKEN}"}
    store = new_store("local")
    store.put("a.txt", b"alpha")
    path = sync_pipeline(store, write_pipeline, [
        webhook(f"{first.url}/other-port", headers=headers),
        webhook(f"{first.url}/other-host", headers=headers),
        webhook(f"{first.url}/same", headers=headers),
    ])

    result = cli("run", path, "--once", env={"TOKEN": token})
    assert result.code == 0, result.stderr
    [original] = first.on("/other-port")
    assert original.headers["authorization"] == f"Bearer {token}"
    assert original.headers["x-api-key"] == token

    [elsewhere] = second.on("/landing")
    assert elsewhere.body == original.body, "a 307 re-sends the POST body"
    assert elsewhere.json()["key"] == "a.txt"
    assert elsewhere.headers["idempotency-key"] == original.headers["idempotency-key"]
    assert "authorization" not in elsewhere.headers and "x-api-key" not in elsewhere.headers

    [same_port_other_host] = first.on("/landed")  # 127.0.0.1 -> localhost: another origin
    assert same_port_other_host.body == original.body
    assert "authorization" not in same_port_other_host.headers and "x-api-key" not in same_port_other_host.headers

    [moved] = first.on("/moved?x=1")
    assert moved.body == original.body
    assert moved.headers["authorization"] == f"Bearer {token}" and moved.headers["x-api-key"] == token
    assert token not in result.stderr


def test_webhook_token_never_printed_or_recorded(new_store: Callable[[str], Store],
                                                 write_pipeline: Callable[..., Path],
                                                 hook_server: Callable[[], Hook]) -> None:
    hook = hook_server()
    # a server that echoes the credentials it refused (debug endpoints do)
    hook.answer("/hook", *[(401, {}, lambda r: f"rejected {r.headers.get('authorization')}".encode())] * 10)
    hook.answer("/flaky", *[(500, {}, lambda r: f"boom for {r.headers['authorization'].split()[-1]}".encode())] * 10)
    token = f"tok-{uuid.uuid4().hex}"
    store = new_store("local")
    store.put_many({"a.txt": b"alpha", "b.txt": b"beta"})
    headers = {"Authorization": "Bearer ${TOKEN}"}
    path = write_pipeline(connector_for(store), steps=[webhook(f"{hook.url}/hook", headers=headers)],
                          syncs=[{"name": "docs", "connector": "docs", "include": ["a.txt"]},
                                 {"name": "flaky", "connector": "docs", "include": ["b.txt"],
                                  "steps": [webhook(f"{hook.url}/flaky", headers=headers, max_retries=1)]}])

    for args in (["run", path, "--once", "-v"], ["run", path, "--once", "-v", "--log-format", "json"],
                 ["process", path, "--connector", "docs", "a.txt", "b.txt", "-v"]):
        result = run_flexingest(*args, env={"TOKEN": token})
        assert result.code == 1, result.stderr
        assert token not in result.stderr, args
        assert token not in result.stdout, args
        assert "answered 401" in result.stderr + result.stdout, result.stderr[-3000:]
    assert hook.on("/hook")[0].headers["authorization"] == f"Bearer {token}", "the token was sent"
    a, b = rows(path)["a.txt"], rows(path, "flaky")["b.txt"]
    assert "answered 401" in a["error"] and "answered 500 after 2 attempts" in b["error"]
    assert token not in a["error"] and token not in b["error"]
    assert "rejected **********" in a["error"] and "boom for **********" in b["error"], "echoes are masked"


# --------------------------------------------------------------------------- python


def user_module(folder: Path, source: str) -> str:
    """Writes ``source`` as a uniquely named module in ``folder`` (modules are cached per process)."""
    name = f"user_steps_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(source)
    return name


def test_python_step_returns_the_new_record(new_store: Callable[[str], Store], write_pipeline: Callable[..., Path],
                                            cli: Callable[..., Result], tmp_path: Path) -> None:
    module = user_module(tmp_path, "def enrich(record):\n"
                                   "    return {**record, 'words': len(record['text'].split()), 'lang': 'en'}\n"
                                   "def nothing(record):\n"
                                   "    return None\n")
    store = new_store("local")
    store.put_many({"a.txt": b"three little words", "b.txt": b"two words"})
    path = sync_pipeline(store, write_pipeline, ["extract_text", {"python": {"callable": f"{module}:enrich"}},
                                                 {"python": {"callable": f"{module}:nothing"}}, JSONL])

    result = cli("run", path, "--once")
    assert result.code == 0, result.stderr
    out = records(tmp_path / "out" / "records.jsonl")
    assert (out["a.txt"]["words"], out["a.txt"]["lang"], out["a.txt"]["text"]) == (3, "en", "three little words")
    assert (out["b.txt"]["words"], out["b.txt"]["text"], out["b.txt"]["connector"]) == (2, "two words", "docs")


def test_python_step_exception_fails_the_object(new_store: Callable[[str], Store],
                                                write_pipeline: Callable[..., Path],
                                                cli: Callable[..., Result], tmp_path: Path) -> None:
    module = user_module(tmp_path, "def check(record):\n"
                                   "    if record['key'].startswith('bad'):\n"
                                   "        raise ValueError('no good: ' + record['key'])\n"
                                   "    return record\n")
    store = new_store("local")
    store.put_many({"good.txt": b"fine", "bad.txt": b"broken"})
    path = sync_pipeline(store, write_pipeline, [{"python": {"callable": f"{module}:check"}}, JSONL])

    result = cli("run", path, "--once")
    assert result.code == 1
    assert "done 1, failed 1" in result.stderr
    state = rows(path)
    assert state["good.txt"]["status"] == "done"
    assert state["bad.txt"]["status"] == "failed"
    assert f"{module}:check raised ValueError: no good: bad.txt" in state["bad.txt"]["error"]
    assert list(records(tmp_path / "out" / "records.jsonl")) == ["good.txt"]


@pytest.mark.parametrize("what", ["module", "function"])
def test_python_step_that_cannot_load_fails_the_pass(what: str, new_store: Callable[[str], Store],
                                                     write_pipeline: Callable[..., Path],
                                                     cli: Callable[..., Result], tmp_path: Path) -> None:
    if what == "module":
        target = f"missing_{uuid.uuid4().hex[:10]}:transform"
    else:
        target = user_module(tmp_path, "def other(record):\n    return record\n") + ":transform"
    store = new_store("local")
    store.put("a.txt", b"alpha")
    path = sync_pipeline(store, write_pipeline, [{"python": {"callable": target}}, JSONL])

    result = cli("run", path, "--once")
    assert result.code == 1
    assert f"cannot load {target!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert all(r["status"] != "done" for r in rows(path).values())

    processed = cli("process", path, "--connector", "docs", "a.txt")
    assert processed.code == 1
    assert f"cannot load {target!r}" in processed.stderr


# --------------------------------------------------------------------------- third-party steps

PLUGIN = '''\
"""A third-party step, found through the flexingest.steps entry point."""

from flexingest.steps import Step, StepOptions


class UpperOptions(StepOptions):
    suffix: str = ""


class Upper(Step):
    Options = UpperOptions

    def process(self, record, source):
        record["text"] = (record["text"] or "").upper() + self.options.suffix
        return record
'''


def install_plugin(site: Path) -> None:
    """What `pip install flexingest-upper` would leave in site-packages."""
    (site / "flexingest_upper").mkdir(parents=True)
    (site / "flexingest_upper" / "__init__.py").write_text(PLUGIN)
    info = site / "flexingest_upper-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flexingest-upper\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flexingest.steps]\nupper = flexingest_upper:Upper\n")


def has_step(schema: Any, name: str) -> bool:
    """Whether the JSON schema declares a step ``name`` (a property of that name, anywhere)."""
    if isinstance(schema, dict):
        if name in (schema.get("properties") or {}):
            return True
        return any(has_step(v, name) for v in schema.values())
    if isinstance(schema, list):
        return any(has_step(v, name) for v in schema)
    return False


def test_third_party_step_from_an_entry_point(new_store: Callable[[str], Store],
                                              write_pipeline: Callable[..., Path], tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    install_plugin(site)
    env = {"PYTHONPATH": str(site)}
    store = new_store("local")
    store.put_many({"a.txt": b"hello plugin", "sub/b.md": b"# Title"})
    path = sync_pipeline(store, write_pipeline, ["extract_text", {"upper": {"suffix": "!"}}, JSONL])

    valid = run_flexingest("validate", path, env=env)
    assert valid.code == 0, valid.stderr
    assert "valid" in valid.stderr

    result = run_flexingest("run", path, "--once", env=env)
    assert result.code == 0, result.stderr
    out = records(tmp_path / "out" / "records.jsonl")
    assert out["a.txt"]["text"] == "HELLO PLUGIN!"
    assert out["sub/b.md"]["text"] == "# TITLE!"

    bad = sync_pipeline(store, write_pipeline, ["extract_text", {"upper": {"suffix": "!", "sufix": "?"}}, JSONL],
                        name="bad.yaml")
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "sufix" in text)
    invalid = run_flexingest("validate", bad, env=env)
    assert invalid.code == 2
    assert any(entry.startswith(f"{bad}:{line}:") and "sufix" in entry for entry in invalid.stderr.splitlines()), \
        invalid.stderr

    unknown = run_flexingest("validate", path)  # without the plugin installed
    assert unknown.code == 2
    assert "upper" in unknown.stderr

    schema = run_flexingest("schema", env=env)
    assert schema.code == 0, schema.stderr
    assert has_step(json.loads(schema.stdout), "upper")
    assert not has_step(json.loads(run_flexingest("schema").stdout), "upper")
