"""Issue 20: what Corral says it is (the Ollama API version clients gate on, and Corral's own), and
the embedded default model's bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from server import OLLAMA_API_VERSION, __version__
from server.store import manifest as mf
from server.store.default_model import NAME, OLD_PARAMETERS, PARAMETERS, ensure_default_model
from server.store.register import register_gguf
from server.store.store import Store


def semver(text: str) -> tuple[int, int, int]:
    major, minor, patch = text.split("-", 1)[0].split(".")
    return int(major), int(minor), int(patch)


def test_version_is_the_ollama_api_version(corral_server):
    body = httpx.get(corral_server.url + "/api/version").json()
    # GitHub Copilot Chat's Ollama provider refuses a server below 0.6.4
    assert semver(body["version"]) >= (0, 6, 4)
    assert body["version"] == OLLAMA_API_VERSION
    assert body["corral"] == __version__


def test_official_client_reads_version_with_extra_field(corral_server):
    """The extra `corral` field breaks neither the ollama client (its models ignore unknown
    fields) nor a plain reader of `version`."""
    import ollama

    client = ollama.Client(host=corral_server.url)
    assert client.show("tiny").capabilities  # a typed response from the same server still parses
    raw = client._client.get("/api/version").json()
    assert set(raw) == {"version", "corral"}


def test_corral_version_header_on_every_response(corral_server):
    url = corral_server.url
    responses = [
        httpx.get(url + "/api/version"),
        httpx.head(url + "/"),
        httpx.get(url + "/api/tags"),
        httpx.post(url + "/api/show", json={"model": "no-such-model"}),  # an error
        httpx.get(url + "/api/version", headers={"Host": "evil.example.com"}),  # refused in the middleware
        httpx.options(url + "/api/chat", headers={"Origin": "http://localhost:3000",
                                                 "Access-Control-Request-Method": "POST"}),  # CORS preflight
    ]
    # (a path no route matches is answered by Litestar before any middleware runs: no header there,
    # as no CORS headers either)
    assert [r.status_code for r in responses][3:5] == [404, 403]
    for r in responses:
        assert r.headers["x-corral-version"] == __version__, r.request.url


def test_corral_version_flag():
    script = Path(sys.executable).parent / "corral"  # the installed console script
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert __version__ in out.stdout and OLLAMA_API_VERSION in out.stdout


def test_embedded_model_answers_within_its_bound(corral_server):
    # up to 256 tokens: seconds on an idle machine, minutes on a loaded 2-core one
    r = httpx.post(corral_server.url + "/api/chat", timeout=900, json={
        "model": NAME, "stream": False, "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] and body["done_reason"] in ("stop", "length")
    assert body["eval_count"] <= 256


def test_embedded_model_shows_its_bound(corral_server):
    show = httpx.post(corral_server.url + "/api/show", json={"model": NAME}).json()
    lines = show["parameters"].splitlines()
    assert any(line.split() == ["num_predict", "256"] for line in lines), show["parameters"]
    assert any(line.startswith("stop") and "<start_of_turn>" in line for line in lines)


def test_request_options_override_the_bound(corral_server):
    r = httpx.post(corral_server.url + "/api/generate", timeout=300, json={
        "model": NAME, "stream": False, "prompt": "The capital of France is", "raw": True,
        "options": {"num_predict": 3, "temperature": 0}})
    assert r.status_code == 200, r.text
    assert r.json()["eval_count"] <= 3


def test_earlier_registration_gets_the_bound(tmp_path, model_files):
    """A store written by an earlier Corral holds gemma3:270m with the unbounded parameters: a start
    gives it the current ones; parameters a user chose are left alone."""
    store = Store(tmp_path / "models")
    register_gguf(store, NAME, model_files["tiny"], parameters=OLD_PARAMETERS[0])
    ensure_default_model(store)
    params = json.loads(store.read_blob(store.find(NAME).manifest.layer(mf.PARAMS).digest))
    assert params == PARAMETERS

    mine = {"num_predict": 4000, "stop": ["<end_of_turn>"]}
    register_gguf(store, NAME, model_files["tiny"], parameters=mine)
    ensure_default_model(store)
    assert json.loads(store.read_blob(store.find(NAME).manifest.layer(mf.PARAMS).digest)) == mine
