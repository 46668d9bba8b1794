"""Editors and coding agents pointed at Corral as if it were Ollama (issue 20), replayed against a running
`corral serve`: the requests each client sends (paths, bodies, headers it sets), and each answer read the
way that client reads it (the fields it requires, their types, the stream framing). None of these clients
is a Python package except through LiteLLM (Aider), which is driven for real; the others are replays of
their public source, cited per test:

- Zed: crates/ollama/src/ollama.rs and crates/language_models/src/provider/ollama.rs (model list, show,
  chat), crates/ollama/src/ollama_edit_prediction_delegate.rs (edit predictions), zed-industries/zed.
- Cline: sdk/packages/llms/src/providers/vendors/ollama.ts (cline/cline: native /api/chat through the
  `ollama-ai-provider-v2` package, `options.num_ctx`), whose body and stream schema are in
  nordwestt/ollama-ai-provider-v2 src/responses/ollama-responses-language-model.ts; the model picker is
  apps/vscode/src/core/controller/models/getOllamaModels.ts.
- Roo Code: src/api/providers/native-ollama.ts (the `ollama` provider: the `ollama` npm client's chat with
  `options.num_ctx` and native tools), src/api/providers/fetchers/ollama.ts (tags + show, parsed with zod),
  and src/api/providers/ollama.ts (the older handler over the OpenAI layer at `<base>/v1`), RooCodeInc/Roo-Code.
- JetBrains AI Assistant: closed source. See the comment above its tests for what is documented and what
  is inferred.
- Aider: aider/models.py (Aider-AI/aider): `litellm.get_model_info(model)` for the context size (LiteLLM
  asks /api/show) and `litellm.completion(model="ollama_chat/<m>", stream=True, temperature=0,
  num_ctx=…, timeout=…, messages=…)`, with the server in OLLAMA_API_BASE (aider/website/docs/llms/ollama.md).

Liberty taken everywhere: a small `num_predict` (or `max_tokens`), so the random-weight models answer fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import httpx
import pytest

from tests.gguf_factory import write_random_llama
from tests.test_tools_fim import HERMES_TEMPLATE

pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")  # LiteLLM's TypedDicts, at import

TIMEOUT = 120
CODER = "editors-coder"
FIM_NAME = "qwen2.5-coder:3b-base"  # the first of Zed's RECOMMENDED_EDIT_PREDICTION_MODELS
SHORT = 6
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def url(corral_server) -> str:
    return corral_server.url


@pytest.fixture(scope="module")
def coder(url, tmp_path_factory):
    """A tiny model with a tools template (Hermes) and Qwen FIM tokens, created the way `ollama create`
    does it (blob upload, then /api/create), plus a copy under a name Zed's edit prediction picks itself."""
    path = write_random_llama(tmp_path_factory.mktemp("editors") / "coder.gguf", chat_template=HERMES_TEMPLATE,
                              seed=11, n_layer=1, d=32,
                              extra_tokens=("<tool_call>", "</tool_call>", ("<|im_start|>", "control"),
                                            ("<|im_end|>", "control"), ("<|fim_prefix|>", "control"),
                                            ("<|fim_suffix|>", "control"), ("<|fim_middle|>", "control"),
                                            ("<|fim_pad|>", "control")))
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=TIMEOUT).status_code in (200, 201)
    r = httpx.post(f"{url}/api/create", json={"model": CODER, "files": {"coder.gguf": digest}, "stream": False},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{url}/api/copy", json={"source": CODER, "destination": FIM_NAME}).status_code == 200
    yield f"{CODER}:latest"
    for name in (CODER, FIM_NAME):  # Zed's keep_alive -1 kept it loaded: unload, then delete
        httpx.post(f"{url}/api/generate", json={"model": name, "keep_alive": 0}, timeout=TIMEOUT)
        httpx.request("DELETE", f"{url}/api/delete", json={"model": name}, timeout=TIMEOUT)


def ndjson_lines(r: httpx.Response, raw: bytes) -> list[dict]:
    assert r.status_code == 200, raw
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    text = raw.decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def post_stream(url: str, path: str, body: dict, headers: dict | None = None) -> list[dict]:
    with httpx.stream("POST", url + path, content=json.dumps(body), timeout=TIMEOUT,
                      headers={"Content-Type": "application/json", **(headers or {})}) as r:
        raw = b"".join(r.iter_bytes())
    return ndjson_lines(r, raw)


def is_u64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def render(url: str, body: dict) -> str:
    r = httpx.post(f"{url}/api/chat", json={**body, "_debug_render_only": True}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["_debug_info"]["rendered_template"]


# ---- Zed ------------------------------------------------------------------------------------------------


def zed_local_model_listing(m: dict) -> None:
    """serde: LocalModelListing {name, modified_at: String, size: u64, digest: String, details: ModelDetails
    {format, family: String, families: Option<Vec<String>>, parameter_size, quantization_level: String}}.
    One entry that does not deserialize fails the whole list ("Unable to parse Ollama tag listing")."""
    assert isinstance(m["name"], str) and isinstance(m["modified_at"], str) and isinstance(m["digest"], str)
    assert is_u64(m["size"]), m
    d = m["details"]
    for key in ("format", "family", "parameter_size", "quantization_level"):
        assert isinstance(d[key], str), (key, m)
    assert d.get("families") is None or all(isinstance(x, str) for x in d["families"]), m


def zed_chat_response_delta(line: dict) -> dict:
    """serde: ChatResponseDelta {model: String, created_at: String, message: ChatMessage (tagged by `role`),
    done_reason: Option<String>, done: bool, prompt_eval_count/eval_count: Option<u64>}. The assistant
    variant needs `content: String`; tool_calls: Option<Vec<…>>, thinking: Option<String>."""
    assert isinstance(line["model"], str) and isinstance(line["created_at"], str)
    assert isinstance(line["done"], bool)
    assert line.get("done_reason") is None or isinstance(line["done_reason"], str)
    for key in ("prompt_eval_count", "eval_count"):
        assert line.get(key) is None or is_u64(line[key]), line
    msg = line["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str), line
    assert msg.get("thinking") is None or isinstance(msg["thinking"], str)
    for call in msg.get("tool_calls") or []:
        # Zed keeps only function.{name, arguments: Value}. (The stored ollama.rs declares the call as an
        # externally tagged enum, so a call object with a key besides `function` would not deserialize;
        # Ollama 0.32.15 itself adds `id` — server/routes.go toolCallId() — so Corral sends what Ollama sends.)
        assert set(call) <= {"id", "function"} and isinstance(call["function"]["name"], str)
        assert isinstance(call["function"]["arguments"], dict)
    return line


def test_zed_model_discovery(url, coder):
    # get_models: GET /api/tags with Accept: application/json, then show_model per model (5 at a time),
    # every one of which must succeed for the list to load
    r = httpx.get(f"{url}/api/tags", headers={"Accept": "application/json"})
    assert r.status_code == 200
    listing = r.json()["models"]
    for m in listing:
        zed_local_model_listing(m)
    names = [m["name"] for m in listing if "-embed" not in m["name"]]
    assert coder in names and "tiny:latest" in names
    capabilities = {}
    for name in names:
        show = httpx.post(f"{url}/api/show", content=json.dumps({"model": name}),
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
        assert show.status_code == 200, (name, show.text)
        caps = show.json().get("capabilities", [])  # #[serde(default)]
        assert isinstance(caps, list) and all(isinstance(c, str) for c in caps)
        capabilities[name] = {"tools": "tools" in caps, "vision": "vision" in caps, "thinking": "thinking" in caps}
    assert capabilities[coder] == {"tools": True, "vision": False, "thinking": False}
    assert capabilities["tiny:latest"] == {"tools": False, "vision": False, "thinking": False}


def zed_request(model: str, messages: list[dict], tools: list[dict]) -> dict:
    """to_ollama_request: Option fields serialise as null; num_ctx is get_max_tokens (4096 for an unknown
    name); keep_alive defaults to -1 (forever); think is Some(supports_thinking && allowed)."""
    return {"model": model, "messages": messages, "stream": True, "keep_alive": -1,
            "options": {"num_ctx": 4096, "num_predict": SHORT, "stop": [], "temperature": 1.0, "top_p": None},
            "tools": tools, "think": False}


def test_zed_chat_with_tools_and_keep_alive(url, coder):
    body = zed_request(coder, [{"role": "system", "content": "You are Zed's assistant."},
                               {"role": "user", "content": "Weather in Paris?"}], [WEATHER])
    lines = [zed_chat_response_delta(x) for x in post_stream(url, "/api/chat", body)]
    assert all(x["done"] is False for x in lines[:-1]) and lines[-1]["done"] is True
    assert is_u64(lines[-1]["prompt_eval_count"]) and is_u64(lines[-1]["eval_count"])
    # keep_alive -1: loaded until the server stops (Ollama reports a far-future expires_at)
    ps = {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}
    assert ps[coder]["expires_at"] > "2200", ps[coder]["expires_at"]


def test_zed_tool_result_turn(url, coder):
    # the next turn: Zed's assistant message always carries tool_calls (possibly []) and thinking (null),
    # tool calls without id or type, and the result as role "tool" with tool_name
    messages = [
        {"role": "system", "content": "You are Zed's assistant."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!", "tool_calls": [], "thinking": None},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "thinking": None,
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 21 C"},
    ]
    body = zed_request(coder, messages, [WEATHER])
    lines = [zed_chat_response_delta(x) for x in post_stream(url, "/api/chat", body)]
    assert lines[-1]["done"] is True
    prompt = render(url, body)
    assert "Sunny, 21 C" in prompt and "get_weather" in prompt and '"city": "Paris"' in prompt.replace('":"', '": "')


def test_zed_chat_without_tools_on_a_model_without_tools(url):
    # supports_tools false: Zed sends `tools: []`, which must not need the tools capability
    body = zed_request("tiny:latest", [{"role": "user", "content": "hi"}], [])
    lines = [zed_chat_response_delta(x) for x in post_stream(url, "/api/chat", body)]
    assert lines[-1]["done"] is True


def test_zed_edit_prediction(url, coder):
    # no model configured: get_models, then the first recommended name that is installed
    names = {m["name"] for m in httpx.get(f"{url}/api/tags", headers={"Accept": "application/json"}).json()["models"]}
    recommended = ["qwen2.5-coder:3b-base", "qwen2.5-coder:3b", "qwen2.5-coder:7b-base", "qwen2.5-coder:7b"]
    model = next(n for n in recommended if n in names)
    assert model == FIM_NAME
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    stop = ["<|endoftext|>", "<|file_separator|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_middle|>",
            "<|fim_suffix|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<PRE>", "<SUF>", "<MID>",
            "[PREFIX]", "[SUFFIX]"]
    body = {"model": model, "prompt": f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", "raw": True,
            "stream": False, "options": {"num_predict": SHORT, "temperature": 0.2, "stop": stop}}
    r = httpx.post(f"{url}/api/generate", content=json.dumps(body), headers={"Content-Type": "application/json"},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["response"], str)  # OllamaGenerateResponse {response: String}
    assert r.json()["done"] is True


# ---- Cline ----------------------------------------------------------------------------------------------


def ai_sdk_ollama_chunk(line: dict) -> dict:
    """ollama-ai-provider-v2's baseOllamaResponseSchema (zod): a line that fails it is dropped with a warning,
    so an answer would vanish. `.optional()` fields may be absent but never null."""
    assert isinstance(line["model"], str) and isinstance(line["created_at"], str) and isinstance(line["done"], bool)
    msg = line["message"]
    assert isinstance(msg["content"], str) and isinstance(msg["role"], str)
    if "thinking" in msg:
        assert isinstance(msg["thinking"], str)
    for call in msg.get("tool_calls") or []:
        assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], dict)
        assert "id" not in call or isinstance(call["id"], str)
    if "done_reason" in line:
        assert isinstance(line["done_reason"], str)
    for key in ("eval_count", "eval_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "total_duration"):
        if key in line:
            assert isinstance(line[key], (int, float)) and not isinstance(line[key], bool), (key, line)
    return line


def test_cline_model_picker(url, coder):
    # getOllamaModels: axios GET /api/tags, response.data.models.map(m => m.name), deduplicated, sorted
    data = httpx.get(f"{url}/api/tags").json()
    names = sorted({m["name"] for m in data["models"]})
    assert coder in names and all(isinstance(n, str) and n for n in names)


def test_cline_native_chat_with_num_ctx(url, coder):
    # createOllamaProviderModule → provider.chat(model).doStream: POST <base>/api/chat with the AI SDK's
    # body: top-level temperature (Ollama ignores it), no `think` when unset (Cline's patch), the
    # provider options' `options: {num_ctx}`, tools as {type, function: {name, description, parameters,
    # strict}}, tool_choice, stream: true
    tool = {"type": "function", "function": {**WEATHER["function"], "strict": None}}
    body = {"model": CODER, "messages": [{"role": "system", "content": "You are Cline."},
                                         {"role": "user", "content": "Read a.ts"}],
            "temperature": 0, "options": {"num_ctx": 2048, "num_predict": SHORT}, "tools": [tool],
            "tool_choice": "auto", "stream": True}
    lines = [ai_sdk_ollama_chunk(x) for x in post_stream(url, "/api/chat", body)]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")
    ps = {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}
    assert ps[coder]["context_length"] == 2048  # num_ctx took effect


def test_cline_tool_result_turn(url, coder):
    # convertToOllamaChatMessages (patched): assistant tool calls, then role "tool" with tool_call_id and
    # tool_name; an attachment-only user turn has content "" (not [])
    messages = [{"role": "user", "content": "read a file"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"id": "call-1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                {"role": "tool", "tool_call_id": "call-1", "tool_name": "get_weather", "content": "file contents"}]
    body = {"model": CODER, "messages": messages, "options": {"num_ctx": 2048, "num_predict": SHORT},
            "tools": [WEATHER], "stream": True}
    lines = [ai_sdk_ollama_chunk(x) for x in post_stream(url, "/api/chat", body)]
    assert lines[-1]["done"] is True
    assert "file contents" in render(url, body)


# ---- Roo Code -------------------------------------------------------------------------------------------


def roo_details(d: dict) -> None:
    """OllamaModelDetailsSchema (zod): family, parameter_size strings; families nullable/optional; format,
    parent_model, quantization_level optional strings (absent is fine, null is not)."""
    assert isinstance(d["family"], str) and isinstance(d["parameter_size"], str), d
    assert d.get("families") is None or all(isinstance(x, str) for x in d["families"])
    for key in ("format", "parent_model", "quantization_level"):
        if key in d:
            assert isinstance(d[key], str), (key, d)


def test_roo_code_model_list(url, coder):
    # getOllamaModels: GET /api/tags parsed with OllamaModelsResponseSchema (one bad entry and no model is
    # listed), then POST /api/show {model} per model parsed with OllamaModelInfoResponseSchema;
    # parseOllamaModel keeps only models with "tools" and takes the first model_info key containing
    # "context_length" as contextWindow
    tags = httpx.get(f"{url}/api/tags").json()
    for m in tags["models"]:
        assert isinstance(m["model"], str) and isinstance(m["name"], str)
        for key, kind in (("digest", str), ("modified_at", str), ("size", int)):
            if key in m:
                assert isinstance(m[key], kind), (key, m)
        roo_details(m["details"])
    kept = {}
    for m in tags["models"]:
        show = httpx.post(f"{url}/api/show", json={"model": m["model"]}, timeout=TIMEOUT)
        assert show.status_code == 200, show.text
        info = show.json()
        roo_details(info["details"])
        assert isinstance(info["model_info"], dict)
        for key in ("modelfile", "parameters", "template"):
            if key in info:
                assert isinstance(info[key], str)
        caps = info.get("capabilities") or []
        if "tools" in caps:
            key = next(k for k in info["model_info"] if "context_length" in k)
            kept[m["name"]] = info["model_info"][key]
    assert coder in kept and isinstance(kept[coder], int) and kept[coder] > 0
    assert "tiny:latest" not in kept


def test_roo_code_native_chat(url, coder):
    # NativeOllamaHandler.createMessage: the `ollama` npm client's chat({model, messages: [system, …],
    # stream: true, options: {temperature, num_ctx}, tools}) → POST /api/chat; tool results go back as role
    # "user"; the handler reads chunk.message.content (string), chunk.message.tool_calls[].function and the
    # eval_count/prompt_eval_count of the last chunk
    messages = [{"role": "system", "content": "You are Roo."},
                {"role": "user", "content": "List files"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                {"role": "user", "content": "Cloudy"}]
    body = {"model": CODER, "messages": messages, "stream": True,
            "options": {"temperature": 0, "num_ctx": 1024, "num_predict": SHORT}, "tools": [WEATHER]}
    lines = post_stream(url, "/api/chat", body, headers={
        "Accept": "application/json", "User-Agent": "ollama-js/0.6.0 (x64 linux Node.js/v22.0.0)"})
    for x in lines:
        assert isinstance(x["message"]["content"], str)
        for call in x["message"].get("tool_calls") or []:
            json.dumps(call["function"]["arguments"])
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1 and lines[-1]["prompt_eval_count"] >= 1
    ps = {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}
    assert ps[coder]["context_length"] == 1024


def test_roo_code_completion_prompt(url, coder):
    # completePrompt: chat({model, messages: [{user}], stream: false, options}) → response.message.content
    r = httpx.post(f"{url}/api/chat", json={"model": CODER, "messages": [{"role": "user", "content": "Summarise"}],
                                            "stream": False, "options": {"temperature": 0, "num_predict": SHORT}},
                   timeout=TIMEOUT)
    assert r.status_code == 200 and isinstance(r.json()["message"]["content"], str)


def test_roo_code_openai_compatible_handler(url):
    # OllamaHandler (src/api/providers/ollama.ts): the `openai` client at <base>/v1 with apiKey "ollama",
    # stream + stream_options.include_usage, temperature 0, and OpenAI's prompt_cache_key /
    # safety_identifier, which an Ollama-compatible server ignores; reads delta.content and chunk.usage
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="ollama", timeout=TIMEOUT)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "You are Roo."}, {"role": "user", "content": "hi"}],
        temperature=0, stream=True, stream_options={"include_usage": True}, max_tokens=SHORT,
        extra_body={"prompt_cache_key": "task-123", "safety_identifier": "user-abc"})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens >= 1 and usage.prompt_tokens >= 1
    assert isinstance(text, str)


# ---- JetBrains AI Assistant -----------------------------------------------------------------------------
# Documented (JetBrains "Use third-party and local models", jetbrains.com/help/ai-assistant/use-custom-models.html,
# and Ollama's docs/integrations/jetbrains): Settings | Tools | AI Assistant | Providers & API keys → Ollama,
# a Host URL (default http://localhost:11434), "Test Connection", then the installed models are listed under
# "Local models by Ollama" and can be picked for AI Chat. JetBrains does not publish the requests.
# Inferred: the request sequence below is the one xrip/ollama-api-proxy (src/index.js), a server written to
# be "used with JetBrains AI Assistant" in Ollama's place, implements: GET /, GET /api/version, GET /api/tags,
# POST /api/show {model}, and NDJSON /api/chat and /api/generate (`message.content` / `response` per line,
# a final `done: true` line). Nothing more specific is claimed.


def test_jetbrains_test_connection_and_model_list(url, coder):
    assert httpx.get(f"{url}/").text == "Ollama is running"
    version = httpx.get(f"{url}/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    models = httpx.get(f"{url}/api/tags").json()["models"]
    assert coder in {m["name"] for m in models}
    for m in models:
        assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(m)
    show = httpx.post(f"{url}/api/show", json={"model": coder}, timeout=TIMEOUT).json()
    arch = show["model_info"]["general.architecture"]
    assert isinstance(show["model_info"][f"{arch}.context_length"], int)
    assert "completion" in show["capabilities"]


def test_jetbrains_chat_and_generate_streams(url):
    lines = post_stream(url, "/api/chat", {"model": "tiny:latest", "stream": True, "options": {"num_predict": SHORT},
                                           "messages": [{"role": "user", "content": "Explain this code"}]})
    assert all(x["message"]["role"] == "assistant" and isinstance(x["message"]["content"], str) for x in lines)
    assert [x["done"] for x in lines].count(True) == 1 and lines[-1]["done"] is True
    lines = post_stream(url, "/api/generate", {"model": "tiny:latest", "prompt": "Name a commit", "stream": True,
                                               "options": {"num_predict": SHORT}})
    assert all(isinstance(x["response"], str) for x in lines) and lines[-1]["done"] is True


# ---- Aider (through the real LiteLLM) ---------------------------------------------------------------------


@pytest.fixture
def litellm(url, monkeypatch):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map at import
    lib = pytest.importorskip("litellm")
    lib.telemetry = False
    monkeypatch.setenv("OLLAMA_API_BASE", url)  # how Aider's docs point it at the server
    return lib


def test_aider_model_info(litellm, url, coder):
    # ModelInfoManager.get_model_info → litellm.get_model_info("ollama_chat/<m>"), which POSTs /api/show
    # {"name": m} to OLLAMA_API_BASE and takes the first model_info key containing "context_length"
    info = litellm.get_model_info(f"ollama_chat/{CODER}")
    show = httpx.post(f"{url}/api/show", json={"name": CODER}, timeout=TIMEOUT).json()
    assert info["max_input_tokens"] == show["model_info"]["llama.context_length"] == 4096
    assert info["max_tokens"] == 4096 and info["supports_function_calling"] is True
    assert litellm.get_model_info("ollama_chat/tiny")["supports_function_calling"] is False


def test_aider_streaming_completion_with_num_ctx(litellm, url):
    # Model.send_completion: kwargs model, stream, temperature=0, num_ctx=int(tokens * 1.25) + 8192,
    # timeout; messages last; then litellm.completion(**kwargs)
    messages = [{"role": "system", "content": "Act as an expert software developer."},
                {"role": "user", "content": "Add a docstring to foo()"}]
    chunks = list(litellm.completion(model="ollama_chat/tiny", stream=True, temperature=0,
                                     num_ctx=int(40 * 1.25) + 8192, timeout=600, messages=messages,
                                     max_tokens=SHORT))
    assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert isinstance("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), str)
    # num_ctx reached the server, lowered to the model's trained context as Ollama lowers it
    ps = {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}
    assert ps["tiny:latest"]["context_length"] == 4096
