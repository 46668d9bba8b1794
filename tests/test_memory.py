"""Memory planning: estimates from GGUF metadata, layer placement, refusal and eviction."""

from __future__ import annotations

import ollama
import pytest

from server.engine.memory import GiB, Estimate, InsufficientMemory, estimate, parse_size, plan
from server.store.gguf import read_info
from tests.conftest import copy_store, start_server


def test_estimate_from_gguf(model_files):
    path = model_files["tiny"]
    info = read_info(str(path))
    est = estimate(info, path.stat().st_size, cells=4 * 4096, kv_type="f16", n_batch=512, n_seq=4)
    # 2 layers x 16384 cells x 2 KV heads x (16 + 16) x 2 bytes
    assert est.kv == 2 * 16384 * 2 * 32 * 2
    q8 = estimate(info, path.stat().st_size, cells=4 * 4096, kv_type="q8_0", n_batch=512, n_seq=4)
    assert q8.kv == int(est.kv / 2 * 34 / 32)
    assert est.weights == path.stat().st_size and est.total > est.weights + est.kv


def test_plan_offloads_what_fits():
    est = Estimate(weights=4 * GiB, kv=1 * GiB, compute=GiB // 4, n_layer=32)
    everything = plan(est, gpu_free=80 * GiB, ram_free=8 * GiB)
    assert everything.gpu_layers == 33 and everything.cpu_bytes < est.per_layer
    half = plan(est, gpu_free=3 * GiB, ram_free=8 * GiB)
    assert 0 < half.gpu_layers < 33 and half.gpu_bytes <= 3 * GiB and half.cpu_bytes > 0
    assert half.gpu_bytes + half.cpu_bytes == est.total
    cpu_only = plan(est, gpu_free=0, ram_free=8 * GiB)
    assert cpu_only.gpu_layers == 0 and cpu_only.cpu_bytes == est.total
    assert plan(est, gpu_free=80 * GiB, ram_free=8 * GiB, num_gpu=10).gpu_layers == 10
    with pytest.raises(InsufficientMemory, match=r"model requires more system memory \(5.2 GiB\)"):
        plan(est, gpu_free=0, ram_free=2 * GiB)
    assert parse_size("1.5GiB") == int(1.5 * GiB) and parse_size("512MiB") == 512 << 20 and parse_size("100") == 100


@pytest.fixture
def small_memory_server(store_dir, tmp_path):
    """gemma3:270m (541 MiB planned at num_ctx 4096 x 4) and tiny (30 MiB): room for one of them."""
    root = copy_store(store_dir, tmp_path / "models")
    server = start_server(root, {"CORRAL_MEMORY_LIMIT": "560MiB"}, log_dir=tmp_path)
    yield server
    server.stop()


def test_refuses_what_cannot_fit_and_evicts_idle_models(small_memory_server):
    client = ollama.Client(host=small_memory_server.url)
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("gemma3:270m", "hi", options={"num_predict": 1, "num_ctx": 8192})
    assert e.value.status_code == 500 and "model requires more system memory" in e.value.error
    assert client.generate("gemma3:270m", "hi", options={"num_predict": 1}).done  # fits at the default num_ctx
    assert [m.model for m in client.ps().models] == ["gemma3:270m"]
    assert client.generate("tiny", "hi", options={"num_predict": 1}).done  # no room beside it: gemma goes
    assert [m.model for m in client.ps().models] == ["tiny:latest"]
    size = client.ps().models[0].size
    assert 0 < size < 560 << 20


def test_kv_cache_type_and_deterministic_mode(store_dir, tmp_path):
    """CORRAL_DETERMINISTIC serves with a q8_0 cache (f16 where the model's head size forbids it) and
    gives the same greedy answers alone, four at a time with two waiting, and alone again (prompts
    and answers this short stay under the sizes where the f16 flash-attention kernel changes
    variant: 64 query rows, 512 cache cells)."""
    import asyncio

    det = start_server(store_dir, {"CORRAL_DETERMINISTIC": "1"}, log_dir=tmp_path)
    try:
        client = ollama.Client(host=det.url)
        client.generate("tiny", "", keep_alive=-1)  # head size 16: q8_0 impossible, f16 used
        assert "KV cache type q8_0 is not supported by this model; using f16" in det.log_text()
        prompts = ["one", "two", "three", "four", "five", "six"]

        async def run():
            aclient = ollama.AsyncClient(host=det.url)

            async def answer(p: str) -> str:
                r = await aclient.generate("tiny", p, options={"temperature": 0, "num_predict": 12})
                return r.response

            solo = [await answer(p) for p in prompts]
            together = await asyncio.gather(*[answer(p) for p in prompts])  # 4 sequences, 2 waiting
            again = [await answer(p) for p in prompts]
            return solo, list(together), again

        solo, together, again = asyncio.run(run())
        assert all(solo) and together == solo and again == solo
    finally:
        det.stop()
