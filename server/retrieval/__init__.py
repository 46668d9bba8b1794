"""Retrieval: document collections with hybrid search, ONNX embeddings and rerankers, grounded chat.

- `service.py`: `RetrievalService`, what HTTP (server/api/collections.py, server/api/rerank.py), the
  `search_documents` tool, grounded chat and the CLI call. Built once in server/services.py.
- `readers.py` (text, Markdown, HTML, PDF, JSONL) → `chunking.py` (token windows with overlap, headings and
  paragraphs kept together, offsets and pages kept for citations) → an embedder (`onnx_models.py`: ONNX
  models in the model store; otherwise a GGUF embedding model through Inference) → a store:
  `sqlite_store.py` (sqlite-vec + FTS5, the default) or `pg_store.py` (pgvector HNSW + full-text search,
  when CORRAL_DATABASE_URL is set).
- `fusion.py`: reciprocal rank fusion of the vector and keyword rankings.
- `onnx_export.py`: transformers encoders (all-MiniLM-L6-v2, cross-encoders) exported with torch.onnx into
  the store; torch and transformers are needed only for that, onnxruntime and tokenizers to run.

Everything that needs the `retrieval` extra is imported lazily: without it the core server runs and these
features answer 501 naming the extra.
"""

from .errors import RetrievalUnavailable

__all__ = ["RetrievalUnavailable"]
