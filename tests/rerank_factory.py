"""A GGUF twin of a transformers BERT cross-encoder, for the GGUF rerank tests.

    from tests.rerank_factory import write_bert_reranker_gguf
    write_bert_reranker_gguf(encoder_dir, tmp_path / "rerank.gguf")

Writes the same weights (F32) as `BertForSequenceClassification` in `encoder_dir` (one label, e.g.
tests/retrieval_fixtures.py's `write_tiny_cross_encoder`) into a GGUF that llama.cpp's `bert` loader
reads, as convert_hf_to_gguf.py names them (src/models/bert.cpp): token_embd, token_types,
position_embd, token_embd_norm, blk.N.attn_q/k/v/output, attn_output_norm, ffn_up/down,
layer_output_norm; the classification head as llama.cpp's rank pooling applies it (llama-graph.cpp):
`cls` (BERT's pooler: dense then tanh, on the first token) and `cls.output` (the classifier).
`bert.pooling_type` = 4 (LLAMA_POOLING_TYPE_RANK). The vocabulary is the WordPiece one ("bert"), in
llama.cpp's phantom-space form, with the special tokens and add_bos/add_eos as gguf-py's SpecialVocab
derives them from a BERT tokenizer (`[CLS] A [SEP] B [SEP]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3


def write_bert_reranker_gguf(encoder_dir: Path, path: Path) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(encoder_dir).eval()
    cfg = model.config
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    vocab = (Path(encoder_dir) / "vocab.txt").read_text().split("\n")
    vocab = [t for t in vocab if t]
    assert len(vocab) == cfg.vocab_size, (len(vocab), cfg.vocab_size)
    special = {t for t in vocab if t.startswith("[") and t.endswith("]")}
    tokens = [t if t in special else (t[2:] if t.startswith("##") else "\u2581" + t) for t in vocab]
    types = [TOKEN_CONTROL if t in special else TOKEN_NORMAL for t in vocab]

    w = GGUFWriter(str(path), "bert")
    w.add_name("tiny-bert-reranker")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    w.add_causal_attention(False)
    w.add_uint32("bert.pooling_type", 4)  # LLAMA_POOLING_TYPE_RANK
    w.add_classifier_output_labels(["LABEL_0"])
    w.add_token_type_count(cfg.type_vocab_size)
    w.add_file_type(0)  # ALL_F32
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(vocab.index("[CLS]"))
    w.add_eos_token_id(vocab.index("[SEP]"))
    w.add_sep_token_id(vocab.index("[SEP]"))
    w.add_unk_token_id(vocab.index("[UNK]"))
    w.add_pad_token_id(vocab.index("[PAD]"))
    w.add_mask_token_id(vocab.index("[MASK]"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_add_sep_token(False)

    def t(name: str, key: str) -> None:
        w.add_tensor(name, np.ascontiguousarray(sd[key], dtype=np.float32))

    t("token_embd.weight", "bert.embeddings.word_embeddings.weight")
    t("token_types.weight", "bert.embeddings.token_type_embeddings.weight")
    t("position_embd.weight", "bert.embeddings.position_embeddings.weight")
    t("token_embd_norm.weight", "bert.embeddings.LayerNorm.weight")
    t("token_embd_norm.bias", "bert.embeddings.LayerNorm.bias")
    for i in range(cfg.num_hidden_layers):
        hf, p = f"bert.encoder.layer.{i}.", f"blk.{i}."
        for ours, theirs in (("attn_q", "attention.self.query"), ("attn_k", "attention.self.key"),
                             ("attn_v", "attention.self.value"), ("attn_output", "attention.output.dense"),
                             ("attn_output_norm", "attention.output.LayerNorm"), ("ffn_up", "intermediate.dense"),
                             ("ffn_down", "output.dense"), ("layer_output_norm", "output.LayerNorm")):
            t(p + ours + ".weight", hf + theirs + ".weight")
            t(p + ours + ".bias", hf + theirs + ".bias")
    t("cls.weight", "bert.pooler.dense.weight")
    t("cls.bias", "bert.pooler.dense.bias")
    t("cls.output.weight", "classifier.weight")
    t("cls.output.bias", "classifier.bias")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
