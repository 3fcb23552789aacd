"""What people see on stderr: logs (text or JSON), secret masking, and the progress bar.

Used by :mod:`flexingest.cli` only. The cloud SDKs' loggers stay at WARNING whatever
the verbosity (their debug output prints request headers), and every line passes a
filter that masks the pipeline's secret values wherever they appear.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from .redact import Redactor

NOISY_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "gcsfs", "adlfs", "azure", "urllib3",
                 "google", "google_auth_httplib2", "aiohttp", "fsspec", "asyncio", "msal", "pypdfium2", "PIL",
                 "distributed", "dask", "tornado", "bokeh")
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def printable(text: str) -> str:
    """Control characters (and lone surrogates) escaped: a line never drives the terminal, and
    an object key with a newline cannot forge a second log line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """``time LEVEL message``, the message made printable (keys come from buckets)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)


class SecretFilter(logging.Filter):
    """Masks known secret values in a record's final message and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor = Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor:
            return True
        message = self.mask(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = self.mask(formatter.formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.mask(value))
        return True

    def mask(self, text: str) -> str:
        return self.redactor.mask(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_text or record.exc_info:
            out["traceback"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, ensure_ascii=False, default=str)


def error_json(message: str, **fields: Any) -> str:
    """An error of the command line as one JSON log line, shaped like :class:`JsonFormatter`'s."""
    out: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": "error", "logger": "flexingest", "message": message, **fields}
    return json.dumps(out, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines, first clearing the progress bar's line if one is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        with _screen:
            if _bar.drawn:
                self.stream.write("\r\033[K")
                _bar.drawn = False
            super().emit(record)


_screen = threading.RLock()
secret_filter = SecretFilter()


def setup_logging(verbosity: int = 0, fmt: str = "text", stream: TextIO | None = None) -> None:
    """-q: warnings and errors; default: info; -v: debug of flexingest; never SDK debug."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _Handler(stream or sys.stderr)
    handler.addFilter(secret_filter)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _Handler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # gcsfs logs every exhausted retry as a full traceback; flexingest reports the error itself
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    logging.getLogger("apscheduler").setLevel(logging.WARNING if verbosity < 2 else logging.INFO)
    # uvicorn (run --http): its start and stop lines and the access log (paths, never headers) with -v
    logging.getLogger("uvicorn").setLevel(logging.WARNING if verbosity < 1 else logging.INFO)
    logging.captureWarnings(True)


def add_secrets(values: set[str]) -> None:
    secret_filter.redactor.add(values)


class _Bar:
    drawn = False


_bar = _Bar()


class ProgressBar:
    """``name [#####.....] 120/450 objects  12.3 MB  45/s`` on a terminal; nothing elsewhere."""

    def __init__(self, name: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, nbytes: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        width = 24
        filled = int(width * done / total) if total else width
        rate = done / max(now - self.started, 1e-6)
        line = (f"{self.name} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} objects  "
                f"{human_bytes(nbytes)}  {rate:.0f}/s")
        with _screen:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            _bar.drawn = True

    def close(self) -> None:
        if self.enabled:
            with _screen:
                if _bar.drawn:
                    self.stream.write("\r\033[K")
                    self.stream.flush()
                    _bar.drawn = False


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def progress_bars(*, quiet: bool) -> Callable[[str], ProgressBar | None]:
    """A maker of progress bars for passes: a bar on a terminal (unless ``quiet``), else None."""

    def make(name: str) -> ProgressBar | None:
        if quiet:
            return None
        bar = ProgressBar(name)
        return bar if bar.enabled else None

    return make
