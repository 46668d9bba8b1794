"""Document readers: bytes of a file → the text to chunk, in sections that carry a page or a record's
metadata. Formats: plain text, Markdown, HTML (the main text: scripts, styles, navigation, headers and
footers left out; headings become Markdown headings so chunking keeps them with their paragraphs), PDF
(text per page, pypdf) and JSONL (one record per line: its `text` field, the other fields as metadata).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePath

from server.errors import BadRequest

from .errors import require

FORMATS = ("text", "markdown", "html", "pdf", "jsonl")
_SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
             ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_MEDIA_TYPES = {"text/plain": "text", "text/markdown": "markdown", "text/html": "html", "application/pdf": "pdf",
                "application/jsonl": "jsonl", "application/x-ndjson": "jsonl", "application/x-jsonlines": "jsonl"}


@dataclass
class Section:
    text: str
    page: int | None = None  # 1-based PDF page
    metadata: dict = field(default_factory=dict)  # a JSONL record's fields besides its text


def detect_format(name: str = "", media_type: str = "", data: bytes = b"") -> str:
    """The format from an explicit name, a file name's suffix, a media type, or the bytes themselves."""
    if name in FORMATS:
        return name
    suffix = PurePath(name).suffix.lower() if name else ""
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    base = media_type.split(";")[0].strip().lower()
    if base in _MEDIA_TYPES:
        return _MEDIA_TYPES[base]
    if data.startswith(b"%PDF-"):
        return "pdf"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def read(data: bytes, fmt: str) -> list[Section]:
    """The sections of a document; BadRequest for bytes that are not what the format says."""
    if fmt == "pdf":
        return _pdf(data)
    text = _text(data)
    if fmt == "html":
        return [Section(html_text(text))]
    if fmt == "jsonl":
        return _jsonl(text)
    if fmt not in FORMATS:
        raise BadRequest(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return [Section(text.replace("\r\n", "\n"))]


def _text(data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise BadRequest("the document is binary, not text (formats: text, Markdown, HTML, PDF, JSONL)")
    return data.decode("utf-8-sig", errors="replace")


def _pdf(data: bytes) -> list[Section]:
    pypdf = require("pypdf", "reading PDF documents")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [Section((page.extract_text() or "").strip(), page=i + 1) for i, page in enumerate(reader.pages)]
    except Exception as exc:  # pypdf raises many kinds for a damaged file
        raise BadRequest(f"cannot read the PDF: {exc}") from None
    return [p for p in pages if p.text]


def _jsonl(text: str) -> list[Section]:
    sections = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise BadRequest(f"JSONL line {number} is not JSON: {exc}") from None
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict) or not isinstance(record.get("text", record.get("content")), str):
            raise BadRequest(f"JSONL line {number}: expected an object with a string \"text\" field")
        body = record.pop("text") if isinstance(record.get("text"), str) else record.pop("content")
        sections.append(Section(body, metadata={"line": number, **{k: v for k, v in record.items()
                                                                    if isinstance(v, (str, int, float, bool))}}))
    return sections


# ---- HTML ------------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg",
         "iframe", "head", "button", "select"}
_BLOCKS = {"p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "blockquote", "pre",
           "br", "hr", "dd", "dt", "figcaption", "h1", "h2", "h3", "h4", "h5", "h6", "title"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _MainText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.parts: list[str] = []
        self.main: list[str] | None = None  # text inside <main> or <article>, preferred when present
        self.main_depth = 0

    def _out(self) -> list[str]:
        return self.main if self.main is not None and self.main_depth else self.parts

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _VOID:
            if tag in _BLOCKS:
                self._out().append("\n")
            return
        if tag in _SKIP:
            self.skip += 1
        elif tag in ("main", "article"):
            if self.main is None:
                self.main = []
            self.main_depth += 1
        if not self.skip and tag in _BLOCKS:
            self._out().append("\n\n")
            if tag[0] == "h" and tag[1:].isdigit():
                self._out().append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCKS and not self.skip:
            self._out().append("\n\n")
        if tag in ("main", "article") and self.main_depth:
            self._out().append("\n\n")
            self.main_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self._out().append(data)


def html_text(html: str) -> str:
    """The main text of an HTML page: paragraphs separated by blank lines, headings as Markdown."""
    parser = _MainText()
    parser.feed(html)
    parser.close()
    raw = "".join(parser.main if parser.main else parser.parts)
    blocks = (re.sub(r"[ \t\r\f\v]*\n[ \t\r\f\v]*", " ", re.sub(r"[ \t]+", " ", b)).strip()
              for b in re.split(r"\n\s*\n", raw))
    return "\n\n".join(b for b in blocks if b)
