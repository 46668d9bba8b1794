"""Image generation end to end: a tiny random diffusers pipeline created into the store with `corral
create --diffusers`, served by a real `corral serve`, called through the official `ollama` and `openai`
packages, and compared with the same pipeline called directly with diffusers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
from PIL import Image

from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import ROOT, start_server
from tests.diffusers_factory import (write_hf_cache, write_sdxl_single_file, write_single_file, write_tiny_lora,
                                     write_tiny_inpaint_pipeline, write_tiny_lcm_pipeline, write_tiny_pipeline,
                                     write_tiny_sdxl_pipeline)

pytest.importorskip("diffusers")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def png_bytes(size=(64, 64), color=(200, 30, 30), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 255).save(out, format="PNG")
    return out.getvalue()


def corral(server, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OLLAMA_HOST=server.host, **(env or {}))
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, pipe_dir):
    return write_tiny_lora(pipe_dir, tmp_path_factory.mktemp("lora") / "style.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory, pipe_dir, lora_file, model_files):
    d = tmp_path_factory.mktemp("imaging")
    register_gguf(Store(d / "models"), "tiny", model_files["tiny"])
    srv = start_server(d / "models", {"CORRAL_DATA_DIR": str(d / "data"), "OLLAMA_MAX_QUEUE": "16"}, log_dir=d)
    try:
        made = corral(srv, "create", "tiny-sd", "--diffusers", str(pipe_dir))
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().endswith("success")
        made = corral(srv, "create", "tiny-style", "--from", "tiny-sd", "--diffusers-lora", str(lora_file))
        assert made.returncode == 0, made.stderr
        srv.data = d / "data"
        yield srv
    finally:
        srv.stop()


def direct(pipe_dir, prompt: str, seed: int, steps: int, **kwargs) -> np.ndarray:
    """The same pipeline called directly with diffusers: what the API must equal."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(pipe_dir))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                 height=64, width=64, **kwargs).images[0]
    return np.asarray(image).astype(int)


# ---- the model in the store ------------------------------------------------------------------


def test_image_model_in_tags_show_and_copy(server):
    client = ollama.Client(host=server.url)
    names = [m.model for m in client.list().models]
    assert "tiny-sd:latest" in names and "tiny-style:latest" in names
    shown = client.show("tiny-sd")
    assert shown.capabilities == ["image"]
    assert shown.details.format == "diffusers"
    assert shown.details.family == "StableDiffusionPipeline"
    client.copy("tiny-sd", "tiny-sd-copy")
    assert client.show("tiny-sd-copy").capabilities == ["image"]
    client.delete("tiny-sd-copy")
    assert "tiny-sd:latest" in [m.model for m in client.list().models]


def test_create_refuses_pickled_weights_and_bad_index(server, pipe_dir):
    def upload(data: bytes) -> str:
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        httpx.post(f"{server.url}/api/blobs/{digest}", content=data).raise_for_status()
        return digest

    index = upload((pipe_dir / "model_index.json").read_bytes())
    r = httpx.post(f"{server.url}/api/create", json={"model": "bad", "files": {
        "model_index.json": index, "unet/diffusion_pytorch_model.bin": upload(b"not a pickle")}})
    assert r.status_code == 400 and "pickled" in r.json()["error"]
    r = httpx.post(f"{server.url}/api/create", json={"model": "bad", "files": {"model_index.json": index}})
    assert r.status_code == 400 and "component" in r.json()["error"]
    r = httpx.post(f"{server.url}/api/create", json={"model": "bad", "files": {"model_index.json": upload(b"[1]")}})
    assert r.status_code == 400 and "_class_name" in r.json()["error"]
    r = httpx.post(f"{server.url}/api/create", json={"model": "bad", "from": "tiny-sd",
                                                      "adapters": {"x.safetensors": index}})
    assert r.status_code == 400 and "safetensors" in r.json()["error"]
    assert "bad:latest" not in [m["model"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]]


def _image(server, model: str, prompt: str = "a red cat", seed: int = 42, steps: int = 3) -> np.ndarray:
    r = ollama.Client(host=server.url).generate(model=model, prompt=prompt, width=64, height=64, steps=steps,
                                                options={"seed": seed}, stream=False)
    return pixels(base64.b64decode(r.image))


def _delete(server, name: str, *loaded_as: str) -> None:
    """Delete a model; its pipeline, used by no other model, is unloaded (soon after: the unload is queued).
    `loaded_as`: other names /api/ps may list it under (the model that loaded it)."""
    client = ollama.Client(host=server.url)
    client.delete(name)
    names = {f"{n}:latest" for n in (name, *loaded_as)}
    deadline = time.time() + 10
    while names & {m.model for m in client.ps().models} and time.time() < deadline:
        time.sleep(0.1)
    assert not names & {m.model for m in client.ps().models}


def test_create_from_the_hugging_face_cache(server, tmp_path):
    """`--diffusers org/name`: a snapshot in the hub cache (HF_HOME/hub, laid out as huggingface_hub does),
    read with no network; the model makes the same image as the pipeline called directly."""
    src = write_tiny_pipeline(tmp_path / "src", seed=3)
    repo = tmp_path / "repo"  # as a full snapshot has them: files a PyTorch pipeline does not read, left out
    shutil.copytree(src, repo)
    extra = ["v1-5-pruned.ckpt", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
             "text_encoder/flax_model.msgpack", "README.md"]
    for rel in extra:
        (repo / rel).write_bytes(b"not for a PyTorch pipeline")
    write_hf_cache(tmp_path / "hf" / "hub", "tiny-org/tiny-sd", repo)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    made = corral(server, "create", "tiny-cached", "--diffusers", "tiny-org/tiny-sd", env=env)
    assert made.returncode == 0, made.stderr
    store = Store(server.models, clean_temp=False)
    index = store.get("tiny-cached").manifest.layer("application/vnd.corral.diffusers.index")
    stored = set(json.loads(store.read_blob(index.digest))["files"])
    assert stored == {f.relative_to(src).as_posix() for f in src.rglob("*") if f.is_file()}
    assert np.array_equal(_image(server, "tiny-cached"), direct(src, "a red cat", 42, 3))
    _delete(server, "tiny-cached")
    missing = corral(server, "create", "nope", "--diffusers", "tiny-org/not-cached", env=env)
    assert missing.returncode == 1 and "not in the local Hugging Face cache" in missing.stderr
    # an interrupted download (the cached file listing names a file the snapshot lacks) is refused
    write_hf_cache(tmp_path / "partial", "tiny-org/partial", src, only=(".json", ".txt"))
    repo = tmp_path / "partial" / "models--tiny-org--partial"
    commit = (repo / "refs" / "main").read_text()
    try:  # the listing snapshot_download keeps (huggingface_hub 1.x+): a huggingface_hub without it skips this
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

        write_tree_cache(str(repo), commit, {f.relative_to(src).as_posix(): TreeCacheEntry(
            size=f.stat().st_size, blob_id="0" * 40) for f in src.rglob("*") if f.is_file()})
    except (ImportError, TypeError):
        pass
    else:
        partial = corral(server, "create", "nope", "--diffusers", "tiny-org/partial",
                         env={"HF_HUB_CACHE": str(tmp_path / "partial"), "HF_HUB_OFFLINE": "1"})
        assert partial.returncode == 1 and "incomplete" in partial.stderr, partial.stderr


def _create_from_single_file(server, tmp_path: Path, name: str, src: Path, ckpt: Path) -> dict[str, str]:
    """Create `name` from the checkpoint with `--config tiny-org/configs`, a cached repository holding only
    `src`'s configs (as from_single_file leaves one); returns the offline cache environment used."""
    cache = tmp_path / "hub"
    write_hf_cache(cache, "tiny-org/configs", src, only=(".json", ".txt"))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    made = corral(server, "create", name, "--diffusers", str(ckpt), "--config", "tiny-org/configs", env=env)
    assert made.returncode == 0, made.stderr
    return env


def test_create_from_a_single_file_checkpoint(server, tmp_path):
    """An original-format SD 1.x checkpoint (model.diffusion_model.*, first_stage_model.*,
    cond_stage_model.*) through diffusers' from_single_file, offline: the configs from a cached repository
    (only its configs, as from_single_file downloads them) or, without --config, from the repository
    diffusers names for the checkpoint's kind, if cached. The weights survive the round trip exactly."""
    src = write_tiny_pipeline(tmp_path / "src", seed=4)
    ckpt = write_single_file(src, tmp_path / "tiny-sd15.safetensors")
    env = _create_from_single_file(server, tmp_path, "tiny-single", src, ckpt)
    assert np.array_equal(_image(server, "tiny-single"), direct(src, "a red cat", 42, 3))
    assert ollama.Client(host=server.url).show("tiny-single").details.family == "StableDiffusionPipeline"
    _delete(server, "tiny-single")
    # no --config: the checkpoint is a v1 one, whose default repository is not cached: refused, nothing fetched
    made = corral(server, "create", "nope", "--diffusers", str(ckpt), env=env)
    assert made.returncode == 1 and "'v1' checkpoint" in made.stderr and "--config" in made.stderr
    # an original LDM .yaml: the UNet, VAE and scheduler come from it, but diffusers still reads the CLIP text
    # encoder's config and tokenizer from the cache (openai/clip-vit-large-patch14), not there: refused, offline
    import yaml

    (tmp_path / "v1.yaml").write_text(yaml.safe_dump({"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 8, "channel_mult": [1, 2],
                                   "attention_resolutions": [2], "num_res_blocks": 1, "num_heads": 2,
                                   "transformer_depth": 1, "context_dim": 32}},
        "first_stage_config": {"params": {"ddconfig": {"z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 8,
                                                       "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1}}}}}}))
    made = corral(server, "create", "nope", "--diffusers", str(ckpt), "--config", str(tmp_path / "v1.yaml"), env=env)
    assert made.returncode == 1 and "openai/clip-vit-large-patch14" in made.stderr
    # a pickled checkpoint is refused before anything reads it
    (tmp_path / "x.ckpt").write_bytes(b"not read")
    made = corral(server, "create", "nope", "--diffusers", str(tmp_path / "x.ckpt"))
    assert made.returncode == 1 and "pickled" in made.stderr


def test_create_from_an_sdxl_single_file_checkpoint(server, tmp_path):
    """An original-format SDXL checkpoint (Stability's layout: the UNet with its added text/size embedding as
    `label_emb`, `conditioner.embedders.0.transformer.*` for the CLIP encoder, `conditioner.embedders.1.model.*`
    in open_clip's layout for the second one, with a projection) becomes a StableDiffusionXLPipeline offline,
    whose image equals the pipeline's own (an empty negative prompt zeroes the negative embeddings, as in
    diffusers' SDXL call without one)."""
    src = write_tiny_sdxl_pipeline(tmp_path / "src", seed=4)
    ckpt = write_sdxl_single_file(src, tmp_path / "tiny-sdxl.safetensors")
    env = _create_from_single_file(server, tmp_path, "tiny-sdxl", src, ckpt)
    assert ollama.Client(host=server.url).show("tiny-sdxl").details.family == "StableDiffusionXLPipeline"
    # the default guidance is the pipeline's own: SDXL's call defaults to 5.0 (SD 1.x's to 7.5)
    assert np.array_equal(_image(server, "tiny-sdxl"), direct(src, "a red cat", 42, 3))
    assert not np.array_equal(_image(server, "tiny-sdxl"), direct(src, "a red cat", 42, 3, guidance_scale=7.5))
    _delete(server, "tiny-sdxl")
    # no --config: diffusers takes it for an SDXL base checkpoint, whose repository is not cached: refused
    made = corral(server, "create", "nope", "--diffusers", str(ckpt), env=env)
    assert made.returncode == 1 and "'xl_base' checkpoint" in made.stderr
    assert "stabilityai/stable-diffusion-xl-base-1.0" in made.stderr


def test_a_pipeline_folder_goes_with_the_last_model_that_uses_it(server, tmp_path):
    """The folder a pipeline is loaded from (hard links to its blobs, under the data directory) is removed,
    and the pipeline unloaded, when no stored model uses that pipeline any more: after the delete of its
    last model, or when a create replaces the model with another pipeline."""
    root = server.data / "imaging" / "pipelines"
    client = ollama.Client(host=server.url)

    def folders() -> set[str]:
        return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else set()

    before = folders()
    assert corral(server, "create", "tiny-gc", "--diffusers", str(write_tiny_pipeline(tmp_path / "a", seed=5))).returncode == 0
    _image(server, "tiny-gc", steps=1)
    (first,) = folders() - before
    client.copy("tiny-gc", "tiny-gc-copy")
    client.delete("tiny-gc")
    assert first in folders()  # the copy still uses it
    _image(server, "tiny-gc-copy", steps=1)
    _delete(server, "tiny-gc-copy", "tiny-gc")
    assert first not in folders()

    assert corral(server, "create", "tiny-gc", "--diffusers", str(tmp_path / "a")).returncode == 0
    _image(server, "tiny-gc", steps=1)
    (again,) = folders() - before
    assert corral(server, "create", "tiny-gc", "--diffusers", str(write_tiny_pipeline(tmp_path / "b", seed=6))).returncode == 0
    assert again not in folders()  # replaced by another pipeline: the old one's folder went with its blobs
    _image(server, "tiny-gc", steps=1)
    _delete(server, "tiny-gc")
    assert folders() == before


def test_prune_folders_at_start(tmp_path):
    """At start every folder whose index blob the store lacks goes; the others and temporary ones stay."""
    from server.imaging.store import prune_folders

    store = Store(tmp_path / "models")
    kept = store.write_blob_bytes(b'{"files": {}}', "application/vnd.corral.diffusers.index").digest
    root = tmp_path / "pipelines"
    for name in (kept.removeprefix("sha256:"), "ab" * 32, ".tmp-x"):
        (root / name / "unet").mkdir(parents=True)
    assert prune_folders(store, root) == ["ab" * 32]
    assert sorted(p.name for p in root.iterdir()) == sorted([".tmp-x", kept.removeprefix("sha256:")])


# ---- Ollama's wire -------------------------------------------------------------------------------


def test_ollama_generate_equals_the_pipeline_called_directly(server, pipe_dir):
    client = ollama.Client(host=server.url)
    r = client.generate(model="tiny-sd", prompt="a red cat", width=64, height=64, steps=3, options={"seed": 42},
                        stream=False)
    assert r.done and r.done_reason == "stop"
    data = base64.b64decode(r.image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(pixels(data), direct(pipe_dir, "a red cat", 42, 3))
    meta = json.loads(Image.open(io.BytesIO(data)).info["corral"])
    assert meta["seed"] == 42 and meta["prompt"] == "a red cat" and meta["steps"] == 3
    assert "Seed: 42" in Image.open(io.BytesIO(data)).info["parameters"]


def test_ollama_stream_reports_each_step(server):
    client = ollama.Client(host=server.url)
    parts = list(client.generate(model="tiny-sd", prompt="a dog", steps=4, options={"seed": 1}, stream=True))
    progress = [p for p in parts if not p.done]
    assert [p.completed for p in progress] == [0, 1, 2, 3, 4]
    assert all(p.total == 4 for p in progress)
    assert parts[-1].done and parts[-1].image and not progress[0].image


def test_empty_prompt_loads_and_keep_alive_zero_unloads(server):
    client = ollama.Client(host=server.url)
    r = client.generate(model="tiny-sd", prompt="")
    assert r.done_reason == "load"
    ps = {m.model: m for m in client.ps().models}
    assert "tiny-sd:latest" in ps and ps["tiny-sd:latest"].size > 0
    r = client.generate(model="tiny-sd", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert "tiny-sd:latest" not in [m.model for m in client.ps().models]


def test_ollama_edit_with_images_and_options(server):
    client = ollama.Client(host=server.url)
    src = png_bytes()
    r = client.generate(model="tiny-sd", prompt="a blue cat", images=[src], steps=4,
                        options={"seed": 3, "strength": 0.5, "scheduler": "Euler", "negative_prompt": "blur"},
                        stream=False)
    meta = json.loads(Image.open(io.BytesIO(base64.b64decode(r.image))).info["corral"])
    assert meta["mode"] == "img2img" and meta["scheduler"] == "Euler" and meta["strength"] == 0.5
    mask = base64.b64encode(png_bytes(mode="L")).decode()
    r = client.generate(model="tiny-sd", prompt="a hat", images=[src], steps=2,
                        options={"seed": 3, "mask": mask}, stream=False)
    assert json.loads(Image.open(io.BytesIO(base64.b64decode(r.image))).info["corral"])["mode"] == "inpaint"


# ---- OpenAI's wire ---------------------------------------------------------------------------------


def test_openai_generations_n_seeds_formats_and_url(server, pipe_dir):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    r = client.images.generate(model="tiny-sd", prompt="a red cat", n=2, size="64x64",
                               extra_body={"seed": 42, "steps": 3})
    assert len(r.data) == 2
    assert [d.model_extra["seed"] for d in r.data] == [42, 43]
    assert np.array_equal(pixels(base64.b64decode(r.data[0].b64_json)), direct(pipe_dir, "a red cat", 42, 3))
    from transformers import CLIPTokenizer

    n = len(CLIPTokenizer.from_pretrained(str(pipe_dir / "tokenizer"))("a red cat").input_ids)
    assert n == 5  # <|startoftext|> a red cat <|endoftext|>: what the text encoder reads, once per request
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (n, 0, n)
    r = client.images.generate(model="tiny-sd", prompt="a red cat", response_format="url", output_format="jpeg",
                               extra_body={"seed": 9, "steps": 2})
    got = httpx.get(r.data[0].url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    assert got.content[:3] == b"\xff\xd8\xff"
    r = client.images.generate(model="tiny-sd", prompt="x", output_format="webp", extra_body={"steps": 1})
    assert base64.b64decode(r.data[0].b64_json)[8:12] == b"WEBP"


def test_openai_stream_partial_images(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    events = list(client.images.generate(model="tiny-sd", prompt="a red cat", stream=True, partial_images=2,
                                         extra_body={"seed": 4, "steps": 6}))
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[-1].size == "64x64" and events[-1].b64_json
    assert events[-1].usage.input_tokens == events[-1].usage.total_tokens == 5 and events[-1].usage.output_tokens == 0


def test_openai_edits_multipart_and_json(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    src, mask = png_bytes(), png_bytes(mode="L")
    r = client.images.edit(model="tiny-sd", image=("in.png", src, "image/png"), mask=("m.png", mask, "image/png"),
                           prompt="a hat", extra_body={"seed": 5, "steps": 2})
    meta = json.loads(Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).info["corral"])
    assert meta["mode"] == "inpaint" and meta["seed"] == 5
    url = "data:image/png;base64," + base64.b64encode(src).decode()
    r = httpx.post(f"{server.url}/v1/images/edits", json={"model": "tiny-sd", "prompt": "x", "image": url,
                                                           "strength": 0.5, "steps": 4, "seed": 1}, timeout=60)
    assert r.status_code == 200, r.text
    meta = json.loads(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).info["corral"])
    assert meta["mode"] == "img2img"


# ---- LoRA per request ----------------------------------------------------------------------------


def test_lora_changes_the_image_and_scale_zero_does_not(server):
    def image(model: str, adapters=None) -> np.ndarray:
        opts = {"seed": 11}
        if adapters is not None:
            opts["adapters"] = adapters
        r = ollama.Client(host=server.url).generate(model=model, prompt="a red cat", steps=3, options=opts,
                                                    stream=False)
        return pixels(base64.b64decode(r.image))

    base = image("tiny-sd")
    assert np.array_equal(image("tiny-sd", [{"name": "tiny-style", "scale": 0.0}]), base)
    styled = image("tiny-sd", [{"name": "tiny-style", "scale": 1.0}])
    assert np.abs(styled - base).max() > 10
    assert np.array_equal(image("tiny-style"), styled)  # the LoRA model itself: its adapter at scale 1
    half = image("tiny-sd", {"tiny-style": 0.5})
    assert not np.array_equal(half, styled) and not np.array_equal(half, base)
    assert np.array_equal(image("tiny-sd"), base)  # adapters off again after a LoRA request
    # one loaded pipeline serves the base and its LoRA models
    assert [m.model for m in ollama.Client(host=server.url).ps().models].count("tiny-sd:latest") <= 1
    assert len(ollama.Client(host=server.url).ps().models) == 1


# ---- serving ---------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_equal_their_solo_images(server):
    async def one(seed: int) -> np.ndarray:
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(f"{server.url}/api/generate", json={"model": "tiny-sd", "prompt": f"cat {seed}",
                                                                 "steps": 3, "stream": False, "options": {"seed": seed}})
            assert r.status_code == 200, r.text
            assert r.json()["seed"] == seed  # Corral's field (the ollama package drops unknown ones)
            return pixels(base64.b64decode(r.json()["image"]))

    async def together() -> list[np.ndarray]:
        return await asyncio.gather(*[one(s) for s in (21, 22, 23)])

    mark = len(server.log_text())
    batched = asyncio.run(together())
    assert "denoising 3 image(s) of 3 request(s)" in server.log_text()[mark:]
    for seed, got in zip((21, 22, 23), batched):
        assert np.array_equal(got, asyncio.run(one(seed)))


def test_client_that_leaves_cancels_its_image_between_steps(server):
    mark = len(server.log_text())
    with httpx.stream("POST", f"{server.url}/api/generate", json={"model": "tiny-sd", "prompt": "long",
                                                                  "steps": 400, "options": {"seed": 1}}, timeout=60) as r:
        lines = r.iter_lines()
        first = [json.loads(next(lines)) for _ in range(3)]
    assert first[-1]["completed"] == 2 and first[-1]["total"] == 400
    deadline = time.time() + 30
    while "denoising run stopped after step" not in server.log_text()[mark:] and time.time() < deadline:
        time.sleep(0.2)
    line = next(x for x in server.log_text()[mark:].splitlines() if "denoising run stopped" in x)
    assert int(line.split("after step ")[1].split()[0]) < 400
    r = httpx.post(f"{server.url}/api/generate", json={"model": "tiny-sd", "prompt": "next", "steps": 1,
                                                       "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["image"]


@pytest.fixture
def drop_model(server, tmp_path, request):
    """The model a row-drop test runs: tiny-sd, or a tiny SDXL pipeline or inpainting one (9-channel UNet)
    created for the test and deleted after it (the tools pick the last image model used)."""
    name = request.param
    makers = {"tiny-xl": write_tiny_sdxl_pipeline, "tiny-inpaint": write_tiny_inpaint_pipeline,
              "tiny-xl-inpaint": lambda d, seed: write_tiny_sdxl_pipeline(d, seed, inpaint=True),
              "tiny-lcm": write_tiny_lcm_pipeline}
    if name not in makers:
        yield name
        return
    made = corral(server, "create", name, "--diffusers", str(makers[name](tmp_path / name, seed=7)))
    assert made.returncode == 0, made.stderr
    try:
        yield name
    finally:
        _delete(server, name)


_IMAGE = {"images": [base64.b64encode(png_bytes()).decode()]}
_INPAINT = {"images": [base64.b64encode(png_bytes()).decode()],
            "options": {"mask": base64.b64encode(png_bytes(mode="L")).decode()}}


@pytest.mark.parametrize("drop_model, extra, levels", [
    ("tiny-sd", {}, 0), ("tiny-xl", {}, 0), ("tiny-xl", _IMAGE, 0), ("tiny-inpaint", _INPAINT, 0),
    # the two steps taken in a batch of two leave one value one colour level off the solo run (CPU kernels
    # round a two-row batch differently); rows cut wrongly would change the whole image
    ("tiny-xl-inpaint", _INPAINT, 1), ("tiny-lcm", {}, 0)],
    ids=["sd", "sdxl", "sdxl-img2img", "inpaint", "sdxl-inpaint", "lcm"], indirect=["drop_model"])
def test_client_that_leaves_a_shared_run_drops_its_rows(server, drop_model, extra, levels):
    """Two requests in one denoising run; one client leaves after two steps: its rows leave the batch (no
    more work for it) and the other request still gets its solo image (exactly, or within `levels` colour
    levels). Stable Diffusion text-to-image, SDXL text-to-image and image-to-image (its pooled embeddings and
    time ids rows too), inpainting with a 9-channel UNet, SD and SDXL (its mask and masked image latents
    rows too), LCM (its guidance embedding and denoised rows too)."""
    body = {"model": drop_model, "steps": 60, **{k: v for k, v in extra.items() if k != "options"}}
    opts = extra.get("options", {})

    async def leaver() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            async with c.stream("POST", f"{server.url}/api/generate",
                                json={**body, "prompt": "goes away", "options": {**opts, "seed": 31}}) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += bool(line.strip())
                    if seen == 3:
                        return

    async def stayer() -> np.ndarray:
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(f"{server.url}/api/generate", json={**body, "prompt": "stays", "stream": False,
                                                                 "options": {**opts, "seed": 32}})
            assert r.status_code == 200, r.text
            return pixels(base64.b64decode(r.json()["image"]))

    async def together() -> np.ndarray:
        return (await asyncio.gather(leaver(), stayer()))[1]

    mark = len(server.log_text())
    got = asyncio.run(together())
    log = server.log_text()[mark:]
    assert "denoising 2 image(s) of 2 request(s)" in log
    line = next(x for x in log.splitlines() if "dropped 1 row(s) of 1 request(s) that went away" in x)
    assert int(line.split("after step ")[1].split()[0]) < 60 and line.rstrip().endswith("1 image(s) go on")
    solo = httpx.post(f"{server.url}/api/generate", json={**body, "prompt": "stays", "stream": False,
                                                          "options": {**opts, "seed": 32}}, timeout=120)
    alone = pixels(base64.b64decode(solo.json()["image"]))
    assert np.abs(got - alone).max() <= levels and np.count_nonzero(got != alone) <= 16 * levels


@pytest.mark.parametrize("drop_model", ["tiny-inpaint"], indirect=True)
def test_an_inpainting_model_needs_a_mask(server, drop_model):
    """A 9-channel inpainting UNet cannot make an image from text alone or edit without a mask: a 400 that
    says so (diffusers would fail inside the run), and with a mask it answers."""
    for extra in ({}, {"images": _INPAINT["images"]}):
        r = httpx.post(f"{server.url}/api/generate", json={"model": drop_model, "prompt": "x", "stream": False,
                                                           "steps": 2, **extra}, timeout=60)
        assert r.status_code == 400 and "inpainting model" in r.json()["error"], r.text
    r = httpx.post(f"{server.url}/api/generate", json={"model": drop_model, "prompt": "x", "stream": False,
                                                       "steps": 2, **_INPAINT}, timeout=60)
    assert r.status_code == 200 and r.json()["image"], r.text


@pytest.mark.parametrize("body, message", [
    ({"options": {"scheduler": "Foo"}}, "unknown scheduler"),
    ({"width": 100}, "multiple of 8"),
    ({"height": 8192}, "at most 4096"),
    ({"steps": 0}, "steps"),
    ({"options": {"adapters": [{"name": "tiny", "scale": 1}]}}, "not a LoRA model"),
    ({"options": {"adapters": [{"name": "nope", "scale": 1}]}}, "not found"),
    ({"images": ["bm90IGFuIGltYWdl"]}, "not an image"),
    ({"images": [base64.b64encode(png_bytes()).decode()],
      "options": {"mask": base64.b64encode(png_bytes((32, 32), mode="L")).decode()}}, "same size"),
])
def test_bad_image_requests_are_400(server, body, message):
    r = httpx.post(f"{server.url}/api/generate", json={"model": "tiny-sd", "prompt": "x", "stream": False, **body},
                   timeout=60)
    assert r.status_code in (400, 404), r.text
    assert message in r.json()["error"]


def test_wrong_kind_of_model_and_openai_errors(server):
    r = httpx.post(f"{server.url}/api/chat", json={"model": "tiny-sd", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "does not support chat" in r.json()["error"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny", prompt="x")
    assert "does not support image generation" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", size="100x100")
    assert "multiple of 8" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", extra_body={"scheduler": "nope"})
    assert "unknown scheduler" in err.value.body["message"]
    r = httpx.post(f"{server.url}/v1/images/edits", json={"model": "tiny-sd", "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    assert httpx.get(f"{server.url}/api/version").status_code == 200


# ---- tools -----------------------------------------------------------------------------------------


def test_generate_and_edit_image_tools_return_artifacts(server):
    r = httpx.post(f"{server.url}/api/tools/generate_image",
                   json={"arguments": {"prompt": "a red cat", "model": "tiny-sd", "steps": 2, "seed": 8}}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    art = out["artifacts"][0]
    assert art["media_type"] == "image/png" and out["json"]["images"][0]["seed"] == 8
    got = httpx.get(f"{server.url}{art['url']}")
    assert got.status_code == 200 and json.loads(Image.open(io.BytesIO(got.content)).info["corral"])["seed"] == 8
    r = httpx.post(f"{server.url}/api/tools/edit_image",
                   json={"arguments": {"prompt": "a hat", "image": art["digest"], "steps": 2, "strength": 0.5}},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["artifacts"][0]["digest"] != art["digest"]
    r = httpx.post(f"{server.url}/api/tools/edit_image",
                   json={"arguments": {"prompt": "a hat", "image": "sha256:" + "0" * 64}}, timeout=60)
    assert r.status_code == 422
