"""Document collections over HTTP: `/api/collections…` (Corral's own API, in Ollama's style).

Only translates: wire types (server/api/retrieval_types.py) in and out; server/retrieval does the work.
Documents arrive as JSON (`text` or base64 `data`, with metadata) or as a multipart upload (file fields,
plus optional `metadata` (a JSON object) and `stream` fields). With `stream`, progress comes as NDJSON lines
like pull's, then the result line (or an `{"error"}` line); a client that leaves cancels the ingest, and
the document being written is left as it was.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.response import Stream

from ..retrieval.records import CollectionInfo, DocumentInfo, Hit
from ..retrieval.service import NewDocument, RetrievalService
from ..services import Services
from . import retrieval_types as rt
from .errors import raise_for, status_for
from .types import ErrorResponse
from .wire import APIError, decode, encode, json_response, rfc3339, until_complete

MAX_UPLOAD_FILES = 1000


def retrieval(request: Request) -> RetrievalService:
    services: Services = request.app.state.services
    return services.retrieval


async def _call(request: Request, work) -> Any:
    return await until_complete(request, work, None, raise_for)


def wire_collection(c: CollectionInfo) -> rt.Collection:
    return rt.Collection(name=c.name, embedding_model=c.embedding_model, dimensions=c.dimensions,
                         chunk_tokens=c.chunk_tokens, chunk_overlap=c.chunk_overlap, documents=c.documents,
                         chunks=c.chunks, created_at=rfc3339(c.created_at), metadata=c.metadata or None)


def wire_document(d: DocumentInfo) -> rt.Document:
    return rt.Document(id=d.id, name=d.name, format=d.format, digest=d.digest, characters=d.characters,
                       chunks=d.chunks, created_at=rfc3339(d.created_at), metadata=d.metadata or None)


def wire_hit(h: Hit) -> rt.SearchResult:
    return rt.SearchResult(document_id=h.document_id, document_name=h.document_name, text=h.text, score=h.score,
                           start=h.start, end=h.end, chunk_id=h.chunk_id, page=h.page, heading=h.heading,
                           metadata=h.metadata or None)


@get("/api/collections")
async def list_collections(request: Request) -> Response:
    found = await _call(request, retrieval(request).list_collections())
    return json_response(rt.CollectionListResponse(collections=[wire_collection(c) for c in found]))


@post("/api/collections", status_code=200)
async def create_collection(request: Request) -> Response:
    req = await decode(request, rt.CollectionCreateRequest)
    info = await _call(request, retrieval(request).create_collection(
        req.name, req.embedding_model, req.chunk_tokens, req.chunk_overlap, req.metadata))
    return json_response(wire_collection(info))


@get("/api/collections/{name:str}")
async def show_collection(request: Request, name: str) -> Response:
    return json_response(wire_collection(await _call(request, retrieval(request).collection(name))))


@delete("/api/collections/{name:str}", status_code=200)
async def delete_collection(request: Request, name: str) -> Response:
    await _call(request, retrieval(request).delete_collection(name))
    return Response(content=b"", status_code=200)


def _document(item: rt.DocumentInput, i: int) -> NewDocument:
    if (item.text is None) == (item.data is None):
        raise APIError(400, f"documents[{i}]: give either text or data (base64)")
    if item.data is not None:
        try:
            data = base64.b64decode(item.data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"documents[{i}].data is not valid base64") from None
    else:
        data = item.text.encode("utf-8")
    return NewDocument(data=data, name=item.name or "", id=item.id or "", format=item.format or "",
                       metadata=item.metadata or {})


async def _uploads(request: Request) -> tuple[list[NewDocument], bool]:
    try:
        form = await request.form()
    except Exception as exc:  # a malformed multipart body
        raise APIError(400, f"invalid multipart body: {exc}") from None
    metadata: dict = {}
    if "metadata" in form:
        try:
            metadata = json.loads(form.get("metadata"))
        except (TypeError, ValueError):
            metadata = None
        if not isinstance(metadata, dict):
            raise APIError(400, "the metadata field must be a JSON object")
    stream = str(form.get("stream", "false")).lower() in ("1", "true", "yes")
    docs = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            docs.append(NewDocument(data=await value.read(), name=value.filename or key,
                                    media_type=value.content_type or "", metadata=dict(metadata)))
    if not docs:
        raise APIError(400, "no files in the upload")
    if len(docs) > MAX_UPLOAD_FILES:
        raise APIError(400, f"at most {MAX_UPLOAD_FILES} files in one upload")
    return docs, stream


@post("/api/collections/{name:str}/documents", status_code=200)
async def add_documents(request: Request, name: str) -> Response | Stream:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        docs, stream = await _uploads(request)
    else:
        req = await decode(request, rt.DocumentsAddRequest)
        if not req.documents:
            raise APIError(400, "documents must hold at least one document")
        docs, stream = [_document(d, i) for i, d in enumerate(req.documents)], req.stream
    svc = retrieval(request)
    await _call(request, svc.collection(name))  # an unknown collection is a 404 before any line
    if not stream:
        added = await _call(request, svc.add_documents(name, docs))
        return json_response(_added(added))
    return Stream(content=_streamed(svc, name, docs), media_type="application/x-ndjson")


def _added(added) -> rt.DocumentsAddResponse:
    return rt.DocumentsAddResponse(status="success", documents=[
        rt.AddedDocument(id=a.document.id, name=a.document.name, status=a.status, chunks=a.document.chunks)
        for a in added])


async def _streamed(svc: RetrievalService, name: str, docs: list[NewDocument]) -> AsyncIterator[bytes]:
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(line: dict) -> None:
        lines.put_nowait(encode(rt_progress(line)) + b"\n")

    async def run() -> None:
        try:
            lines.put_nowait(encode(_added(await svc.add_documents(name, docs, progress))) + b"\n")
        except Exception as exc:
            lines.put_nowait(encode(ErrorResponse(error=status_for(exc)[1])) + b"\n")
        finally:
            lines.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        while (line := await lines.get()) is not None:
            yield line
    finally:  # the client left: the ingest is cancelled, the document under way left as it was
        task.cancel()
        await asyncio.wait({task})


def rt_progress(line: dict):
    from .types import ProgressResponse

    return ProgressResponse(status=line["status"], completed=line.get("completed"), total=line.get("total"))


@get("/api/collections/{name:str}/documents")
async def list_documents(request: Request, name: str, offset: int = 0, limit: int = 1000) -> Response:
    if offset < 0 or not 1 <= limit <= 10000:
        raise APIError(400, "offset must be at least 0 and limit between 1 and 10000")
    docs = await _call(request, retrieval(request).list_documents(name, offset, limit))
    return json_response(rt.DocumentListResponse(documents=[wire_document(d) for d in docs]))


def _document_id(request: Request, name: str, routed: str) -> str:
    """A document id may hold '/' (ids default to names, which may be paths): the routes take the rest of the
    path (`{document_id:path}`; nothing else lives under …/documents/). Routing drops empty segments (a
    leading, trailing or doubled '/'), so the id is read from the raw path when it has one and agrees:
    `…/documents//abs/notes.md` or `…/documents/%2Fabs%2Fnotes.md` addresses the id `/abs/notes.md`."""
    raw = request.scope.get("raw_path")
    if raw:
        path = unquote(raw.decode("latin-1"))  # as the server decodes `path`
        prefix = f"/api/collections/{name}/documents/"
        at = path.find(prefix)
        if at >= 0:
            exact = path[at + len(prefix):]
            if "/".join(p for p in exact.split("/") if p) == routed.strip("/"):
                return exact
    return routed.strip("/")


@get("/api/collections/{name:str}/documents/{document_id:path}")
async def show_document(request: Request, name: str, document_id: str) -> Response:
    document_id = _document_id(request, name, document_id)
    return json_response(wire_document(await _call(request, retrieval(request).document(name, document_id))))


@delete("/api/collections/{name:str}/documents/{document_id:path}", status_code=200)
async def delete_document(request: Request, name: str, document_id: str) -> Response:
    document_id = _document_id(request, name, document_id)
    await _call(request, retrieval(request).delete_document(name, document_id))
    return Response(content=b"", status_code=200)


@post("/api/collections/{name:str}/search", status_code=200)
async def search(request: Request, name: str) -> Response:
    req = await decode(request, rt.SearchRequest)
    hits = await _call(request, retrieval(request).search(name, req.query, req.k, req.mode, req.filters, req.rerank,
                                                          req.candidates))
    return json_response(rt.SearchResponse(results=[wire_hit(h) for h in hits]))


ROUTES = [list_collections, create_collection, show_collection, delete_collection, add_documents, list_documents,
          show_document, delete_document, search]
