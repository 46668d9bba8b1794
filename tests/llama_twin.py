"""A tiny random Llama written twice with the same weights: as a Hugging Face model folder
(transformers, safetensors) and as an F32 GGUF llama.cpp loads, with a real tokenizer and a chat
template. For comparing what llama.cpp computes with what transformers (+ PEFT) computes.

    twin = write_tiny_llama(tmp_path / "twin")
    model = transformers.AutoModelForCausalLM.from_pretrained(twin.hf_dir)
    llm = llama_cpp.Llama(model_path=str(twin.gguf), logits_all=True)
    lora_dir = make_peft_lora(twin, tmp_path / "lora", r=4, alpha=8)

The GGUF gets the tokenizer of tests/data/ggml-vocab-llama-bpe.gguf (Llama 3's BPE, 128256 tokens,
through tests/gguf_factory.py); the HF model has that vocabulary size and tied embeddings (so the GGUF
has no output.weight, as llama.cpp's converter writes a tied model). The folder holds config.json
and model.safetensors, no tokenizer files: feed token ids to both. q_proj/k_proj rows are permuted
into llama.cpp's rope order as convert_hf_to_gguf.py's LlamaModel.permute does.

Needs torch and transformers (the `adapters` extra); PEFT for make_peft_lora.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tests.gguf_factory import _tokenizer_fields, vocab_path

TWIN_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Twin:
    hf_dir: Path  # config.json + model.safetensors
    gguf: Path  # F32 GGUF, same weights, real tokenizer, chat template
    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's q/k row order → llama.cpp's (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama(dir: Path, *, seed: int = 0, n_layers: int = 2, hidden: int = 64, heads: int = 4,
                     kv_heads: int = 2, intermediate: int = 128, vocab: str = "llama-bpe",
                     init_std: float = 0.08, chat_template: str = TWIN_TEMPLATE) -> Twin:
    """Write the twin into `dir` (hf/ and model.gguf) and return where."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dir = Path(dir)
    fields = _tokenizer_fields(str(vocab_path(vocab)))
    tokens = next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens")
    n_vocab = len(tokens)
    ids = {k: v for k, v, _, _ in fields if k.endswith("_token_id")}
    config = LlamaConfig(
        vocab_size=n_vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=n_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=ids.get("tokenizer.ggml.bos_token_id"), eos_token_id=ids.get("tokenizer.ggml.eos_token_id"),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from exactly 1, so that they are checked too
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    hf_dir = dir / "hf"
    model.save_pretrained(hf_dir, safe_serialization=True)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    gguf_path = dir / "model.gguf"
    _write_gguf(gguf_path, state, fields, config, chat_template)
    return Twin(hf_dir=hf_dir, gguf=gguf_path, n_layers=n_layers, hidden=hidden, heads=heads,
                kv_heads=kv_heads, intermediate=intermediate, vocab_size=n_vocab)


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _write_gguf(path: Path, state: dict[str, np.ndarray], fields: tuple, config: Any, chat_template: str) -> None:
    from gguf import GGUFValueType, GGUFWriter, LlamaFileType

    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // n_head
    w = GGUFWriter(str(path), "llama")
    for key, val, vtype, sub in fields:
        if key == "tokenizer.chat_template":
            continue
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, val, vtype, sub_type=sub)
        else:
            w.add_key_value(key, val, vtype)
    w.add_chat_template(chat_template)
    w.add_name(f"tiny-llama-twin-{config.num_hidden_layers}x{config.hidden_size}")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(_rope_theta(config))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_file_type(LlamaFileType.ALL_F32)

    def put(name: str, value: np.ndarray) -> None:
        w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))

    put("token_embd.weight", state["model.embed_tokens.weight"])
    put("output_norm.weight", state["model.norm.weight"])
    for i in range(config.num_hidden_layers):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        put(blk + "attn_norm.weight", state[hf + "input_layernorm.weight"])
        put(blk + "attn_q.weight", permute(state[hf + "self_attn.q_proj.weight"], n_head))
        put(blk + "attn_k.weight", permute(state[hf + "self_attn.k_proj.weight"], n_kv))
        put(blk + "attn_v.weight", state[hf + "self_attn.v_proj.weight"])
        put(blk + "attn_output.weight", state[hf + "self_attn.o_proj.weight"])
        put(blk + "ffn_norm.weight", state[hf + "post_attention_layernorm.weight"])
        put(blk + "ffn_gate.weight", state[hf + "mlp.gate_proj.weight"])
        put(blk + "ffn_up.weight", state[hf + "mlp.up_proj.weight"])
        put(blk + "ffn_down.weight", state[hf + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_hf(twin_or_dir: Twin | Path):
    """The twin's Hugging Face model in float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir = twin_or_dir.hf_dir if isinstance(twin_or_dir, Twin) else Path(twin_or_dir)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def make_peft_lora(base: Twin | Path, out: Path, *, seed: int = 1, r: int = 4, alpha: float = 8,
                   target_modules: Iterable[str] = LINEAR_MODULES, std: float = 0.05,
                   **lora_config: Any) -> Path:
    """A real PEFT LoRA on the twin's HF model, saved with save_pretrained (adapter_config.json +
    adapter_model.safetensors). lora_A and lora_B are random (seeded; PEFT's default init makes
    lora_B zero); `lora_config` goes to LoraConfig (use_rslora, use_dora, modules_to_save,
    alpha_pattern, rank_pattern, …)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = load_hf(base)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0,
                     init_lora_weights=False, **lora_config)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(std * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    out = Path(out)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out
