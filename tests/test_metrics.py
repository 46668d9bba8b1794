"""GET /metrics against a real server: Prometheus text format, live values, counters that survive unloads."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(server) -> dict[str, dict]:
    """{family name: {"type": ..., "samples": {(sample name, labels as a sorted tuple): value}}}."""
    r = httpx.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {}
    for family in text_string_to_metric_families(r.text):
        families[family.name] = {
            "type": family.type,
            "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples},
        }
    return families


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    return families[family]["samples"].get((sample or family, tuple(sorted(labels.items()))), 0.0)


def generate(server, **body) -> dict:
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "stream": False, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def tiny_name(server) -> str:
    names = [m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"].startswith("tiny")]
    assert len(names) == 1
    return names[0]


def test_generation_moves_the_counters(corral_server):
    generate(corral_server, prompt="warm up", options={"num_predict": 2})
    model = tiny_name(corral_server)
    before = scrape(corral_server)
    out = generate(corral_server, prompt="count the tokens of this prompt", options={"num_predict": 5, "temperature": 0})
    after = scrape(corral_server)

    for name in ("corral_prompt_tokens", "corral_generated_tokens", "corral_decode_steps"):
        assert after[name]["type"] == "counter"
    delta = lambda family: (value(after, family, family + "_total", model=model)
                            - value(before, family, family + "_total", model=model))
    assert delta("corral_generated_tokens") == out["eval_count"] > 0
    assert delta("corral_prompt_tokens") == out["prompt_eval_count"] > 0
    assert delta("corral_decode_steps") >= out["eval_count"]

    assert value(after, "corral_models_loaded") >= 1
    assert value(after, "corral_requests_processing", model=model) == 0
    assert value(after, "corral_requests_queued", model=model) == 0
    assert 0 < value(after, "corral_kv_cache_usage_ratio", model=model) <= 1
    ps = {m["name"]: m for m in httpx.get(corral_server.url + "/api/ps").json()["models"]}
    assert value(after, "corral_model_size_bytes", model=model) == ps[model]["size"]
    assert value(after, "corral_model_vram_bytes", model=model) == ps[model]["size_vram"]
    assert value(after, "corral_tokens_per_second", model=model) > 0
    # every per-model sample is labelled with a model's name, and only with it
    for family in after.values():
        for _, labels in family["samples"]:
            assert not labels or [k for k, _ in labels] == ["model"]


def test_counters_survive_an_unload(corral_server):
    generate(corral_server, prompt="before unloading", options={"num_predict": 3})
    model = tiny_name(corral_server)
    before = scrape(corral_server)
    generate(corral_server, prompt="", keep_alive=0)  # unload
    after = scrape(corral_server)
    assert value(after, "corral_models_loaded") == value(before, "corral_models_loaded") - 1
    assert ("corral_requests_processing", (("model", model),)) not in after["corral_requests_processing"]["samples"]
    for name in ("corral_prompt_tokens", "corral_generated_tokens", "corral_decode_steps"):
        assert value(after, name, name + "_total", model=model) == value(before, name, name + "_total", model=model) > 0

    # loaded again, the new runner's counts add to what the earlier ones did
    out = generate(corral_server, prompt="after unloading", options={"num_predict": 3})
    again = scrape(corral_server)
    assert (value(again, "corral_generated_tokens", "corral_generated_tokens_total", model=model)
            == value(after, "corral_generated_tokens", "corral_generated_tokens_total", model=model) + out["eval_count"])
