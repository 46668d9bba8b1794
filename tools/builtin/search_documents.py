"""`search_documents`: hybrid search in a document collection (server/retrieval), returning the best
chunks with citations (document, page, character range, score, quote)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..results import Citation, ToolResult
from ..tool import ToolError, tool


class SearchDocumentsArgs(BaseModel):
    collection: str = Field(description="The document collection to search", min_length=1, max_length=64)
    query: str = Field(description="What to look for, in words", min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=50, description="How many passages to return")


@tool(input=SearchDocumentsArgs, timeout=120)
async def search_documents(args: SearchDocumentsArgs, ctx) -> ToolResult:
    """Search a document collection for passages relevant to a query. Returns the best passages, each
    numbered with its source document (and page), to quote and cite in an answer."""
    from server.errors import BadRequest, NotFound

    retrieval = getattr(ctx.services, "retrieval", None)
    if retrieval is None:
        raise ToolError("document collections are not available in this process")
    try:
        hits = await retrieval.search(args.collection, args.query, k=args.k)
    except (NotFound, BadRequest) as exc:  # an unknown collection, the extra missing
        raise ToolError(str(exc)) from None
    citations, parts = [], []
    for i, h in enumerate(hits, 1):
        where = f"page {h.page}, " if h.page else ""
        location = f"{where}characters {h.start}-{h.end}"
        citations.append(Citation(source=h.document_name, location=location, score=h.score, quote=h.text))
        parts.append(f"[{i}] {h.document_name} ({location})\n{h.text}")
    results = [{"document_id": h.document_id, "document": h.document_name, "page": h.page, "start": h.start,
                "end": h.end, "heading": h.heading, "score": h.score, "text": h.text} for h in hits]
    return ToolResult(text="\n\n".join(parts) or "no passages found", json={"results": results},
                      citations=citations)
