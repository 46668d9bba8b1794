"""Every bad input gets a clear error in Ollama's shape, and the server keeps serving."""

from __future__ import annotations

import json
import threading

import httpx
import ollama
import pytest

from server.store import manifest as mf
from server.store.store import Store
from tests.conftest import start_server


def post(server, path: str, **kw) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kw)


def assert_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and fragment in body["error"], body


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/api/copy"])
def test_malformed_json(corral_server, path):
    assert_error(post(corral_server, path, content=b"{not json"), 400, "invalid JSON")


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed"])
def test_missing_body(corral_server, path):
    assert_error(post(corral_server, path, content=b""), 400, "missing request body")


def test_wrong_field_types(corral_server):
    assert_error(post(corral_server, "/api/generate", json={"model": "tiny", "prompt": 5}), 400, "prompt")
    assert_error(post(corral_server, "/api/chat", json={"model": "tiny", "messages": "hi"}), 400, "messages")
    assert_error(post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x",
                                                            "options": {"temperature": "hot"}}), 400, "temperature")
    assert_error(post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x",
                                                            "options": {"num_predict": "2"}}), 400, "num_predict")


def test_go_decoding_leniency(corral_server):
    """What Ollama's Go decoder accepts is accepted: nulls mean "not sent", an integer option given as
    1.9 is truncated to 1, a role is lower-cased."""
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "system": None, "template": None,
                                                   "suffix": None, "raw": None, "stream": False,
                                                   "options": {"num_predict": 1.9, "temperature": None}})
    assert r.status_code == 200 and r.json()["eval_count"] == 1, r.text
    messages = [{"role": "User", "content": "weather?", "images": None},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "content": "sunny", "tool_name": None}]
    r = post(corral_server, "/api/chat", json={"model": "tiny", "messages": messages, "stream": False,
                                               "format": None, "think": None, "options": {"num_predict": 1}})
    assert r.status_code == 200 and r.json()["done"] is True, r.text


def test_unknown_options_are_ignored(corral_server):
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False, "options": {
        "num_predict": 2, "mirostat": 1, "low_vram": True, "f16_kv": True, "penalize_newline": True, "tfs_z": 1}})
    assert r.status_code == 200 and r.json()["done"]


def test_unknown_model(corral_server):
    for path, body in [("/api/generate", {"model": "nope", "prompt": "x"}),
                       ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/show", {"model": "nope"}), ("/api/embed", {"model": "nope", "input": "x"})]:
        assert_error(post(corral_server, path, json=body), 404, "model 'nope' not found")
    r = httpx.request("DELETE", corral_server.url + "/api/delete", json={"model": "nope"})
    assert_error(r, 404, "not found")


def test_prompt_longer_than_context(corral_server):
    long_prompt = "word " * 600
    body = {"model": "tiny", "prompt": long_prompt, "stream": False, "options": {"num_ctx": 256, "num_predict": 2}}
    r = post(corral_server, "/api/generate", json={**body, "truncate": False})
    assert_error(r, 400, "the input length exceeds the context length")
    r = post(corral_server, "/api/generate", json=body)  # default: truncated like Ollama
    assert r.status_code == 200 and r.json()["prompt_eval_count"] <= 256
    r = post(corral_server, "/api/embed", json={"model": "tiny", "input": long_prompt, "truncate": False,
                                                "options": {"num_ctx": 256}})
    assert_error(r, 400, "the input length exceeds the context length")


@pytest.mark.parametrize("value", ["forever", "5 minutes", "1x", True])
def test_invalid_keep_alive(corral_server, value):
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "keep_alive": value})
    assert r.status_code == 400 and "error" in r.json()


def test_negative_num_predict(corral_server):
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "options": {"num_predict": -5}})
    assert_error(r, 400, "num_predict")
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                   "options": {"num_predict": 2, "num_ctx": 64}})
    assert r.status_code == 200


def test_raw_with_template_is_refused(corral_server):
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "x", "raw": True, "template": "{{ .Prompt }}"})
    assert_error(r, 400, "raw mode does not support template, system, or context")


def test_invalid_names_and_methods(corral_server):
    assert_error(post(corral_server, "/api/show", json={"model": "../../etc/passwd"}), 400, "invalid model name")
    r = httpx.get(corral_server.url + "/api/generate")
    assert r.status_code == 405 and "error" in r.json()
    assert httpx.get(corral_server.url + "/api/nope").status_code == 404


@pytest.mark.parametrize("host, allowed", [
    ("localhost:11434", True), ("127.0.0.2", True), ("[::1]:11434", True), ("0.0.0.0", True),
    ("10.1.2.3:80", True), ("172.31.0.1", True), ("192.168.1.1", True), ("[fd00::1]", True),
    ("box.local", True), ("api.internal:8080", True), ("x.localhost", True), ("", True),
    ("evil.example.com", False), ("172.32.0.1", False), ("192.0.2.1", False), ("198.18.0.1", False),
    ("169.254.1.1", False), ("8.8.8.8", False), ("localhost.evil.com", False),
])
def test_host_rule_is_ollamas(host, allowed):
    """As Ollama's allowedHostsMiddleware: loopback, unspecified and Go's private ranges (not the
    documentation, benchmarking and link-local ones Python also calls private), local names."""
    from server.app import host_allowed

    assert host_allowed(host) is allowed


def test_host_check_and_cors(corral_server):
    r = httpx.get(corral_server.url + "/api/version", headers={"Host": "evil.example.com"})
    assert r.status_code == 403
    assert httpx.get(corral_server.url + "/api/version", headers={"Host": "localhost:11434"}).status_code == 200
    ok = httpx.options(corral_server.url + "/api/chat", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-stainless-os" in ok.headers["access-control-allow-headers"].lower()
    bad = httpx.options(corral_server.url + "/api/chat", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 403
    r = httpx.get(corral_server.url + "/api/tags", headers={"Origin": "vscode-webview://abc"})
    assert r.headers["access-control-allow-origin"] == "vscode-webview://abc"


@pytest.fixture
def broken_server(tmp_path, model_files):
    """A store holding a corrupt GGUF and a file that is not a model, next to a good model."""
    root = tmp_path / "models"
    store = Store(root)
    from server.store.register import register_gguf

    register_gguf(store, "tiny", model_files["tiny"])
    good = model_files["tiny"].read_bytes()
    for name, data in [("truncated", good[: len(good) // 2]), ("notamodel", b"GGUF" + b"\x00" * 64),
                       ("text", b"hello, I am not a model at all")]:
        layer = store.write_blob_bytes(data, mf.MODEL)
        cfg = store.write_blob_bytes(b"{}", mf.CONFIG_MEDIA_TYPE)
        store.write_manifest(name, mf.Manifest(config=cfg, layers=[layer]))
    server = start_server(root, log_dir=tmp_path)
    yield server
    server.stop()


def test_corrupt_model_files(broken_server):
    client = ollama.Client(host=broken_server.url)
    for name in ("truncated", "notamodel", "text"):
        with pytest.raises(ollama.ResponseError) as e:
            client.generate(name, "hello", options={"num_predict": 2})
        assert e.value.status_code == 500
        assert "unable to load model" in e.value.error
        assert not client.ps().models  # nothing half-loaded left behind
    # the server keeps serving
    assert client.generate("tiny", "hello", options={"num_predict": 2}).done
    assert [m.model for m in client.ps().models] == ["tiny:latest"]


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_keep_alive_not_a_number(corral_server, value):
    assert_error(post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": value}),
                 400, "invalid duration")


def test_keep_alive_beyond_go_durations_is_forever(corral_server):
    """1e12 s is past what Go's Duration holds: forever, and /api/ps still answers."""
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": 1e12})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    ps = httpx.get(corral_server.url + "/api/ps", timeout=10)
    assert ps.status_code == 200, ps.text
    assert [m["expires_at"][:2] for m in ps.json()["models"] if m["model"] == "tiny:latest"] == ["23"]  # ~292 years on
    post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": "5m"})


def test_context_outside_the_vocabulary(corral_server):
    """A bad `context` is the offender's 400; a stream running beside it is not touched."""
    body = {"model": "tiny", "prompt": "count", "options": {"num_predict": 60, "ignore_eos": True}}
    lines: list[dict] = []

    def stream() -> None:
        with httpx.stream("POST", corral_server.url + "/api/generate", json=body, timeout=120) as r:
            lines.extend(json.loads(line) for line in r.iter_lines() if line)

    other = threading.Thread(target=stream)
    other.start()
    for bad in ([999_999_999], [-5], [1, 2, 128_256]):
        r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "hi", "context": bad})
        assert_error(r, 400, "invalid context")
    other.join()
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 60 and "error" not in lines[-1]


def test_images_on_a_model_without_vision(corral_server):
    image = "iVBORw0KGgo="  # a PNG signature, base64
    r = post(corral_server, "/api/generate", json={"model": "tiny", "prompt": "what is this?", "images": [image]})
    assert_error(r, 400, "does not support vision")
    r = post(corral_server, "/api/chat", json={"model": "tiny", "messages": [
        {"role": "user", "content": "what is this?", "images": [image]}]})
    assert_error(r, 400, "does not support vision")
    r = post(corral_server, "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}]})
    assert r.status_code == 400 and "does not support vision" in r.json()["error"]["message"], r.text


def test_embed_input_forms(corral_server):
    r = post(corral_server, "/api/embed", json={"model": "tiny", "input": ""})
    assert r.status_code == 200 and r.json()["embeddings"] == []
    for bad in (5, [1, 2], {"text": "x"}, ["a", None]):
        assert_error(post(corral_server, "/api/embed", json={"model": "tiny", "input": bad}), 400, "invalid input type")
