"""Masking secret values wherever text leaves flexingest: logs, errors, stored messages.

One :class:`Redactor` per set of secrets; :func:`secret_parts` says which parts of a
secret could be quoted alone (the token of ``Bearer <token>``, a key file's private key,
a connection string's ``AccountKey``), so that those are masked too.
"""

from __future__ import annotations

import json
import threading
from typing import Iterable

MASK = "**********"
MIN_LENGTH = 4  # shorter values would mask ordinary words


def secret_parts(value: str) -> set[str]:
    """``value`` and the parts of it that may be quoted on their own."""
    found = {value}
    text = value.strip()
    if " " in text and not text.startswith("{"):  # "Bearer <token>", "Basic <credentials>"
        found.update(text.split(None, 1)[1:])
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for field in ("private_key", "private_key_id", "client_secret", "refresh_token"):
                item = data.get(field)
                if isinstance(item, str):
                    found.add(item)
                    found.update(line for line in item.splitlines() if len(line) >= 16)
    elif "=" in text and ";" in text:
        for part in text.split(";"):
            name, _, item = part.partition("=")
            if name.strip() in ("AccountKey", "SharedAccessSignature"):
                found.add(item)
    return {s for s in found if len(s) >= MIN_LENGTH}


class Redactor:
    """Replaces every known secret value in a text with ``**********`` (longest first)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        values = {part for secret in secrets if secret for part in secret_parts(secret)}
        with self._lock:
            self._secrets = tuple(sorted(set(self._secrets) | values, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
