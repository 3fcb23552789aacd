"""EML (RFC 5322 messages): headers as metadata, the body as text, attachments listed.

The body is the text/plain part, else the text/html part as text. Attachments are listed
(name, content type, size) but not read.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage, MIMEPart
from typing import IO, Any

from ..exceptions import UnprocessableObject
from . import Extracted, Settings, clean_value
from .markup import html_to_text


def read_eml(stream: IO[bytes], settings: Settings) -> Extracted:
    stream.seek(0)
    raw = stream.read(settings.max_bytes + 1)
    if len(raw) > settings.max_bytes:
        raise UnprocessableObject(f"EML larger than max_bytes ({settings.max_bytes}): it is parsed whole")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not message.keys():
        raise UnprocessableObject("cannot read EML: no message headers")
    metadata: dict[str, Any] = {}
    for header in ("from", "to", "cc", "subject", "message-id"):
        value = message.get(header)
        if value is not None:
            metadata[header.replace("-", "_")] = clean_value(str(value))
    if message.get("date"):
        try:
            metadata["date"] = email.utils.parsedate_to_datetime(str(message["date"])).isoformat()
        except (TypeError, ValueError):
            metadata["date"] = clean_value(str(message["date"]))
    text = ""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None:
        content = _content(body)
        if body.get_content_subtype() == "html":
            content, _ = html_to_text(content)
        text = content
    attachments = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        attachments.append({"name": clean_value(part.get_filename() or ""),
                            "content_type": part.get_content_type(),
                            "size": len(payload) if isinstance(payload, bytes) else 0})
    if attachments:
        metadata["attachments"] = attachments
    return Extracted(text.strip(), metadata)


def _content(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, UnicodeDecodeError, ValueError):  # an unknown or wrong charset
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""
