"""Wire types of the retrieval routes (server/api/collections.py, server/api/rerank.py), documented once.

Collections are Corral's own API in Ollama's style (errors `{"error": "…"}`, progress as NDJSON lines like
pull's). Rerank speaks llama-server's and Jina's shape on `/rerank` and `/v1/rerank`, Cohere's on `/v2/rerank`.
"""

from __future__ import annotations

from typing import Any

import msgspec

# ---- collections -------------------------------------------------------------------------------


class CollectionCreateRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    name: str  # letters, digits, '_', '.', '-' (at most 64), starting with a letter or digit
    embedding_model: str = "all-minilm"  # an ONNX embedding model or a GGUF embedding model in the store
    chunk_tokens: int = 200  # the most tokens (of the embedding model's tokenizer) in one chunk
    chunk_overlap: int = 40  # tokens each chunk repeats from the one before
    metadata: dict[str, Any] | None = None  # free-form, returned by show and list


class Collection(msgspec.Struct, omit_defaults=True):
    name: str
    embedding_model: str
    dimensions: int  # the embedding model's vector size
    chunk_tokens: int
    chunk_overlap: int
    documents: int  # documents in the collection
    chunks: int  # chunks (vectors) in the collection
    created_at: str  # RFC 3339
    metadata: dict[str, Any] | None = None


class CollectionListResponse(msgspec.Struct):
    collections: list[Collection]


class DocumentInput(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    text: str | None = None  # the document's text (or give `data`)
    data: str | None = None  # the document's bytes in base64 (a PDF, say)
    id: str | None = None  # default: `name`, else the content's digest; an existing id is replaced
    name: str | None = None  # a file name: its suffix tells the format when `format` is not given
    format: str | None = None  # text, markdown, html, pdf or jsonl
    metadata: dict[str, Any] | None = None  # searchable with filters; JSONL records add their own fields


class DocumentsAddRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    documents: list[DocumentInput]
    stream: bool = False  # NDJSON progress lines ({"status", "completed", "total"}) then the result line


class Document(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    format: str
    digest: str  # sha256 of the document's bytes
    characters: int  # of extracted text
    chunks: int
    created_at: str  # RFC 3339
    metadata: dict[str, Any] | None = None


class AddedDocument(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    status: str  # added, replaced or unchanged
    chunks: int


class DocumentsAddResponse(msgspec.Struct, omit_defaults=True):
    status: str  # "success"
    documents: list[AddedDocument]


class DocumentListResponse(msgspec.Struct):
    documents: list[Document]


class SearchRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    query: str
    k: int = 5  # results, 1 to 100
    mode: str = "hybrid"  # hybrid (vector + keyword, fused by reciprocal rank), vector or keyword
    filters: dict[str, Any] | None = None  # {key: value} or {key: [values]} on metadata; `document_id` too
    rerank: str | None = None  # a reranker model: reorders the best `candidates` by its scores
    candidates: int | None = None  # how many results the reranker sees (default 4 × k)


class SearchResult(msgspec.Struct, omit_defaults=True):
    document_id: str
    document_name: str
    text: str  # the chunk
    score: float  # cosine similarity (vector), bm25 (keyword), RRF (hybrid) or the reranker's score
    start: int  # character offsets of the chunk in the document's extracted text
    end: int
    chunk_id: int
    page: int | None = None  # PDF page, from 1
    heading: str | None = None  # the Markdown/HTML heading the chunk falls under
    metadata: dict[str, Any] | None = None


class SearchResponse(msgspec.Struct):
    results: list[SearchResult]


# ---- rerank ------------------------------------------------------------------------------------


class RerankRequest(msgspec.Struct, omit_defaults=True):
    query: str
    documents: list[str | dict[str, Any]] | None = None  # texts, or Cohere's/Jina's {"text": ...} objects
    texts: list[str | dict[str, Any]] | None = None  # TEI's name for them: /rerank answers TEI's bare array
    return_text: bool = False  # TEI: each result carries "text"
    model: str = ""  # a reranker in the store (a cross-encoder exported to ONNX)
    top_n: int | None = None  # at most this many results (default: all)
    return_documents: bool = False  # Jina: each result carries {"document": {"text"}}
    max_tokens_per_doc: int | None = None  # Cohere: accepted; documents are cut at the model's max length


class RerankDocument(msgspec.Struct):
    text: str


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int  # the document's position in the request
    relevance_score: float  # the cross-encoder's raw logit (llama-server's convention), higher is better
    document: RerankDocument | None = None


class TeiRerankResult(msgspec.Struct, omit_defaults=True):
    """One element of TEI's bare-array answer (a /rerank body with `texts`), as llama-server gives it."""

    index: int
    score: float  # the raw logit, as relevance_score
    text: str | None = None


class RerankUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(msgspec.Struct):
    """llama-server's and Jina's shape (`/rerank`, `/v1/rerank`): results sorted by score."""

    model: str
    object: str  # "list"
    usage: RerankUsage
    results: list[RerankResult]


class CohereMeta(msgspec.Struct):
    api_version: dict[str, Any]  # {"version": "2"}
    billed_units: dict[str, Any]  # {"search_units": 1}


class CohereRerankResponse(msgspec.Struct):
    """Cohere's v2 shape (`/v2/rerank`)."""

    id: str
    results: list[RerankResult]
    meta: CohereMeta
