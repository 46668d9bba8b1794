"""Tiny random-weight diffusion pipelines built from configs, saved as real diffusers folders.

Nothing is downloaded: the UNet, the VAE and the CLIP text model are made from small configs with
seeded random weights, and the CLIP tokenizer from a byte-level vocabulary and a few merges written
here. `write_tiny_pipeline(dir)` saves a StableDiffusionPipeline folder (`model_index.json` and its
components) that `corral create NAME --diffusers DIR` takes; `write_tiny_lora(pipe_dir, file)` a LoRA
for its UNet in the format diffusers' `load_lora_weights` reads; `write_sd15_shaped_pipeline` the
real Stable Diffusion 1.5 shapes (random weights) for the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

# a few merges: enough that the tokenizer's BPE path is used, not only single bytes
_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "c a", "ca t</w>", "r e", "re d</w>", "o n</w>", "i n"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_tokenizer(folder: Path) -> Path:
    """A CLIPTokenizer folder: every byte alone and word-final, the merges' results, and the two specials."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    for merge in _MERGES:
        a, b = merge.split()
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    return folder


def tiny_components(seed: int = 0, *, shapes: str = "tiny") -> dict:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    if shapes == "sd15":
        unet = UNet2DConditionModel(sample_size=32, cross_attention_dim=768)  # the defaults are SD 1.5's UNet
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4, sample_size=256,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=2)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                              max_position_embeddings=77, vocab_size=49408)
    else:
        unet = tiny_unet()
        # four blocks: latents are 1/8 of the image, as in every Stable Diffusion (the ONNX pipeline assumes it)
        vae = AutoencoderKL(block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            latent_channels=4, norm_num_groups=4, sample_size=64, layers_per_block=1)
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                              layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
                              vocab_size=1000, max_position_embeddings=77)
    text_encoder = CLIPTextModel(text).eval()
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder,
            "scheduler": DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     num_train_timesteps=1000),
            "tokenizer_cls": CLIPTokenizer}


def tiny_unet(**changes):
    """The tiny pipelines' UNet (random weights from torch's current seed), with `changes` to its config."""
    from diffusers import UNet2DConditionModel

    config = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=4,
                  attention_head_dim=4)
    return UNet2DConditionModel(**{**config, **changes}).eval()


def _save_pipeline(cls, folder: Path, parts: dict) -> Path:
    """Build an SD 1.x-style pipeline `cls` from `parts` (tiny_components') with the tiny tokenizer, no
    safety checker, and save it as a diffusers folder."""
    with _tokenizer_files(folder) as tok_dir:
        tokenizer = parts.pop("tokenizer_cls").from_pretrained(str(tok_dir))
    # every token id must fall inside the text model's vocabulary (1000 entries for the tiny one)
    assert len(tokenizer) <= parts["text_encoder"].config.vocab_size, len(tokenizer)
    pipe = cls(**parts, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@contextlib.contextmanager
def _tokenizer_files(folder: Path) -> Iterator[Path]:
    """The tiny tokenizer's files for a pipeline being written in `folder`, gone after the block (the
    tokenizer loaded from them is saved with the pipeline)."""
    tok_dir = write_tiny_tokenizer(folder / ".tokenizer-src")
    try:
        yield tok_dir
    finally:
        shutil.rmtree(tok_dir)


def write_tiny_pipeline(folder: Path, seed: int = 0, *, shapes: str = "tiny") -> Path:
    """Save a StableDiffusionPipeline with tiny random weights as a diffusers folder."""
    from diffusers import StableDiffusionPipeline

    return _save_pipeline(StableDiffusionPipeline, Path(folder), tiny_components(seed, shapes=shapes))


def write_tiny_lcm_pipeline(folder: Path, seed: int = 0) -> Path:
    """Save a LatentConsistencyModelPipeline with tiny random weights: a UNet with a guidance embedding
    (`time_cond_proj_dim`) and LCMScheduler (allowing up to 100 steps)."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    parts = tiny_components(seed)
    torch.manual_seed(seed + 1)
    parts["unet"] = tiny_unet(time_cond_proj_dim=32)
    parts["scheduler"] = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      num_train_timesteps=1000, original_inference_steps=100)
    return _save_pipeline(LatentConsistencyModelPipeline, Path(folder), parts)


def write_sd15_shaped_pipeline(folder: Path, seed: int = 0) -> Path:
    return write_tiny_pipeline(folder, seed, shapes="sd15")


def write_tiny_lora(pipe_dir: Path, file: Path, seed: int = 1, rank: int = 4, scale: float = 0.5) -> Path:
    """A LoRA for the pipeline's UNet attention (to_q/k/v/out) with non-zero random A and B matrices,
    saved by diffusers' own `save_lora_weights` (the kohya/diffusers format `load_lora_weights` reads)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(Path(pipe_dir) / "unet"))
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    state = get_peft_model_state_dict(unet)
    from diffusers.utils import convert_state_dict_to_diffusers

    layers = convert_state_dict_to_diffusers(state)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(file.parent), unet_lora_layers=layers, weight_name=file.name,
                                              safe_serialization=True)
    return file


def write_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567",
                   only: tuple[str, ...] = ()) -> Path:
    """Put a diffusers folder into a Hugging Face hub cache as `huggingface_hub` lays one out (no network):
    `models--org--name/blobs/<etag>` (sha256 for LFS files, the git blob sha1 for the others),
    `snapshots/<commit>/<path>` as relative symlinks to those blobs, and `refs/main` naming the commit.
    `only`: file suffixes to keep (the configs diffusers' from_single_file downloads), else every file."""
    import hashlib
    import os

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(Path(folder).rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if not file.is_file() or rel.startswith(".") or (only and not rel.endswith(only)):
            continue
        data = file.read_bytes()
        etag = (hashlib.sha256(data).hexdigest() if rel.endswith(".safetensors")
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / etag, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_unet_key(key: str, per_block: int, up_attn: set[int]) -> str:
    """A diffusers UNet2DConditionModel key → the original (CompVis LDM) key, for any depth."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    if key in fixed:  # SDXL's added (pooled text + size) embedding is `label_emb.0.*`
        return fixed[key]
    part, i, kind, j, rest = (key.split(".", 4) + [""] * 5)[:5]
    if part == "mid_block":  # mid_block.resnets.K.rest / mid_block.attentions.0.rest
        kind, j, rest = i, kind, ".".join(x for x in (j, rest) if x)
        head, _, tail = rest.partition(".")
        if kind == "resnets":
            return f"middle_block.{2 * int(j)}.{_RESNET.get(head, head)}.{tail}"
        return f"middle_block.1.{rest}"
    i, j = int(i), int(j)
    head, _, tail = rest.partition(".")
    resnet = f"{_RESNET.get(head, head)}.{tail}"
    if part == "down_blocks":
        n = 1 + i * (per_block + 1) + j
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{(i + 1) * (per_block + 1)}.0.op.{tail}"
        return f"input_blocks.{n}.0.{resnet}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    n = i * (per_block + 1) + j  # an up block has per_block + 1 layers, its upsampler in the last one
    if kind == "upsamplers":
        return f"output_blocks.{i * (per_block + 1) + per_block}.{2 if i in up_attn else 1}.{rest}"
    return f"output_blocks.{n}.0.{resnet}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"


def _ldm_vae_key(key: str, blocks: int) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    coder, part, rest = key.split(".", 2)
    if part == "mid_block":
        kind, k, rest = rest.split(".", 2)
        if kind == "attentions":
            for new, old in _VAE_ATTN.items():
                if rest.startswith(new + "."):
                    return f"{coder}.mid.attn_1.{old}{rest[len(new):]}"
        return f"{coder}.mid.block_{int(k) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    i, kind, j, rest = rest.split(".", 3)
    ldm = i if part == "down_blocks" else str(blocks - 1 - int(i))
    name = "down" if part == "down_blocks" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{name}.{ldm}.{'downsample' if name == 'down' else 'upsample'}.{rest}"
    return f"{coder}.{name}.{ldm}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"


def write_single_file(pipe_dir: Path, file: Path, *, text_encoder: bool = True) -> Path:
    """The pipeline's UNet, VAE and CLIP text encoder as one original-format (CompVis/A1111) SD 1.x
    checkpoint: `model.diffusion_model.*`, `first_stage_model.*` (attention projections as 1×1 convs),
    `cond_stage_model.transformer.text_model.*`. The inverse of diffusers' single-file conversion."""
    import torch
    from safetensors.torch import load_file, save_file

    pipe_dir = Path(pipe_dir)
    unet_cfg = json.loads((pipe_dir / "unet" / "config.json").read_text())
    vae_cfg = json.loads((pipe_dir / "vae" / "config.json").read_text())
    unet = load_file(str(pipe_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    vae = load_file(str(pipe_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    text = load_file(str(pipe_dir / "text_encoder" / "model.safetensors")) if text_encoder else {}
    up_attn = {i for i, t in enumerate(unet_cfg["up_block_types"]) if "CrossAttn" in t}
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.items():
        out["model.diffusion_model." + _ldm_unet_key(key, unet_cfg["layers_per_block"], up_attn)] = value
    for key, value in vae.items():
        if ".mid_block.attentions." in key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's AttnBlock uses 1×1 convolutions
        out["first_stage_model." + _ldm_vae_key(key, len(vae_cfg["down_block_types"]))] = value
    for key, value in text.items():
        out["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    assert len(out) == len(unet) + len(vae) + len(text)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(file))
    return file


def write_tiny_sdxl_pipeline(folder: Path, seed: int = 0, *, inpaint: bool = False) -> Path:
    """Save a StableDiffusionXLPipeline with tiny random weights: a UNet with SDXL's `text_time` added
    embedding (pooled text + size/crop conditioning), deeper transformers in its attention block and linear
    projections; a CLIPTextModel (hidden 32) and a CLIPTextModelWithProjection (hidden 64, 10 layers: the
    depth diffusers' checkpoint detection looks for, `resblocks.9`) whose states are concatenated (96).
    `inpaint`: a StableDiffusionXLInpaintPipeline with an inpainting UNet (9 input channels) instead."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    parts = tiny_components(seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=9 if inpaint else 4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=96, norm_num_groups=4, attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)
    common = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, intermediate_size=37, layer_norm_eps=1e-05,
                  num_attention_heads=4, vocab_size=1000, max_position_embeddings=77)
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=64, num_hidden_layers=10, projection_dim=32,
                                                        hidden_act="gelu", **common)).eval()
    with _tokenizer_files(folder) as tok_dir:
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(tok_dir), pad_token="!")
    pipe = (StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline)(
        vae=parts["vae"], unet=unet.eval(), scheduler=parts["scheduler"], tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=2, **common)).eval(),
        text_encoder_2=text_2)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


_OPEN_CLIP = [("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
              (".fc1.", ".c_fc."), (".fc2.", ".c_proj."), (".self_attn.", ".attn."),
              ("text_model.final_layer_norm.", "ln_final."),
              ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
              ("text_model.embeddings.position_embedding.weight", "positional_embedding")]


def _open_clip_state(text: dict) -> dict:
    """A CLIPTextModelWithProjection's state in open_clip's layout (SDXL's second encoder): q/k/v fused into
    `attn.in_proj_*`, the projection as a [hidden, projection] matrix."""
    import torch

    out = {"text_projection": text["text_projection.weight"].T}
    for key, value in text.items():
        if key == "text_projection.weight" or ".k_proj." in key or ".v_proj." in key:
            continue
        if ".q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            value = torch.cat([text[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"])
            key = key.replace(".q_proj." + kind, ".in_proj_" + kind)
        for new, old in _OPEN_CLIP:
            key = key.replace(new, old)
        out[key] = value
    return out


def write_sdxl_single_file(pipe_dir: Path, file: Path) -> Path:
    """A StableDiffusionXLPipeline folder as one original-format SDXL checkpoint (Stability's
    `sd_xl_base_1.0.safetensors` layout): `model.diffusion_model.*` (the added embedding as `label_emb.0.*`),
    `first_stage_model.*`, `conditioner.embedders.0.transformer.text_model.*` (the CLIP text encoder) and
    `conditioner.embedders.1.model.*` (the second, in open_clip's layout)."""
    from safetensors.torch import load_file, save_file

    pipe_dir = Path(pipe_dir)
    sd = Path(file).with_suffix(".sd-part.safetensors")
    write_single_file(pipe_dir, sd, text_encoder=False)  # the UNet and VAE are laid out as SD 1.x's
    out = load_file(str(sd))
    sd.unlink()
    text = load_file(str(pipe_dir / "text_encoder" / "model.safetensors"))
    for key, value in text.items():
        out["conditioner.embedders.0.transformer.text_model." + key.removeprefix("text_model.")] = value
    text_2 = load_file(str(pipe_dir / "text_encoder_2" / "model.safetensors"))
    out.update({"conditioner.embedders.1.model." + k: v for k, v in _open_clip_state(text_2).items()})
    save_file({k: v.contiguous() for k, v in out.items()}, str(file))
    return Path(file)


def write_tiny_inpaint_pipeline(folder: Path, seed: int = 0) -> Path:
    """Save a StableDiffusionInpaintPipeline with tiny random weights and an inpainting UNet (9 input
    channels: the latents, the mask and the masked image's latents, as in SD 1.5 inpainting)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    parts = tiny_components(seed)
    torch.manual_seed(seed + 1)
    parts["unet"] = tiny_unet(in_channels=9)
    return _save_pipeline(StableDiffusionInpaintPipeline, Path(folder), parts)
