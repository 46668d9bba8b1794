"""LoRA adapters applied while serving: ADAPTER models, per-request adapter sets, one shared base, the
prefix cache keyed by adapter set, /api/adapters, and bad input.

The adapters are random GGUF LoRAs written for the real Gemma 3 270M (tests/lora_factory.py), created
into the store through the official `ollama` package (blob upload + create with `adapters`), as the
real CLI does for a Modelfile's ADAPTER line.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import ollama
import pytest

import msgspec

from server.config import Settings
from server.engine.job import Done, Job, Sampling, adapter_set
from server.engine.llama import LlamaModel
from server.engine.runner import Runner
from server.inference import GenerateParams
from server.store import manifest as mf
from server.services import build_services
from server.store.store import Store
from tests.conftest import copy_store, start_server
from tests.lora_factory import write_random_lora

PROMPT = "The capital of France is"
N_ADAPTERS = 4


def _model_blob(store_root: Path, name: str) -> Path:
    store = Store(store_root)
    return store.blob_path(store.get(name).manifest.layer(mf.MODEL).digest)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, store_dir, model_files) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loras")
    base = _model_blob(store_dir, "gemma3:270m")
    files = {f"a{i}": write_random_lora(base, d / f"a{i}.gguf", seed=i + 1) for i in range(N_ADAPTERS)}
    files["wide"] = write_random_lora(base, d / "wide.gguf", seed=9, wrong_width=True)
    files["tiny"] = write_random_lora(model_files["tiny"], d / "tiny.gguf", seed=5)
    return files


def create_adapter_models(url: str, lora_files: dict[str, Path]) -> None:
    client = ollama.Client(host=url)
    for i in range(N_ADAPTERS):
        digest = client.create_blob(lora_files[f"a{i}"])
        client.create(model=f"gemma-a{i}", from_="gemma3:270m", adapters={f"a{i}.gguf": digest})
    digest = client.create_blob(lora_files["tiny"])
    client.create(model="tiny-a", from_="tiny", adapters={"tiny.gguf": digest})


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory, store_dir, lora_files):
    """Deterministic mode (so a seeded text is the same alone and beside others), four sequences."""
    models = copy_store(store_dir, tmp_path_factory.mktemp("adapter-store") / "models")
    server = start_server(models, {"OLLAMA_NUM_PARALLEL": "4", "CORRAL_DETERMINISTIC": "1"})
    create_adapter_models(server.url, lora_files)
    yield server
    server.stop()


def generate(url: str, model: str, prompt: str = PROMPT, **options) -> ollama.GenerateResponse:
    opts = {"temperature": 0.8, "seed": 42, "num_predict": 16} | options
    return ollama.Client(host=url).generate(model=model, prompt=prompt, raw=True, options=opts)


def test_an_adapter_model_answers_with_its_adapter(adapter_server):
    base = generate(adapter_server.url, "gemma3:270m").response
    tuned = generate(adapter_server.url, "gemma-a0").response
    assert tuned and tuned != base
    # the same adapter named per request on the base gives the adapter model's text
    named = generate(adapter_server.url, "gemma3:270m", adapters=[{"name": "gemma-a0", "scale": 1.0}]).response
    assert named == tuned
    # ... and so does its layer named by digest
    layer = next(a for a in httpx.get(adapter_server.url + "/api/adapters").json()["adapters"]
                 if a["models"] == ["gemma-a0:latest"])
    by_digest = generate(adapter_server.url, "gemma3:270m", adapters=[{"name": layer["digest"]}]).response
    assert by_digest == tuned


def test_scale_zero_gives_exactly_the_base(adapter_server):
    base = generate(adapter_server.url, "gemma3:270m", temperature=0)
    zero = generate(adapter_server.url, "gemma3:270m", temperature=0, adapters=[{"name": "gemma-a1", "scale": 0}])
    half = generate(adapter_server.url, "gemma3:270m", temperature=0, adapters=[{"name": "gemma-a1", "scale": 0.5}])
    assert zero.response == base.response
    assert half.response != base.response


def test_scales_of_one_adapter_add_up(adapter_server):
    """LoRA's arithmetic: W + s1·BA + s2·BA = W + (s1+s2)·BA."""
    twice = generate(adapter_server.url, "gemma3:270m", temperature=0,
                     adapters=[{"name": "gemma-a2", "scale": 0.25}, {"name": "gemma-a2", "scale": 0.5}])
    once = generate(adapter_server.url, "gemma3:270m", temperature=0, adapters=[{"name": "gemma-a2", "scale": 0.75}])
    assert twice.response == once.response


def test_four_adapters_at_once_give_their_solo_texts(adapter_server):
    url = adapter_server.url
    prompts = [f"Tell me a fact number {i}:" for i in range(N_ADAPTERS)]
    alone = [generate(url, f"gemma-a{i}", prompts[i], seed=42 + i).response for i in range(N_ADAPTERS)]
    assert len(set(alone)) == N_ADAPTERS

    async def together() -> list[str]:
        client = ollama.AsyncClient(host=url)
        answers = await asyncio.gather(*[
            client.generate(model=f"gemma-a{i}", prompt=prompts[i], raw=True,
                            options={"temperature": 0.8, "seed": 42 + i, "num_predict": 16})
            for i in range(N_ADAPTERS)])
        return [a.response for a in answers]

    for _ in range(2):
        assert asyncio.run(together()) == alone
    # the four share one loaded base
    ps = ollama.Client(host=url).ps()
    names = {m.model for m in ps.models}
    assert {f"gemma-a{i}:latest" for i in range(N_ADAPTERS)} <= names


def test_sequences_on_different_adapters_share_each_decode(store_dir, lora_files):
    """Corral's llama.cpp takes adapters per sequence: four jobs on four adapter sets (one with two
    stacked, one on the base) decode in the same steps, 16 tokens each in about 16 steps rather than
    one set's rows per step, and the graph's adapter set changes once, not at every turn."""
    model = LlamaModel(_model_blob(store_dir, "gemma3:270m"))
    runner = Runner(model, n_ctx=256, n_parallel=4)
    assert runner.per_seq_adapters, "llama.cpp was built without Corral's patch (scripts/install.sh applies it)"
    sets = [adapter_set([(lora_files["a0"], 1.0)]), adapter_set([(lora_files["a1"], 0.5), (lora_files["a2"], 1.0)]),
            adapter_set([(lora_files["a3"], 2.0)]), ()]
    jobs = [Job(tokens=model.tokenize(f"Tell me a fact number {i}:"), num_predict=16, ignore_eos=True,
                sampling=Sampling(temperature=0), adapters=sets[i]) for i in range(4)]

    async def run() -> list[Done]:
        async def done(job: Job) -> Done:
            return [event async for event in runner.generate(job)][-1]

        with runner._wake:  # queue all four before the decode thread looks
            tasks = [asyncio.ensure_future(done(job)) for job in jobs]
            for _ in range(10):
                await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(run())
        steps, switches = runner.stats["steps"], runner.stats["adapter_switches"]
    finally:
        runner.close()
        model.close()
    assert all(isinstance(r, Done) and r.eval_count == 16 for r in results)
    assert steps <= 18, steps  # one step of four prompts, then 15 of four tokens each
    assert switches <= 2, switches


def test_the_prefix_cache_is_keyed_by_adapter_set(tmp_path, store_dir, lora_files):
    """One sequence: a prompt computed under the base must not be reused under an adapter."""
    server = start_server(copy_store(store_dir, tmp_path / "models"), {"OLLAMA_NUM_PARALLEL": "1"})
    try:
        create_adapter_models(server.url, lora_files)
        # no seed: a seeded request never reuses cells (it is computed as on an idle server)
        first = generate(server.url, "gemma-a0", temperature=0, seed=-1)
        base = generate(server.url, "gemma3:270m", temperature=0, seed=-1)
        again_base = generate(server.url, "gemma3:270m", temperature=0, seed=-1)
        again = generate(server.url, "gemma-a0", temperature=0, seed=-1)
        assert again_base.prompt_eval_count < base.prompt_eval_count  # the cache is on...
        assert again.response == first.response  # ...but not reused across adapter sets
        assert again.prompt_eval_count == first.prompt_eval_count
    finally:
        server.stop()


def test_adapter_routes(adapter_server):
    url = adapter_server.url
    listed = httpx.get(url + "/api/adapters").json()["adapters"]
    by_model = {a["models"][0].removesuffix(":latest"): a for a in listed}
    assert {f"gemma-a{i}" for i in range(N_ADAPTERS)} | {"tiny-a"} <= set(by_model)
    a3 = by_model["gemma-a3"]
    assert a3["architecture"] == "gemma3" and a3["alpha"] == 16.0 and a3["size"] > 0
    assert a3["base"] == by_model["gemma-a0"]["base"] != by_model["tiny-a"]["base"]

    r = httpx.post(url + "/api/adapters/load", json={"model": "gemma3:270m", "adapter": "gemma-a3"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success", "model": "gemma3:270m", "adapters": [a3["digest"]]}
    held = {a["digest"]: a["loaded_in"] for a in httpx.get(url + "/api/adapters").json()["adapters"]}
    assert any(name.startswith("gemma") for name in held[a3["digest"]])

    r = httpx.post(url + "/api/adapters/unload", json={"model": "gemma3:270m", "adapter": "gemma-a3"})
    assert r.status_code == 200, r.text
    deadline = time.time() + 10
    while time.time() < deadline:
        held = {a["digest"]: a["loaded_in"] for a in httpx.get(url + "/api/adapters").json()["adapters"]}
        if not held[a3["digest"]]:
            break
        time.sleep(0.1)
    assert held[a3["digest"]] == []
    # a request naming it loads it again
    assert generate(url, "gemma3:270m", num_predict=2, adapters=[{"name": "gemma-a3"}]).response


@pytest.mark.parametrize("adapters, words", [
    ([{"name": "no-such-adapter"}], "not found"),
    ([{"name": "gemma-a0", "scale": -1}], "must not be negative"),
    ([{"name": "gemma-a0", "scale": "x"}], "must be a number"),
    ([{"name": "gemma-a0", "scale": True}], "must be a number"),
    ({"name": "gemma-a0"}, "must be a list"),
    ([{"scale": 1}], "with a name"),
    ([{"name": "tiny-a"}], "other base weights"),
    ([{"name": "gemma3:270m"}], "no LoRA adapter"),
    ([{"name": "sha256:" + "0" * 64}], "not found"),
])
def test_bad_adapter_options_are_400(adapter_server, adapters, words):
    for path, body in (("/api/generate", {"prompt": PROMPT}), ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]})):
        r = httpx.post(adapter_server.url + path, json={"model": "gemma3:270m", "stream": False,
                                                         "options": {"adapters": adapters, "num_predict": 2}} | body)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]
    assert generate(adapter_server.url, "gemma3:270m", num_predict=2).response  # still serving


def test_layers_by_digest_are_checked_against_the_base(adapter_server, lora_files):
    client = ollama.Client(host=adapter_server.url)
    wide = client.create_blob(lora_files["wide"])  # a blob, not a model: named by digest it is checked
    r = httpx.post(adapter_server.url + "/api/generate", json={
        "model": "gemma3:270m", "prompt": PROMPT, "stream": False, "options": {"adapters": [{"name": wide}]}})
    assert r.status_code == 400 and "does not fit" in r.json()["error"], r.text
    base_weights = next(a for a in httpx.get(adapter_server.url + "/api/adapters").json()["adapters"]
                        if a["models"] == ["gemma-a0:latest"])["base"]
    r = httpx.post(adapter_server.url + "/api/generate", json={
        "model": "gemma3:270m", "prompt": PROMPT, "stream": False, "options": {"adapters": [{"name": base_weights}]}})
    assert r.status_code == 400 and "not a GGUF LoRA adapter" in r.json()["error"], r.text


def test_adapter_routes_bad_input(adapter_server):
    url = adapter_server.url
    cases = [
        ({"model": "no-such-model", "adapter": "gemma-a0"}, 404),
        ({"model": "gemma3:270m", "adapter": "no-such-adapter"}, 404),
        ({"model": "gemma3:270m", "adapter": "tiny-a"}, 400),
        ({"model": "gemma3:270m"}, 400),
        ({"model": "gemma3:270m", "adapter": "gemma-a0", "extra": 1}, 400),
    ]
    for body, status in cases:
        r = httpx.post(url + "/api/adapters/load", json=body, timeout=60)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    r = httpx.post(url + "/api/adapters/unload", json={"model": "tiny", "adapter": "tiny-a"})
    assert r.status_code == 404 and "not loaded" in r.json()["error"]
    r = httpx.post(url + "/api/embed", json={"model": "gemma-a0", "input": "hi"})
    assert r.status_code == 400 and "adapters" in r.json()["error"]


async def test_one_base_counted_once_in_the_memory_plan(tmp_path, store_dir, lora_files, monkeypatch):
    """In-process: the adapter models hold the base model's weights and runner, and the plan counts the
    base once; when the base model goes, an adapter model takes over counting it."""
    models = copy_store(store_dir, tmp_path / "models")
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    monkeypatch.setenv("CORRAL_NO_DEFAULT_MODEL", "1")
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path / "data"))
    async with build_services(Settings.from_env()) as services:
        store = services.store
        manifest = store.get("gemma3:270m").manifest
        for i in range(2):  # FROM gemma3:270m, ADAPTER a<i>: the manifest `ollama create` writes
            layer = store.import_file(lora_files[f"a{i}"])
            adapter = mf.Layer(mediaType=mf.ADAPTER, digest=layer.digest, size=layer.size)
            store.write_manifest(f"plan-a{i}", msgspec.structs.replace(manifest, layers=[*manifest.layers, adapter]))
        inference, scheduler = services.inference, services.scheduler
        await inference.load("gemma3:270m")
        await inference.load("plan-a0")
        await inference.load("plan-a1")
        loaded = {l.name: l for l in scheduler.running()}
        base, a0, a1 = loaded["gemma3:270m"], loaded["plan-a0:latest"], loaded["plan-a1:latest"]
        assert base.runner is a0.runner is a1.runner
        adapter_bytes = lora_files["a0"].stat().st_size
        assert a0.plan.cpu_bytes + a0.plan.gpu_bytes == adapter_bytes
        total = sum(l.plan.cpu_bytes + l.plan.gpu_bytes for l in scheduler.loaded.values())
        assert total == base.plan.cpu_bytes + base.plan.gpu_bytes + 2 * adapter_bytes
        assert a0.size == base.size + adapter_bytes  # what /api/ps shows for it
        await scheduler.unload(base.model.digest)
        left = list(scheduler.loaded.values())
        assert len(left) == 2 and base.runner.ctx is not None  # the runner lives on for the others
        assert sum(l.plan.cpu_bytes + l.plan.gpu_bytes for l in left) == total  # the base still counted once
        answer = await inference.generate_once(GenerateParams(model="plan-a0", prompt=PROMPT, raw=True,
                                                              options={"num_predict": 4, "temperature": 0}))
        assert answer.content


def test_adapters_through_the_openai_api(adapter_server):
    """The `openai` SDK sends Corral's options in extra_body; the adapter applies as on /api/chat."""
    import openai

    messages = [{"role": "user", "content": "Name a colour."}]
    client = openai.OpenAI(base_url=adapter_server.url + "/v1", api_key="unused")
    via_openai = client.chat.completions.create(
        model="gemma3:270m", messages=messages, max_tokens=12, temperature=0,
        extra_body={"options": {"adapters": [{"name": "gemma-a1", "scale": 1.0}]}})
    via_ollama = ollama.Client(host=adapter_server.url).chat(
        model="gemma-a1", messages=messages, options={"num_predict": 12, "temperature": 0})
    base = ollama.Client(host=adapter_server.url).chat(
        model="gemma3:270m", messages=messages, options={"num_predict": 12, "temperature": 0})
    assert via_openai.choices[0].message.content == via_ollama.message.content != base.message.content
    with pytest.raises(openai.BadRequestError, match="must not be negative"):
        client.chat.completions.create(model="gemma3:270m", messages=messages, max_tokens=2,
                                       extra_body={"options": {"adapters": [{"name": "gemma-a1", "scale": -2}]}})
