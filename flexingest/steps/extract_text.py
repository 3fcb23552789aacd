"""``extract_text``: text and metadata of documents, through :mod:`flexingest.extract`.

The type comes from the content first (magic bytes, a zip's members), then from the key's
extension. Compressed objects are decompressed as a stream, bounded by
``max_decompressed``. Text is cut at ``max_chars`` (``metadata.truncated``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import ByteSize, Field

from ..exceptions import ObjectSkipped, UnprocessableObject
from ..extract import SUPPORTED, Settings, UnsupportedType, extract
from ..objects import Source
from ..units import Duration, Size
from . import Record, Step, StepContext, StepOptions

_HINTS = {
    "zip": "a zip archive: put an `unpack` step before extract_text to read its members",
    "tar": "a tar archive: put an `unpack` step before extract_text to read its members",
    "ole": "a legacy binary Office file (.doc/.xls/.ppt) or an encrypted Office document",
    "image": "an image, whose text needs OCR (ocr: auto, with tesseract installed)",
}


class ExtractTextOptions(StepOptions):
    on_unsupported: Literal["fail", "skip"] = Field(
        "fail", description="an object of another type fails (default) or is skipped and recorded done")
    max_chars: int = Field(10_000_000, ge=1, description="text beyond this is cut (metadata.truncated)")
    max_bytes: Size = Field(ByteSize(256 * 1024 * 1024),
                            description="documents read whole (PDF, Office, EPUB, EML, RTF) larger than this fail")
    max_decompressed: Size = Field(ByteSize(256 * 1024 * 1024),
                                   description="a gzip/bz2/xz/zstd object, or a document's zip members, "
                                               "expanding beyond this fail (bomb guard)")
    password: str | None = Field(None, description="opens encrypted PDFs")
    ocr: Literal["auto", "never", "always"] | None = Field(
        None, description="auto: OCR of images and of PDF pages without text (the default when tesseract "
                          "is installed); never (the default without it); always: every page")
    ocr_languages: str = Field("eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$",
                               description="tesseract languages, e.g. eng+deu")
    ocr_timeout: Duration = Field(timedelta(minutes=2), description="one page's OCR is killed after this")


class ExtractText(Step):
    Options = ExtractTextOptions
    options: ExtractTextOptions

    def __init__(self, options: ExtractTextOptions, context: StepContext) -> None:
        super().__init__(options, context)
        from ..extract import ocr

        mode = options.ocr or ("auto" if ocr.tesseract() else "never")
        ocr.check(mode, options.ocr_languages)
        self.settings = Settings(
            max_chars=options.max_chars, max_bytes=int(options.max_bytes),
            max_decompressed=int(options.max_decompressed), password=options.password, ocr=mode,
            ocr_languages=options.ocr_languages, ocr_timeout=options.ocr_timeout.total_seconds())

    def process(self, record: Record, source: Source) -> Record:
        try:
            with source.open() as stream:
                result = extract(stream, source.key, self.settings, size=source.size,
                                 content_type=getattr(source, "content_type", None))
        except UnsupportedType as exc:
            what = _HINTS.get(exc.kind or "", "")
            message = (f"unsupported type for extract_text: {source.key!r}" + (f" is {what}" if what else "")
                       + f" (supported: {SUPPORTED})")
            if self.options.on_unsupported == "skip":
                raise ObjectSkipped(message) from None
            raise UnprocessableObject(message + "; it will not change on retry") from None
        text, metadata = result.text, result.metadata
        if len(text) > self.options.max_chars:
            text = text[: self.options.max_chars]
            metadata["truncated"] = True
        record["text"] = text
        record["metadata"] = {**record.get("metadata", {}), **metadata}
        return record
