"""Chunking by tokens of the embedding model's tokenizer, with overlap.

A section's text is cut into blocks (paragraphs: runs of lines between blank lines; a Markdown heading
starts a block and stays with the paragraph after it). Blocks are packed whole into chunks of at most
`max_tokens`; a block longer than that is cut between words. Each new chunk begins with the last
`overlap` tokens' worth of words of the chunk before it (within a section). Tokens are counted word by
word with the model's tokenizer (exact for WordPiece models such as all-MiniLM; within a few per cent for
byte-pair vocabularies), so chunking never runs the model.

Every chunk records where it came from: character offsets into the document's text (sections joined by
blank lines), the PDF page, the Markdown heading it falls under, and the section's own metadata.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from server.errors import BadRequest

from .readers import Section

CountTokens = Callable[[list[str]], list[int]]

_WORD = re.compile(r"\S+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_BLANK = re.compile(r"\n[ \t]*\n")


@dataclass
class Chunk:
    text: str
    start: int  # character offsets into the document's text
    end: int
    page: int | None = None
    heading: str | None = None
    metadata: dict = field(default_factory=dict)
    tokens: int = 0


@dataclass
class _Word:
    start: int
    end: int
    tokens: int
    block: int  # the block it belongs to
    heading: str | None


def document_text(sections: list[Section]) -> tuple[str, list[int]]:
    """The document's whole text (sections joined by blank lines) and where each section starts."""
    starts, pos = [], 0
    for s in sections:
        starts.append(pos)
        pos += len(s.text) + 2
    return "\n\n".join(s.text for s in sections), starts


def chunk(sections: list[Section], count: CountTokens, max_tokens: int, overlap: int) -> list[Chunk]:
    if max_tokens < 8:
        raise BadRequest("chunk_tokens must be at least 8")
    if not 0 <= overlap < max_tokens:
        raise BadRequest("chunk_overlap must be at least 0 and less than chunk_tokens")
    _, starts = document_text(sections)
    out: list[Chunk] = []
    for section, base in zip(sections, starts):
        words = _words(section.text, count)
        for first, last in _pack(words, max_tokens, overlap):
            start, end = words[first].start, words[last].end
            out.append(Chunk(text=section.text[start:end], start=base + start, end=base + end, page=section.page,
                             heading=words[first].heading if words[first].heading else words[last].heading,
                             metadata=dict(section.metadata),
                             tokens=sum(w.tokens for w in words[first:last + 1])))
    return out


def _words(text: str, count: CountTokens) -> list[_Word]:
    """The section's words, each with its token count, its block and the heading it falls under."""
    spans: list[tuple[int, int, int, str | None]] = []
    block, heading, pos = 0, None, 0
    for para in _BLANK.split(text):
        offset = text.index(para, pos) if para else pos
        pos = offset + len(para)
        lines = para.split("\n")
        line_start = offset
        opened = False
        for line in lines:
            match = _HEADING.match(line)
            if match:  # a heading opens a new block (the paragraph after it joins it)
                heading = match.group(2)
                if opened:
                    block += 1
            for w in _WORD.finditer(line):
                spans.append((line_start + w.start(), line_start + w.end(), block, heading))
                opened = True
            line_start += len(line) + 1
        if opened and not (lines and _HEADING.match(lines[-1] if lines[-1].strip() else lines[0]) and
                           len([x for x in lines if x.strip()]) == 1):
            block += 1  # a paragraph ends its block; a heading alone keeps it open for what follows
    unique = sorted({text[s:e] for s, e, _, _ in spans})
    sizes = dict(zip(unique, count(unique))) if unique else {}
    return [_Word(s, e, max(1, sizes[text[s:e]]), b, h) for s, e, b, h in spans]


def _pack(words: list[_Word], limit: int, overlap: int) -> list[tuple[int, int]]:
    """(first word, last word) of each chunk: whole blocks while they fit, long blocks cut between words,
    each chunk after the first starting with up to `overlap` tokens of the one before."""
    chunks: list[tuple[int, int]] = []
    i, n = 0, len(words)
    while i < n:
        first, used, j = i, 0, i
        while j < n and used + words[j].tokens <= limit:  # as many words as fit
            used += words[j].tokens
            j += 1
        if j == i:  # one word longer than a chunk: alone
            j = i + 1
        if j < n:  # end at a block boundary when one lies in the second half of the chunk
            for k in range(j - 1, i, -1):
                if words[k].block != words[k - 1].block:
                    if sum(w.tokens for w in words[i:k]) * 2 >= used:
                        j = k
                    break
        chunks.append((first, j - 1))
        if j >= n:
            break
        back, carried = j, 0  # the next chunk starts `overlap` tokens back
        while back - 1 > i and carried + words[back - 1].tokens <= overlap:
            back -= 1
            carried += words[back].tokens
        i = back
    return chunks
