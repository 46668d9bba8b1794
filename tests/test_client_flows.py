"""Request sequences that real Ollama clients send, replayed against a running `corral serve` (issue 20).

Each flow sends what the client sends, in its order, and reads each answer the way that client reads it:
the fields it requires, their types, the stream framing and the headers. Sources, per flow:

- Open WebUI: backend/open_webui/routers/ollama.py (open-webui/open-webui). Model list = GET /api/tags
  (plus /api/version and /api/ps on the connection page), POST /api/show {model}, /api/chat and
  /api/generate proxied as NDJSON streams (its middleware reads `message.content` per line and the
  usage fields on the `done` line), POST /api/embed {model, input:[...]}, POST /api/pull {name,
  insecure} streamed to the admin page, POST /api/copy {source, destination}, DELETE /api/delete {name}.
- Continue: core/llm/llms/Ollama.ts (continuedev/continue). POST /api/show {name} once per model:
  regex-parses `parameters` (num_ctx, JSON-quoted stop), scans `model_info` for `*.context_length`, reads
  `template`/`capabilities`; chat over /api/chat with keep_alive 1800, autocomplete over /api/generate
  {raw:true, prompt, suffix, keep_alive}, embeddings over /api/embed. A line with `error` throws.
- GitHub Copilot Chat (BYOK Ollama provider, src/extension/byok/vscode-node/ollamaProvider.ts in
  microsoft/vscode-copilot-chat): GET /api/version must parse as semver >= 0.6.4, GET /api/tags, POST
  /api/show {model} per model reading `capabilities` (tools, vision) and
  `model_info["<general.architecture>.context_length"]`, then chat over the OpenAI layer
  (/v1/chat/completions, SSE, with `tools`).
- LiteLLM (the real package, when installed): `ollama/<m>` → /api/generate, `ollama_chat/<m>` →
  /api/chat, `litellm.embedding("ollama/<m>")` → /api/embed.

Every request is kept cheap: num_predict <= 8 on the tiny random-weight models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime

import httpx
import pytest

from tests.gguf_factory import write_random_llama
from tests.registry_server import RegistryServer
from tests.test_tools_fim import HERMES_TEMPLATE

pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")  # LiteLLM's TypedDicts, at import

CHEAP = {"num_predict": 4, "temperature": 0}
TIMEOUT = 120
CODER = "flows-coder"  # tools (Hermes-style Jinja template) and FIM (Qwen2.5-Coder tokens): made below
USAGE_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration")


def rfc3339_with_tz(value: str) -> datetime:
    # Go's time.Time (and Open WebUI's display code) need a zone; Python parses the nanosecond form
    # only after trimming the fraction to microseconds
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    dt = datetime.fromisoformat(trimmed)
    assert dt.tzinfo is not None, value
    return dt


def ndjson(url: str, path: str, body: dict, method: str = "POST") -> tuple[httpx.Response, list[dict]]:
    """A streamed NDJSON answer, read as the clients read it: line by line, each line one JSON object."""
    with httpx.stream(method, url + path, json=body, timeout=TIMEOUT) as r:
        raw = b"".join(r.iter_bytes())
    assert r.status_code == 200, raw
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    text = raw.decode()
    assert text.endswith("\n"), text[-200:]
    lines = [json.loads(line) for line in text.split("\n") if line.strip()]
    assert lines and all(isinstance(x, dict) for x in lines)
    return r, lines


def sse(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[httpx.Response, list]:
    """An OpenAI SSE answer: `data: <json>` events separated by blank lines, ending `data: [DONE]`."""
    with httpx.stream("POST", url + path, json=body, headers=headers or {}, timeout=TIMEOUT) as r:
        raw = b"".join(r.iter_bytes())
    if r.status_code != 200:
        return r, [json.loads(raw)]
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers
    events = [e for e in raw.decode().split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    return r, [json.loads(e[len("data: "):]) for e in events[:-1]]


def check_done_line(last: dict) -> None:
    """The `done` line Open WebUI turns into usage (and Continue/LiteLLM into token counts)."""
    assert last["done"] is True
    assert last["done_reason"] in ("stop", "length")
    for key in USAGE_FIELDS:
        assert isinstance(last[key], int) and not isinstance(last[key], bool), (key, last)
    assert last["eval_count"] >= 1
    rfc3339_with_tz(last["created_at"])


@pytest.fixture(scope="module")
def url(corral_server) -> str:
    return corral_server.url


@pytest.fixture(scope="module")
def coder(url, tmp_path_factory):
    """A tiny model with a tools template and FIM tokens, put on the shared server the way `ollama create`
    puts one there: the GGUF uploaded to /api/blobs, then /api/create {model, files}. Deleted afterwards."""
    d = tmp_path_factory.mktemp("flows")
    path = write_random_llama(d / "coder.gguf", chat_template=HERMES_TEMPLATE, seed=7, n_layer=1, d=32,
                              extra_tokens=("<tool_call>", "</tool_call>", ("<|im_start|>", "control"),
                                            ("<|im_end|>", "control"), ("<|fim_prefix|>", "control"),
                                            ("<|fim_suffix|>", "control"), ("<|fim_middle|>", "control"),
                                            ("<|fim_pad|>", "control")))
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=TIMEOUT)
    assert r.status_code in (200, 201), r.text
    r = httpx.post(f"{url}/api/create", json={"model": CODER, "files": {"coder.gguf": digest}, "stream": False},
                   timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    yield CODER
    httpx.request("DELETE", f"{url}/api/delete", json={"model": CODER}, timeout=TIMEOUT)


# ---- Open WebUI -----------------------------------------------------------------------------------


def test_open_webui_connection_and_model_list(url):
    # the connection check and the model list (get_all_models: /api/tags per connection; /api/ps and
    # /api/version for the admin page)
    v = httpx.get(f"{url}/api/version")
    assert v.status_code == 200 and v.headers["content-type"].startswith("application/json")
    assert isinstance(v.json()["version"], str)
    tags = httpx.get(f"{url}/api/tags").json()
    names = {m["model"]: m for m in tags["models"]}
    assert {"tiny:latest", "gemma3:270m"} <= set(names)
    for m in tags["models"]:
        assert m["name"] == m["model"]
        assert isinstance(m["size"], int) and re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        rfc3339_with_tz(m["modified_at"])
        assert {"format", "family", "parameter_size", "quantization_level"} <= set(m["details"])
    ps = httpx.get(f"{url}/api/ps").json()
    assert isinstance(ps["models"], list)
    for m in ps["models"]:
        assert {"name", "model", "size", "size_vram", "digest", "expires_at"} <= set(m)
        rfc3339_with_tz(m["expires_at"])


def test_open_webui_show(url):
    show = httpx.post(f"{url}/api/show", json={"model": "tiny"}, timeout=TIMEOUT)
    assert show.status_code == 200, show.text
    body = show.json()
    assert isinstance(body["modelfile"], str) and isinstance(body["template"], str)
    assert isinstance(body["details"], dict) and isinstance(body["model_info"], dict)
    assert "completion" in body["capabilities"]


def test_open_webui_chat_stream(url):
    # Open WebUI proxies the NDJSON stream; its middleware reads message.content per line and the usage
    # (eval_count, prompt_eval_count, durations) from the done line
    _, lines = ndjson(url, "/api/chat", {
        "model": "tiny", "stream": True, "options": CHEAP,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    for line in lines[:-1]:
        assert line["done"] is False and line["model"] == "tiny"
        assert line["message"]["role"] == "assistant" and isinstance(line["message"]["content"], str)
    last = lines[-1]
    check_done_line(last)
    assert last["message"]["role"] == "assistant" and last["message"]["content"] == ""
    assert last["eval_count"] <= CHEAP["num_predict"]


def test_open_webui_generate_stream(url):
    # title/tag generation and the "generate" proxy: /api/generate streamed, `response` per line
    _, lines = ndjson(url, "/api/generate", {"model": "tiny", "prompt": "Once upon", "stream": True,
                                             "options": CHEAP})
    assert all(isinstance(x["response"], str) for x in lines)
    assert all(x["done"] is False for x in lines[:-1])
    check_done_line(lines[-1])
    assert isinstance(lines[-1]["context"], list) and all(isinstance(t, int) for t in lines[-1]["context"])


def test_open_webui_embed(url):
    r = httpx.post(f"{url}/api/embed", json={"model": "tiny", "input": ["first document", "second"]},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = body["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert all(isinstance(x, float) for x in vectors[0])
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3  # normalised, as Ollama's
    assert body["model"] == "tiny" and isinstance(body["prompt_eval_count"], int)


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory):
    reg = RegistryServer(tmp_path_factory.mktemp("emptyreg")).start()
    yield reg
    reg.stop()


def test_open_webui_pull_of_unknown_model(url, empty_registry):
    # Open WebUI streams the progress to the admin page and shows an `error` line as the failure (after
    # the 200 has started, Ollama reports a failed pull as a final NDJSON `{"error": ...}` line)
    name = f"{empty_registry.host}/library/no-such-model:latest"
    with httpx.stream("POST", f"{url}/api/pull", json={"name": name, "insecure": True, "stream": True},
                      timeout=TIMEOUT) as r:
        raw = b"".join(r.iter_bytes())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    lines = [json.loads(x) for x in raw.decode().split("\n") if x.strip()]
    assert lines[0] == {"status": "pulling manifest"}, lines
    assert all("error" not in x for x in lines[:-1]), lines
    assert lines[-1]["error"] == "pull model manifest: file does not exist"
    assert all(x.get("status") != "success" for x in lines)
    # and the server is fine afterwards
    assert httpx.get(f"{url}/api/version").status_code == 200


def test_open_webui_copy_then_delete(url):
    tags = lambda: {m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]}  # noqa: E731
    r = httpx.post(f"{url}/api/copy", json={"source": "tiny", "destination": "flows-webui-copy"})
    assert r.status_code == 200, r.text
    assert "flows-webui-copy:latest" in tags()
    # Open WebUI's ModelNameForm sends the legacy {"name": ...} body on DELETE
    r = httpx.request("DELETE", f"{url}/api/delete", json={"name": "flows-webui-copy"})
    assert r.status_code == 200, r.text
    assert "flows-webui-copy:latest" not in tags()
    r = httpx.request("DELETE", f"{url}/api/delete", json={"name": "flows-webui-copy"})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert "tiny:latest" in tags()


# ---- Continue ----------------------------------------------------------------------------------------


def continue_reads_show(body: dict) -> dict:
    """What Continue's Ollama provider takes from /api/show."""
    out = {"stop": [], "num_ctx": None, "context_length": None}
    for line in body.get("parameters", "").split("\n"):
        m = re.match(r'^(\S+)\s+((?:".*")|\S+)$', line.strip())
        if not m:
            continue
        if m[1] == "num_ctx":
            out["num_ctx"] = int(m[2])
        elif m[1] == "stop":
            out["stop"].append(json.loads(m[2]))  # JSON-quoted, as Ollama's %#v writes it
    for key, value in body["model_info"].items():
        if key.endswith(".context_length"):
            out["context_length"] = value
    return out


def test_continue_show(url):
    body = httpx.post(f"{url}/api/show", json={"name": "gemma3:270m"}, timeout=TIMEOUT).json()
    assert isinstance(body["template"], str) and body["template"]
    read = continue_reads_show(body)
    arch = body["model_info"]["general.architecture"]
    assert arch == "gemma3"
    assert isinstance(body["model_info"][f"{arch}.context_length"], int)
    assert read["context_length"] == body["model_info"][f"{arch}.context_length"]
    # gemma3:270m's Modelfile bounds answers with stops (README): Continue must be able to read each
    assert "<end_of_turn>" in read["stop"], body["parameters"]
    for line in body["parameters"].strip().split("\n"):
        assert re.match(r'^(\S+)\s+((?:".*")|\S+)$', line.strip()), line


def test_continue_chat_with_keep_alive(url):
    _, lines = ndjson(url, "/api/chat", {
        "model": "tiny", "stream": True, "keep_alive": 1800, "options": {**CHEAP, "num_ctx": 512},
        "messages": [{"role": "user", "content": "Write a haiku"}]})
    assert all("error" not in x for x in lines)
    assert "".join(x["message"]["content"] for x in lines) is not None
    check_done_line(lines[-1])
    ps = {m["model"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}
    expires = rfc3339_with_tz(ps["tiny:latest"]["expires_at"])
    left = (expires - datetime.now(expires.tzinfo)).total_seconds()
    assert 1700 < left <= 1800, left  # keep_alive in seconds


def test_continue_autocomplete_raw_with_suffix(url, coder):
    show = httpx.post(f"{url}/api/show", json={"name": coder}, timeout=TIMEOUT).json()
    # Continue decides FIM support from the capabilities (newer) or the template containing `.Suffix` (older)
    assert "insert" in show["capabilities"] and ".Suffix" in show["template"]
    tiny = httpx.post(f"{url}/api/show", json={"name": "tiny"}, timeout=TIMEOUT).json()
    assert "insert" not in tiny["capabilities"] and ".Suffix" not in tiny["template"]
    _, lines = ndjson(url, "/api/generate", {
        "model": coder, "prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n",
        "raw": True, "stream": True, "keep_alive": 1800, "options": {**CHEAP, "stop": ["\n\n"]}})
    assert all("error" not in x and isinstance(x["response"], str) for x in lines)
    check_done_line(lines[-1])


def test_continue_autocomplete_raw_without_suffix(url):
    # a model without FIM (tiny): Continue's own template builds the whole prompt, sent raw
    _, lines = ndjson(url, "/api/generate", {
        "model": "tiny", "prompt": "<PRE> x = <SUF>\n<MID>", "raw": True, "stream": True, "keep_alive": 1800,
        "options": CHEAP})
    check_done_line(lines[-1])
    assert "context" not in lines[-1]  # raw mode returns no context, as Ollama


def test_continue_suffix_on_model_without_insert_is_refused(url):
    """Ollama's GenerateHandler requires `insert` whenever `suffix` is non-empty, raw or not."""
    r = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": "a", "suffix": "b", "raw": True,
                                                "options": CHEAP}, timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json() == {"error": "registry.ollama.ai/library/tiny:latest does not support insert"}


def test_continue_embed(url):
    r = httpx.post(f"{url}/api/embed", json={"model": "tiny", "input": ["chunk one", "chunk two", "three"]},
                   timeout=TIMEOUT)
    assert r.status_code == 200
    assert len(r.json()["embeddings"]) == 3


def test_continue_error_line_is_an_object_with_error(url):
    # Continue throws on a chunk with `error`; before any byte, the status carries it
    r = httpx.post(f"{url}/api/chat", json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
                   timeout=TIMEOUT)
    assert r.status_code == 404 and r.json() == {"error": "model 'no-such-model' not found"}


# ---- GitHub Copilot Chat ------------------------------------------------------------------------------


def test_copilot_discovery(url, coder):
    version = httpx.get(f"{url}/api/version").json()["version"]
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:[-+].*)?", version)
    assert m, version
    assert tuple(int(x) for x in m.groups()) >= (0, 6, 4), version
    models = [x["model"] for x in httpx.get(f"{url}/api/tags").json()["models"]]
    seen = {}
    for model in models:
        if model not in ("tiny:latest", "gemma3:270m", f"{coder}:latest"):
            continue  # other tests' models on the shared server
        body = httpx.post(f"{url}/api/show", json={"model": model}, timeout=TIMEOUT).json()
        caps = body["capabilities"]
        assert isinstance(caps, list)
        info = body["model_info"]
        arch = info["general.architecture"]
        ctx = info[f"{arch}.context_length"]
        assert isinstance(ctx, int) and ctx > 0
        seen[model] = {"tools": "tools" in caps, "vision": "vision" in caps}
    assert seen[f"{coder}:latest"]["tools"] is True
    assert seen["tiny:latest"] == {"tools": False, "vision": False}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}


def test_copilot_chat_with_tools_streams(url, coder):
    # Copilot sends the OpenAI body with stream, tools and stream_options.include_usage
    body = {"model": coder, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 8,
            "temperature": 0, "tools": [WEATHER],
            "messages": [{"role": "system", "content": "You are a helper."},
                         {"role": "user", "content": "Weather in Paris?"}]}
    r, chunks = sse(url, "/v1/chat/completions", body, headers={"Authorization": "Bearer ollama"})
    assert r.status_code == 200, chunks
    choice_chunks = [c for c in chunks if c["choices"]]
    assert choice_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-")
    finishes = [c["choices"][0]["finish_reason"] for c in choice_chunks if c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length", "tool_calls")
    for c in choice_chunks:
        for call in c["choices"][0]["delta"].get("tool_calls") or []:
            assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
            json.loads(call["function"]["arguments"])
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1


def test_copilot_tools_on_model_without_tools_is_a_400(url):
    body = {"model": "tiny", "stream": True, "max_tokens": 4, "tools": [WEATHER],
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    r, [err] = sse(url, "/v1/chat/completions", body)
    assert r.status_code == 400
    assert err["error"]["message"] == "registry.ollama.ai/library/tiny:latest does not support tools"
    assert err["error"]["type"] == "invalid_request_error"


# ---- LiteLLM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map at import
    lib = pytest.importorskip("litellm")
    lib.telemetry = False
    return lib


MSGS = [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize("prefix", ["ollama", "ollama_chat"])
def test_litellm_completion(litellm, url, prefix):
    r = litellm.completion(model=f"{prefix}/tiny", api_base=url, messages=MSGS, max_tokens=4, temperature=0)
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 1


@pytest.mark.parametrize("prefix", ["ollama", "ollama_chat"])
def test_litellm_completion_stream(litellm, url, prefix):
    chunks = list(litellm.completion(model=f"{prefix}/tiny", api_base=url, messages=MSGS, max_tokens=4,
                                     temperature=0, stream=True))
    assert chunks
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_litellm_embedding(litellm, url):
    r = litellm.embedding(model="ollama/tiny", api_base=url, input=["hello", "world"])
    assert len(r.data) == 2
    assert len(r.data[0]["embedding"]) > 0
