"""API keys: where they come from, and how a request's key is checked.

Keys come from ``FLEXINGEST_API_KEYS`` (comma-separated) and ``--api-key-file`` (one a line,
``#`` comments and blank lines ignored). A request's ``X-API-KEY`` is compared with every
key in constant time (:func:`hmac.compare_digest`), so that the time of an answer says
nothing of how much of a key was right.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from ..exceptions import FlexingestError

HEADER = "X-API-KEY"


def load_keys(env_value: str | None, file: str | os.PathLike[str] | None) -> list[str]:
    """The keys of ``FLEXINGEST_API_KEYS`` and of a key file; FlexingestError for a file that cannot be used."""
    keys = [k.strip() for k in (env_value or "").split(",") if k.strip()]
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise FlexingestError(f"--api-key-file {path}: cannot read it ({why})") from None
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise FlexingestError(f"--api-key-file {path}: no key in it (one key a line; '#' starts a comment)")
        keys += found
    for key in keys:
        if not key.isascii() or not key.isprintable() or " " in key:
            raise FlexingestError("an API key must be printable ASCII without spaces (it travels in an HTTP header)")
    return list(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Keys:
    """The configured keys; empty means no authentication (loopback only)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def accepts(self, given: str | None) -> bool:
        """Whether ``given`` (a header value, as Starlette decodes it: latin-1) is one of the keys."""
        if not self._keys:
            return True
        if given is None:
            return False
        raw = given.encode("latin-1", "replace")
        found = False
        for key in self._keys:  # every key compared, whichever matches
            found |= hmac.compare_digest(raw, key)
        return found
