"""``webhook``: POST each record as JSON, with an ``Idempotency-Key`` header.

429 and 5xx answers, timeouts and connection errors are retried with exponential
backoff (honouring ``Retry-After``); when they persist the receiver is down: the object
fails transiently (an outage, never charged to the object, counted by the pass's
breaker). 401, 403, 404, 405 and 410 mean the receiver refuses us or is not there: the
pass stops at once. Any other non-2xx answer fails the object with the status.
Redirects are followed by POSTing again (a 303 means the POST was accepted); when a
redirect leaves the original scheme, host and port, the configured headers and any
``Authorization``/``Cookie`` header are not sent there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

from pydantic import Field, SecretStr, field_validator

from ..destinations import describe_url
from ..exceptions import DestinationError, DestinationUnavailable
from ..objects import Source
from ..redact import Redactor
from ..units import Duration
from . import Record, Step, StepOptions

MAX_REDIRECTS = 5
USER_AGENT = "flexingest-webhook/1"
#: answers that no retry and no other record can change: the receiver is misconfigured
UNAVAILABLE = {401: "refuses our credentials", 403: "refuses access", 404: "has no such endpoint",
               405: "does not accept POST here", 410: "is gone"}


class WebhookOptions(StepOptions):
    url: str = Field(description="http(s) URL that receives the POST")
    headers: dict[str, SecretStr] = Field(default_factory=dict,
                                          description="extra headers (e.g. Authorization); never logged")
    timeout: Duration = Field(timedelta(seconds=30), description="per request")
    max_retries: int = Field(5, ge=0, description="retries of 429/5xx/network errors before failing")
    backoff: Duration = Field(timedelta(seconds=0.5), description="first retry delay, doubled each time")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).netloc:
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v


def idempotency_key(connector: str, key: str, version: str) -> str:
    """Stable for one version of one object, whatever the retry or the pass."""
    return hashlib.sha256(f"{connector}\0{key}\0{version}".encode("utf-8", "surrogatepass")).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # redirects are followed by Webhook._post, which decides what to forward


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or ""), parts.port or (443 if parts.scheme == "https" else 80)


class Webhook(Step):
    Options = WebhookOptions
    options: WebhookOptions

    _opener = urllib.request.build_opener(_NoRedirect)

    def process(self, record: Record, source: Source) -> Record:
        body = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8")
        key = idempotency_key(source.connector, source.key, source.version)
        delay = self.options.backoff.total_seconds()
        attempt = 0
        while True:
            status, detail, retry_after = self._post(body, key)
            if status is not None and (200 <= status < 300 or status == 303):
                return record
            retryable = status is None or status == 429 or status >= 500
            where = f"webhook {describe_url(self.options.url)}"
            if status in UNAVAILABLE:
                raise DestinationUnavailable(f"{where} answered {status}: it {UNAVAILABLE[status]} "
                                             f"({self._redact(detail)}); fix its URL or headers")
            if not retryable or attempt >= self.options.max_retries:
                what = f"answered {status}" if status is not None else "could not be reached"
                tries = f" after {attempt + 1} attempts" if retryable else ""
                raise DestinationError(f"{where} {what}{tries}: {self._redact(detail)}", transient=retryable)
            wait = retry_after if retry_after is not None else delay * (0.5 + random.random())
            time.sleep(min(wait, 60.0))
            delay = min(delay * 2, 30.0)
            attempt += 1

    def _post(self, body: bytes, key: str) -> tuple[int | None, str, float | None]:
        """One delivery, redirects included: (status or None, detail, Retry-After seconds)."""
        url = self.options.url
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": USER_AGENT}
            if _origin(url) == origin:
                headers.update({k: v.get_secret_value() for k, v in self.options.headers.items()})
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.options.timeout.total_seconds()) as response:
                    return response.status, "", None
            except urllib.error.HTTPError as exc:
                if exc.code in (301, 302, 307, 308) and exc.headers.get("Location"):
                    url = urljoin(url, exc.headers["Location"])
                    exc.close()
                    continue
                text = exc.read(500).decode("utf-8", "replace").strip() if exc.fp else ""
                exc.close()
                return exc.code, f"{exc.reason}" + (f": {text}" if text else ""), _retry_after(exc.headers)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                return None, str(reason), None
        return None, f"more than {MAX_REDIRECTS} redirects", None

    def _redact(self, text: str) -> str:
        """Masks header values (and the credentials of "Bearer <token>") a server echoed back."""
        return Redactor(h.get_secret_value() for h in self.options.headers.values()).mask(text)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
