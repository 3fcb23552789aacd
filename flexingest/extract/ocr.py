"""OCR with Tesseract (the ``tesseract`` program, run as a child process).

The program is found on ``PATH``; its language packs are listed once per process. Each run
is single-threaded (``OMP_THREAD_LIMIT=1``: objects are already processed in parallel), in
its own process group, and the whole group is killed when it outlasts ``ocr_timeout``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
from typing import IO

from ..exceptions import StepError, UnprocessableObject
from . import Extracted, Settings

INSTALL = "apt-get install tesseract-ocr"


@functools.cache
def tesseract() -> str | None:
    """The path of the tesseract program, or None when it is not installed."""
    return shutil.which("tesseract")


@functools.cache
def languages() -> frozenset[str]:
    """The language packs tesseract has (``eng``, ``deu``, ...)."""
    program = tesseract()
    if program is None:
        return frozenset()
    proc = subprocess.run([program, "--list-langs"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    lines = (proc.stdout + proc.stderr).splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and " " not in line.strip())


def check(mode: str, langs: str) -> None:
    """Raise StepError when ``mode``/``langs`` cannot be honoured on this machine."""
    if mode == "never":
        return
    if tesseract() is None:
        if mode == "always":
            raise StepError(f"extract_text has ocr: always, but the tesseract program is not installed "
                            f"(on Debian or Ubuntu: {INSTALL})")
        return
    missing = [lang for lang in langs.split("+") if lang not in languages()]
    if missing:
        packs = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
        raise StepError(f"extract_text ocr_languages names {'+'.join(missing)}, which tesseract does not have "
                        f"(installed: {'+'.join(sorted(languages() - {'osd'}))}; on Debian: apt-get install {packs})")


def recognize(path: str, settings: Settings) -> str:
    """The text tesseract reads in the image file at ``path``."""
    program = tesseract()
    if program is None:
        raise StepError(f"OCR needs the tesseract program ({INSTALL})")
    argv = [program, path, "stdout", "-l", settings.ocr_languages]
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=settings.ocr_timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise StepError(f"OCR timed out after {settings.ocr_timeout:g}s (ocr_timeout)") from None
    except BaseException:
        _kill(proc)
        raise
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-500:]
        raise UnprocessableObject(f"tesseract cannot read the image (exit status {proc.returncode}): {tail}")
    return out.decode("utf-8", "replace")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_image(stream: IO[bytes], settings: Settings) -> Extracted:
    """PNG, JPEG or TIFF (every frame) through tesseract."""
    if settings.ocr == "never":
        raise UnprocessableObject("an image has text only through OCR, and ocr is never "
                                  f"(set ocr: auto, with tesseract installed: {INSTALL})")
    stream.seek(0)
    with tempfile.NamedTemporaryFile(prefix="flexingest-ocr-") as tmp:
        shutil.copyfileobj(stream, tmp, 1 << 20)
        tmp.flush()
        text = recognize(tmp.name, settings)
    pages = [page for page in text.split("\x0c")]
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()
    from . import join_pages

    joined, offsets = join_pages(pages)
    return Extracted(joined, {"ocr": True, "ocr_pages": list(range(1, len(pages) + 1)), "pages": len(pages),
                              "page_offsets": offsets, "ocr_languages": settings.ocr_languages}, cleaned=True)


def write_pgm(path: str, width: int, height: int, stride: int, buffer: memoryview) -> None:
    """A grey-scale bitmap (one byte a pixel) as a binary PGM file, which tesseract reads."""
    with open(path, "wb") as out:
        out.write(f"P5\n{width} {height}\n255\n".encode("ascii"))
        if stride == width:
            out.write(buffer[: width * height])
        else:
            for row in range(height):
                out.write(buffer[row * stride: row * stride + width])
