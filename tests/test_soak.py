"""The service over a thousand passes per backend: memory and open files stay flat.

Each pass is what a scheduled run of the service does (``Service.run_pass``): a listing, the
diff, the run recorded. GCS uses a real service-account key whose token comes from a small
OAuth token endpoint on loopback, so that credentials are exercised as in production.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import connector_for
from servers import free_port
from stores import Store

from flexingest.loader import load_pipeline
from flexingest.runner import Service
from flexingest.sync import StopToken

PASSES = 1000
WARM_UP = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    """An OAuth 2.0 token endpoint that grants any signed JWT a short-lived token."""
    granted: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            granted.append(1)
            body = json.dumps({"access_token": f"token-{len(granted)}", "expires_in": 3600,
                               "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def service_account_key(token_uri: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({"type": "service_account", "project_id": "test", "private_key_id": "k1",
                       "private_key": pem, "client_email": "reader@test.iam.gserviceaccount.com",
                       "client_id": "1", "token_uri": token_uri})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3", "gcs", "azure_blob"])
def test_a_thousand_passes_keep_memory_and_open_files_flat(kind: str, new_store: Callable[[str], Store],
                                                           write_pipeline: Callable[..., Path],
                                                           request: pytest.FixtureRequest) -> None:
    store = new_store(kind)
    store.put_many({f"{i}.txt": b"x" for i in range(3)})
    connector = connector_for(store)
    if kind == "gcs":  # real credentials, refreshed from a token endpoint on loopback
        connector["config"].pop("anonymous")
        connector["config"]["service_account_json"] = service_account_key(request.getfixturevalue("token_endpoint"))
    path = write_pipeline(connector, steps=["extract_text"], syncs=[{"name": "docs", "connector": "docs"}])
    pipeline = load_pipeline(path)
    service = Service(pipeline, list(pipeline.syncs), StopToken())
    sync = pipeline.syncs[0]
    first = service.run_pass(sync)
    assert first is not None and first.ok and first.counts["done"] == 3, first and first.summary()
    for _ in range(WARM_UP):
        assert service.run_pass(sync) is not None
    rss, files = rss_mb(), open_files()
    for _ in range(PASSES - WARM_UP):
        result = service.run_pass(sync)
        assert result is not None and result.ok and result.counts["listed"] == 3
    grown_rss, grown_files = rss_mb() - rss, open_files() - files
    print(f"\n{kind}: after {PASSES} passes RSS {rss_mb():.0f} MB ({grown_rss:+.1f} since pass {WARM_UP}), "
          f"open files {open_files()} ({grown_files:+d})")
    assert grown_files <= 3, f"open files grew by {grown_files} over {PASSES - WARM_UP} passes"
    assert grown_rss < 15, f"RSS grew by {grown_rss:.1f} MB over {PASSES - WARM_UP} passes"
