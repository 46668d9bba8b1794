"""The model a job trains: found, checked against what it will be served as, and its LoRA targets.

- A causal LM is trained for a stored GGUF model (`from`): straight from that GGUF (transformers loads
  the common architectures from GGUF files, dequantized), or from Hugging Face weights (`base`: a folder,
  or an `org/name` entry of the local Hugging Face cache) that must be the same model as the GGUF:
  same architecture, same dimensions, same vocabulary. The adapter is then applied to that GGUF.
- A classifier is trained from a Hugging Face folder (a BERT-family encoder).

Server-side folders follow server/local_paths.py's rule (CORRAL_ALLOW_LOCAL_PATHS), the HF cache too;
nothing is ever downloaded. Everything here runs before a job is queued (in a worker thread): it reads
config files and GGUF headers, and builds models on PyTorch's meta device only, so it is quick.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from server import local_paths
from server.errors import NotFound
from server.store import manifest as mf
from server.store.gguf import GGUFError, GGUFInfo, read_info, read_tokens
from server.store.store import Store

from .errors import TrainingError, TrainingUnavailable, require
from .spec import CAUSAL_LM, TrainSpec

# GGUF general.architecture → transformers model_type, where the names differ
GGUF_TO_HF = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
              "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
# transformers model_type → the GGUF architectures llama.cpp's converter writes for it
HF_TO_GGUF = {"gemma3_text": {"gemma3"}, "gemma3": {"gemma3"}, "mistral": {"llama", "mistral"},
              "qwen2_moe": {"qwen2moe"}, "qwen3_moe": {"qwen3moe"}, "gpt_oss": {"gpt-oss"}}
# config field → GGUF key suffix: the dimensions that must agree
DIMENSIONS = (("hidden_size", "embedding_length"), ("num_hidden_layers", "block_count"),
              ("intermediate_size", "feed_forward_length"), ("num_attention_heads", "head_count"),
              ("num_key_value_heads", "head_count_kv"))
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# modules that never take a LoRA that converts to GGUF (llama.cpp's converter refuses output and embeddings)
NOT_TARGETS = ("lm_head", "embed_tokens", "wte", "word_embeddings", "embed_out")
VOCAB_SAMPLE = 512  # token ids compared between the HF tokenizer and the GGUF vocabulary


def resolve_lm_base(store: Store, spec: TrainSpec) -> dict[str, Any]:
    """The stored GGUF model (and HF folder) a causal-LM job trains, as JSON kept with the job."""
    entry = store.find(spec.from_)
    if entry is None:
        raise NotFound(f"model '{spec.from_}' not found")
    layer = entry.manifest.layer(mf.MODEL)
    if layer is None:
        raise TrainingError(f"model '{spec.from_}' has no GGUF weights: a LoRA adapter is trained for a GGUF model")
    if entry.manifest.layer(mf.ADAPTER) is not None:
        raise TrainingError(f"model '{spec.from_}' carries adapters already: train for the model it is FROM")
    path = store.blob_path(layer.digest)
    try:
        info = read_info(str(path))
    except GGUFError as exc:
        raise TrainingError(f"model '{spec.from_}': {exc}") from None
    arch = info.architecture
    from adapters.peft_to_gguf import ARCH_ALIASES, ARCHITECTURES

    if ARCH_ALIASES.get(arch, arch) not in ARCHITECTURES:
        raise TrainingError(f"model '{spec.from_}' is a '{arch}' model: LoRA adapters convert to GGUF for "
                            f"{', '.join(ARCHITECTURES)} only")
    resolved: dict[str, Any] = {"model": entry.name.display, "model_digest": layer.digest, "architecture": arch,
                                "n_layers": int(info.arch_value("block_count", 0) or 0), "hf_dir": None}
    if spec.base:
        hf_dir = resolve_hf_dir(spec.base)
        check_hf_matches_gguf(hf_dir, path, info, spec.base, resolved["model"])
        resolved["hf_dir"] = str(hf_dir)
        resolved["model_type"] = _hf_config(hf_dir, spec.base)["model_type"]
    else:
        supported = require("transformers.modeling_gguf_pytorch_utils", "training from a GGUF").GGUF_SUPPORTED_ARCHITECTURES
        model_type = GGUF_TO_HF.get(arch, arch)
        if arch not in supported and model_type not in supported:
            raise TrainingError(f"transformers cannot load a '{arch}' GGUF: give the model's Hugging Face weights "
                                "as base (a folder, paired with this GGUF)")
        resolved["model_type"] = model_type
    return resolved


def resolve_hf_dir(ref: str) -> Path:
    """An HF model folder on the server (allowed by CORRAL_ALLOW_LOCAL_PATHS) or a local HF cache entry."""
    if _REPO_ID.match(ref) and not Path(ref).exists():
        hub = require("huggingface_hub", "a Hugging Face cache entry as base")
        try:
            found = hub.snapshot_download(ref, local_files_only=True)
        except Exception:
            raise TrainingError(f"base {ref!r} is not in the local Hugging Face cache (Corral downloads nothing: "
                                "download it first, or give a folder)") from None
        ref = found
    try:
        real = local_paths.resolve(ref, is_path=True)
    except local_paths.LocalPathError as exc:
        raise TrainingError(str(exc)) from None
    if not (real.is_dir() and (real / "config.json").is_file()):
        raise TrainingError(f"base {ref}: not a Hugging Face model folder (no config.json there, or not readable)")
    return real


def _hf_config(hf_dir: Path, ref: str) -> dict[str, Any]:
    try:
        config = json.loads((hf_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise TrainingError(f"base {ref}: config.json is not readable JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise TrainingError(f"base {ref}: config.json names no model_type")
    return config


def check_hf_matches_gguf(hf_dir: Path, gguf: Path, info: GGUFInfo, ref: str, model: str) -> None:
    """The HF weights are the GGUF's model: architecture, dimensions and vocabulary agree."""
    config = _hf_config(hf_dir, ref)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    if config["model_type"] in ("gemma3",) and text:  # the multimodal wrapper: its text model is the GGUF's
        config = {**text, "model_type": "gemma3_text"}
    arch = info.architecture
    accepted = HF_TO_GGUF.get(config["model_type"], {config["model_type"]})
    if arch not in accepted:
        raise TrainingError(f"base {ref} does not match model '{model}': architecture {config['model_type']} "
                            f"(Hugging Face) against {arch} (GGUF)")
    for field, key in DIMENSIONS:
        ours, theirs = config.get(field), info.arch_value(key)
        if field == "num_key_value_heads" and ours is None:
            ours = config.get("num_attention_heads")
        if isinstance(theirs, list):  # per-layer values: compare the largest
            theirs = max(theirs) if theirs else None
        if ours is not None and theirs is not None and int(ours) != int(theirs):
            raise TrainingError(f"base {ref} does not match model '{model}': {field} {ours} (Hugging Face) "
                                f"against {arch}.{key} {theirs} (GGUF)")
    _check_vocabulary(hf_dir, gguf, info, config, ref, model)


def _check_vocabulary(hf_dir: Path, gguf: Path, info: GGUFInfo, config: dict, ref: str, model: str) -> None:
    transformers = require("transformers", "checking an HF base against its GGUF")
    gguf_size = info.array_lengths.get("tokenizer.ggml.tokens") or len(info.kv.get("tokenizer.ggml.tokens") or [])
    vocab_size = config.get("vocab_size")
    if not any((hf_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                 "vocab.json")):
        # weights without a tokenizer (the GGUF's is used): the embedding rows must be the GGUF's tokens
        if vocab_size is not None and int(vocab_size) != gguf_size:
            raise TrainingError(f"base {ref} does not match model '{model}': vocab_size {vocab_size} (Hugging Face) "
                                f"against {gguf_size} tokens (GGUF)")
        return
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    except ImportError as exc:  # a package of the extra is missing
        raise TrainingUnavailable("checking an HF base against its GGUF", exc.name or "") from None
    except Exception as exc:
        raise TrainingError(f"base {ref}: its tokenizer cannot be loaded ({type(exc).__name__})") from None
    if gguf_size not in (len(tokenizer), vocab_size):
        raise TrainingError(f"base {ref} does not match model '{model}': vocabulary of {len(tokenizer)} tokens "
                            f"(Hugging Face) against {gguf_size} (GGUF)")
    tokens = read_tokens(str(gguf))
    n = min(len(tokenizer), len(tokens))
    step = max(1, n // VOCAB_SAMPLE)
    ids = list(range(0, n, step))
    theirs = tokenizer.convert_ids_to_tokens(ids)
    same = sum(1 for i, t in zip(ids, theirs) if t == tokens[i])
    if same < 0.95 * len(ids):
        raise TrainingError(f"base {ref} does not match model '{model}': the vocabularies differ ({same} of "
                            f"{len(ids)} sampled tokens agree)")


# ---- LoRA targets -------------------------------------------------------------------------------------


def skeleton(task: str, model_type: str, hf_dir: str | None, num_labels: int = 2) -> Any:
    """The model's module tree on PyTorch's meta device (no weights, no memory): from the HF folder's
    config, else from the architecture's default config (module names do not depend on sizes)."""
    torch = require("torch", "training")
    transformers = require("transformers", "training")
    try:
        if hf_dir:
            config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
        else:
            config = transformers.AutoConfig.for_model(model_type)
    except ImportError as exc:
        raise TrainingUnavailable("training", exc.name or "") from None
    except Exception as exc:  # an unknown model_type, a config transformers cannot read
        raise TrainingError(f"transformers cannot read the base's config: {exc}") from None
    kind = transformers.AutoModelForCausalLM if task == CAUSAL_LM else transformers.AutoModelForSequenceClassification
    if task != CAUSAL_LM:
        config.num_labels = num_labels
    with torch.device("meta"):
        try:
            return kind.from_config(config)
        except ImportError as exc:
            raise TrainingUnavailable("training", exc.name or "") from None
        except Exception as exc:  # no such model class for this architecture, or a config it cannot build from
            raise TrainingError(f"transformers has no {'causal LM' if task == CAUSAL_LM else 'sequence classification'}"
                                f" model for '{config.model_type}': {exc}") from None


def linear_names(model: Any) -> dict[str, list[str]]:
    """Short name (the last part) → full names of the layers a LoRA can adapt (linear layers)."""
    torch = require("torch", "training")
    kinds: tuple = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        kinds += (Conv1D,)
    except ImportError:
        pass
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def default_targets(task: str, names: dict[str, list[str]]) -> list[str]:
    """Every linear layer of the transformer blocks (causal LM); attention query and value (classifier)."""
    if task == CAUSAL_LM:
        return sorted(n for n, full in names.items() if n not in NOT_TARGETS and any(".layers." in f or ".h." in f
                                                                                       or ".blocks." in f for f in full))
    for pair in (("q_lin", "v_lin"), ("query", "value"), ("query_proj", "value_proj"), ("q_proj", "v_proj")):
        if all(p in names for p in pair):
            return list(pair)
    raise TrainingError("the base has no attention query/value layers this trainer knows (query/value, q_lin/v_lin): "
                        "name lora.target_modules")


def check_targets(task: str, requested: list[str] | None, names: dict[str, list[str]]) -> list[str]:
    """The target modules to adapt: the defaults, or the requested ones checked to exist."""
    if requested is None or requested == ["all-linear"]:
        return default_targets(task, names)
    out = []
    for name in requested:
        short = name.strip().rsplit(".", 1)[-1]
        if short not in names:
            raise TrainingError(f"target module {name!r} is not a linear layer of this model (its linear layers: "
                                f"{', '.join(sorted(names))})")
        if task == CAUSAL_LM and short in NOT_TARGETS:
            raise TrainingError(f"target module {name!r}: the output layer and embeddings cannot take a LoRA that "
                                "converts to GGUF")
        out.append(name.strip())
    return out

