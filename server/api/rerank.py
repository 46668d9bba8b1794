"""Rerank over HTTP: `/rerank` and `/v1/rerank` (llama-server's and Jina's shape; errors in OpenAI's shape,
as llama-server gives them; a body with TEI's `texts` instead of `documents` gets TEI's bare array, as
llama-server answers it) and `/v2/rerank` (Cohere's shape; errors as Cohere's `{"message"}`).

Only translates; `RetrievalService.rerank` (server/retrieval/service.py) scores with the model.
"""

from __future__ import annotations

import uuid

import msgspec

from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from ..services import Services
from . import retrieval_types as rt
from .errors import raise_for, status_for
from .openai_common import _on_api_error, _on_unexpected, error_body, http_error
from .wire import APIError, decode, json_response, until_complete


def _texts(documents: list) -> list[str]:
    out = []
    for i, d in enumerate(documents):
        text = d.get("text") if isinstance(d, dict) else d
        if not isinstance(text, str):
            raise APIError(400, f"documents[{i}] must be a string or an object with a string \"text\"",
                           param=f"documents[{i}]")
        out.append(text)
    return out


async def _rerank(request: Request) -> tuple[rt.RerankRequest, list[str], list[rt.RerankResult], int]:
    req = await decode(request, rt.RerankRequest)
    if req.documents is None:
        req.documents = req.texts
    if not req.documents:
        raise APIError(400, "documents must hold at least one document", param="documents")
    if req.top_n is not None and req.top_n < 1:
        raise APIError(400, "top_n must be at least 1", param="top_n")
    if not req.model:
        raise APIError(400, "model is required", param="model")
    texts = _texts(req.documents)
    services: Services = request.app.state.services
    ranked, tokens = await until_complete(request, services.retrieval.rerank(req.model, req.query, texts, req.top_n),
                                          None, raise_for)
    results = [rt.RerankResult(index=r.index, relevance_score=r.score,
                               document=rt.RerankDocument(texts[r.index]) if req.return_documents else None)
               for r in ranked]
    return req, texts, results, tokens


_OPENAI_ERRORS = {APIError: _on_api_error, HTTPException: http_error, Exception: _on_unexpected}


@post(["/rerank", "/v1/rerank"], status_code=200, exception_handlers=_OPENAI_ERRORS)
async def rerank(request: Request) -> Response:
    req, texts, results, tokens = await _rerank(request)
    if req.texts is not None:  # TEI's form, as llama-server tells it: the body names `texts`
        return json_response([rt.TeiRerankResult(index=r.index, score=r.relevance_score,
                                                 text=texts[r.index] if req.return_text else None)
                              for r in results])
    return json_response(rt.RerankResponse(model=req.model, object="list", results=results,
                                           usage=rt.RerankUsage(prompt_tokens=tokens, total_tokens=tokens)))


def _cohere_error(_: Request, exc: Exception) -> Response:
    status, message = (exc.status, exc.message) if isinstance(exc, APIError) else (
        (exc.status_code, exc.detail) if isinstance(exc, HTTPException) else status_for(exc))
    body = msgspec.to_builtins(error_body(status, message))
    return json_response({"message": message, **body}, status)  # Cohere's field, and OpenAI's object


@post("/v2/rerank", status_code=200,
      exception_handlers={APIError: _cohere_error, HTTPException: _cohere_error, Exception: _cohere_error})
async def rerank_v2(request: Request) -> Response:
    _, _, results, _ = await _rerank(request)
    return json_response(rt.CohereRerankResponse(
        id=str(uuid.uuid4()), results=results,
        meta=rt.CohereMeta(api_version={"version": "2"}, billed_units={"search_units": 1})))


ROUTES = [rerank, rerank_v2]
