"""PDF through pypdfium2 (PDFium): text per page, metadata, OCR of pages with no text.

PDFium is not thread-safe: one document at a time per process (:data:`LOCK`); steps run
in several threads, so parallel extraction needs processes. Pages without a text layer
are rendered (grey, ``ocr_dpi``) while the lock is held and read by tesseract after it is
released, so OCR of one document does not stop the others from being parsed.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import threading
from typing import IO, Any

from ..exceptions import UnprocessableObject
from . import Extracted, Settings, blank, clean, clean_value, join_pages

LOCK = threading.Lock()
MAX_PIXELS = 60_000_000  # a rendered page for OCR: about A0 at 300 dpi
_FIELDS = {"Title": "title", "Author": "author", "Subject": "subject", "Keywords": "keywords",
           "Creator": "creator", "Producer": "producer", "CreationDate": "created", "ModDate": "modified"}
_DATE = re.compile(r"D?:?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?\s*([Zz]|[+-]\d{2}'?\d{2}?'?)?")


def read_pdf(stream: IO[bytes], settings: Settings) -> Extracted:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pages: list[str] = []
    to_ocr: list[tuple[int, str]] = []
    metadata: dict[str, Any] = {}
    tmp: str | None = None
    try:
        with LOCK:
            try:
                doc = pdfium.PdfDocument(_input(stream), password=settings.password, autoclose=False)
            except pdfium.PdfiumError as exc:
                raise _open_error(exc, settings) from None
            try:
                count = len(doc)
                metadata["pages"] = count
                for name, value in doc.get_metadata_dict(skip_empty=True).items():
                    if name in _FIELDS and value.strip("\x00 "):
                        field = _FIELDS[name]
                        metadata[field] = _date(value) if field in ("created", "modified") else clean_value(value)
                if settings.password:
                    metadata["encrypted"] = True
                total = 0
                for index in range(count):
                    page = doc[index]
                    try:
                        text = ""
                        if settings.ocr != "always":
                            textpage = page.get_textpage()
                            try:
                                text = textpage.get_text_bounded().replace("\x02", "")
                            finally:
                                textpage.close()
                        if settings.ocr != "never" and blank(text) and (
                                settings.ocr == "always" or pdfium_c.FPDFPage_CountObjects(page.raw) > 0):
                            tmp = tmp or tempfile.mkdtemp(prefix="flexingest-pdf-")  # only for OCR
                            path = os.path.join(tmp, f"page-{index + 1}.pgm")
                            _render(page, path, settings)
                            to_ocr.append((index, path))
                    finally:
                        page.close()
                    pages.append(text)
                    total += len(text)
                    if total > settings.max_chars:
                        break
            except pdfium.PdfiumError as exc:
                raise UnprocessableObject(f"cannot read PDF: {exc}; the object's bytes will not change on retry") \
                    from None
            finally:
                doc.close()
        if to_ocr:
            from .ocr import recognize

            for index, path in to_ocr:
                pages[index] = recognize(path, settings)
                os.unlink(path)
            metadata["ocr_pages"] = [index + 1 for index, _ in to_ocr]
            metadata["ocr_languages"] = settings.ocr_languages
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    text, offsets = join_pages(pages)  # cleaned here, once
    metadata["page_offsets"] = offsets
    return Extracted(text, metadata, cleaned=True)


def _input(stream: IO[bytes]) -> Any:
    """An object read whole (below ``Source.SMALL``) as bytes: PDFium reads memory without
    a Python callback per block. A larger one streams (the version read stays the one noted)."""
    if isinstance(stream, io.BytesIO):
        return stream.getvalue()
    return stream


def _open_error(exc: Exception, settings: Settings) -> UnprocessableObject:
    import pypdfium2.raw as pdfium_c

    if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
        if settings.password is None:
            return UnprocessableObject("the PDF is encrypted with a password: give it as the step option "
                                       "`password`; without it the PDF will not open on retry either")
        return UnprocessableObject("the PDF is encrypted and the step's `password` does not open it; "
                                   "it will not open on retry either")
    return UnprocessableObject(f"cannot read PDF: {exc}; the object's bytes will not change on retry")


def _render(page: Any, path: str, settings: Settings) -> None:
    from .ocr import write_pgm

    width, height = page.get_size()
    scale = settings.ocr_dpi / 72
    if width * height * scale * scale > MAX_PIXELS:
        scale = (MAX_PIXELS / max(width * height, 1.0)) ** 0.5
    bitmap = page.render(scale=scale, grayscale=True)
    try:
        write_pgm(path, bitmap.width, bitmap.height, bitmap.stride, memoryview(bitmap.buffer).cast("B"))
    finally:
        bitmap.close()


def _date(value: str) -> str:
    """A PDF date (``D:20220415093243+02'00'``) in ISO 8601, or the value as it is."""
    m = _DATE.fullmatch(value.strip().strip("\x00"))
    if m is None:
        return clean(value).strip()
    year, month, day, hour, minute, second, zone = m.groups()
    text = f"{year}-{month or '01'}-{day or '01'}"
    if hour:
        text += f"T{hour}:{minute or '00'}:{second or '00'}"
        if zone:
            if zone in "Zz":
                text += "Z"
            else:
                digits = zone.replace("'", "")
                text += f"{digits[:3]}:{digits[3:5] or '00'}"
    return text
