"""GGUF rerankers through llama.cpp's rank pooling, as llama-server's `--rerank` scores them.

A GGUF model is a reranker when llama.cpp pools it with LLAMA_POOLING_TYPE_RANK (`<arch>.pooling_type`
= 4): its context (embeddings on, the model's own pooling) applies the classification head (`cls`,
`cls.output`) and gives n_cls_out floats per sequence; the score is the first, a raw logit. The
context is the loaded model's embedding context (`Loaded.embedder_for`, server/engine/embedder.py):
each (query, document) pair is its own sequence, several per batch.

The pair is tokenized as llama-server's `format_prompt_rerank` does: with a `tokenizer.chat_template.rerank`
template, `{query}` and `{document}` replaced in it (special tokens parsed, none added); else
BOS query EOS SEP document EOS, each special token only where the vocabulary says to add it (EOS falls
back to SEP): `[CLS] query [SEP] document [SEP]` for a BERT converted by convert_hf_to_gguf.py.
"""

from __future__ import annotations

import llama_cpp.llama_cpp as C

from .llama import LlamaModel


def rerank_template(model: LlamaModel) -> str | None:
    raw = C.llama_model_chat_template(model.ptr, b"rerank")
    return raw.decode("utf-8", errors="replace") if raw else None


def pair_tokens(model: LlamaModel, query: str, document: str, n_ctx: int) -> list[int]:
    """The tokens llama-server scores for (query, document), cut to `n_ctx` (the end kept: the
    closing special token)."""
    template = rerank_template(model)
    if template is not None:
        prompt = template.replace("{query}", query).replace("{document}", document)
        tokens = model.tokenize(prompt, add_special=False, parse_special=True)
    else:
        vocab = model.vocab
        eos = C.llama_vocab_eos(vocab)
        if eos < 0:
            eos = C.llama_vocab_sep(vocab)
        add_eos = bool(C.llama_vocab_get_add_eos(vocab))
        tokens = [model.bos] if C.llama_vocab_get_add_bos(vocab) else []
        tokens += model.tokenize(query, add_special=False, parse_special=False)
        if add_eos:
            tokens.append(eos)
        if C.llama_vocab_get_add_sep(vocab):
            tokens.append(C.llama_vocab_sep(vocab))
        tokens += model.tokenize(document, add_special=False, parse_special=False)
        if add_eos:
            tokens.append(eos)
    if len(tokens) > n_ctx:
        tokens = tokens[: n_ctx - 1] + tokens[-1:]
    return tokens
