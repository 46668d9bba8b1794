"""Grounded chat without an agent: `/api/chat` and `/v1/chat/completions` with `options.collections`
(a collection name or a list of them; `options.collections_k` chunks, default 4).

The last user message is searched for in each collection (hybrid search), the best chunks, fused across
collections by reciprocal rank, go into a system message as numbered sources with the instruction to
answer from them and cite them as [n], and the answer ends with a `Sources:` list naming each source's
document, page and character range, so a client sees the citations whatever the model does with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from server.errors import BadRequest
from server.messages import Message, message_dict

from .fusion import reciprocal_rank_fusion
from .records import Hit

if TYPE_CHECKING:
    from server.inference import ChatParams

    from .service import RetrievalService

DEFAULT_K = 4
MAX_COLLECTIONS = 16
INSTRUCTION = ("Answer the user's question using only the numbered sources below. Cite the sources you use "
               "as [1], [2] and so on. If the sources do not hold the answer, say that they do not.")


def _collections(value) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise BadRequest("options.collections must be a collection name or a list of names")
    if len(names) > MAX_COLLECTIONS:
        raise BadRequest(f"options.collections: at most {MAX_COLLECTIONS} collections")
    return names


def _k(value) -> int:
    if value is None:
        return DEFAULT_K
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= int(value) <= 20:
        raise BadRequest("options.collections_k must be a number from 1 to 20")
    return int(value)


def cite(number: int, hit: Hit) -> str:
    """`[n] name, page p, characters a-b`: where a source came from."""
    where = [hit.document_name]
    if hit.page:
        where.append(f"page {hit.page}")
    where.append(f"characters {hit.start}-{hit.end}")
    return f"[{number}] " + ", ".join(where)


async def grounded_chat(service: "RetrievalService", params: "ChatParams") -> AsyncIterator:
    from server.inference import Delta, Final

    options = dict(params.options or {})
    names = _collections(options.pop("collections"))
    k = _k(options.pop("collections_k", None))
    messages = [message_dict(m) for m in params.messages]
    question = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    hits: list[Hit] = []
    if question.strip():
        rankings = [await service.search(name, question, k=k) for name in names]
        hits = reciprocal_rank_fusion(rankings, k) if len(rankings) > 1 else rankings[0]
    else:
        for name in names:  # unknown collections are still an error
            await service.collection(name)
    sources = "\n\n".join(f"{cite(i, h)}\n{h.text}" for i, h in enumerate(hits, 1)) or "(no sources were found)"
    system = Message("system", f"{INSTRUCTION}\n\nSources:\n\n{sources}")
    grounded = dataclasses.replace(params, messages=[system, *messages], options=options)
    async for item in service.inference.chat(grounded):
        if isinstance(item, Final) and hits:
            yield Delta(content="\n\nSources:\n" + "\n".join(cite(i, h) for i, h in enumerate(hits, 1)))
        yield item
