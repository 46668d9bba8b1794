"""The real `ollama` CLI's interactive session (`ollama run <model>` at a terminal), replayed with httpx.

Each test sends what one thing typed at the `>>>` prompt makes the CLI send, in its order, with the Go
client's bodies and headers, and reads each answer the way the CLI reads it. Sources, all in
ollama/ollama (read at fb30760996871fa9460115c753afd2c60d4ab0f7):

- cmd/cmd.go: RunHandler (HEAD / from checkServerHeartbeat; POST /api/show via showOrPullModel;
  inferThinkingOption; loadOrUnloadModel = /api/show then an empty streamed /api/generate carrying
  `think` and `keep_alive`; then generateInteractive), chat() (streamed /api/chat with the whole
  session's messages, `options`, `format`, `think`, `keep_alive`), showInfo() (reads model_info
  `general.architecture`, `<arch>.context_length` / `.embedding_length` as float64, details,
  capabilities, parameters, system, license), ensureThinkingSupport() (/api/show capabilities).
- cmd/interactive.go: `/set parameter` (api.FormatParams: typed values, `stop` a list), `/set system`
  (single line or `\"\"\"` multi-line; replaces a trailing system message), `/set think` / `nothink`,
  `/set format json`, `/show info|modelfile|parameters|system|template|license` (one /api/show with
  `system` and `options` of the session), `\"\"\"` multi-line prompts, `/clear`, `/save`
  (NewCreateRequest: POST /api/create {model, from: parent_model or the model, system, parameters,
  messages}), `/load` (inferThinkingOption's /api/show, loadOrUnloadModel), images (only when
  capabilities include `vision`; a path in the line is read and sent base64 in `images`).
- api/client.go: every request carries `User-Agent: ollama/<version> (<arch> <os>) Go/<go version>`,
  `Content-Type: application/json`, and `Accept: application/x-ndjson` on streams (`application/json`
  otherwise). A status >= 400 becomes StatusError{ErrorMessage: body["error"]}; a stream line with
  `error` ends the call with that message. The CLI then matches substrings ("not found", "does not
  support thinking", "invalid model name").
- api/types.go: the Go structs fix the wire shape (ShowRequest sends every field; GenerateRequest sends
  prompt/suffix/system/template as "" and options as null; ChatRequest sends options (null when empty)
  and omits think/format/keep_alive when unset; CreateRequest omits empty fields but sends "name": "").
  Responses decode into time.Time (RFC 3339 `created_at`/`modified_at`), so those must parse.

Liberty taken: `options.num_predict` is added to chats so the random-weight model answers quickly.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib

import httpx
import pytest

GO_UA = "ollama/0.32.15 (amd64 linux) Go/go1.24.1"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
SHORT = {"num_predict": 3}
# a Go template that uses .Think, so the model has the "thinking" capability (as Ollama decides it)
THINK_TEMPLATE = ("{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
                  "{{ if .Think }}(thinking on){{ end }}assistant:")


class GoError(Exception):
    """api.StatusError / the stream's error line, as the CLI sees it: only the message text."""


class GoClient:
    """The Go api.Client: headers, body shapes, error handling."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=120, headers={"User-Agent": GO_UA,
                                                                    "Content-Type": "application/json"})

    def heartbeat(self) -> None:  # checkServerHeartbeat: HEAD /
        assert self.http.head("/").status_code < 400

    def do(self, method: str, path: str, body: dict) -> dict:
        r = self.http.request(method, path, content=json.dumps(body), headers={"Accept": "application/json"})
        if r.status_code >= 400:
            raise GoError(r.json().get("error") or r.reason_phrase)
        assert r.headers["content-type"].startswith("application/json"), r.headers
        return r.json()

    def stream(self, path: str, body: dict) -> list[dict]:
        with self.http.stream("POST", path, content=json.dumps(body),
                              headers={"Accept": "application/x-ndjson"}) as r:
            if r.status_code >= 400:
                r.read()
                raise GoError(r.json().get("error") or r.reason_phrase)
            out = []
            for line in r.iter_lines():  # bufio.Scanner over the body, one JSON object a line
                if not line.strip():
                    continue
                item = json.loads(line)
                if item.get("error"):
                    raise GoError(item["error"])
                out.append(item)
        return out

    # the calls the CLI makes, with the Go structs' JSON shapes
    def show(self, model: str, system: str = "", options: dict | None = None) -> dict:
        resp = self.do("POST", "/api/show", {"model": model, "system": system, "template": "", "verbose": False,
                                             "options": options, "name": ""})
        check_show_decodes(resp)
        return resp

    def generate(self, model: str, think=None, keep_alive=None) -> list[dict]:
        body = {"model": model, "prompt": "", "suffix": "", "system": "", "template": "", "options": None}
        if think is not None:
            body["think"] = think
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self.stream("/api/generate", body)

    def chat(self, model: str, messages: list[dict], options: dict, fmt: str = "", think=None) -> list[dict]:
        body = {"model": model, "messages": messages, "options": {**options, **SHORT}}
        if fmt == "json":
            body["format"] = "json"  # chat(): opts.Format "json" becomes the JSON string "json"
        if think is not None:
            body["think"] = think
        lines = self.stream("/api/chat", body)
        for line in lines:  # api.ChatResponse
            assert RFC3339.match(line["created_at"]), line
            assert line["message"]["role"] == "assistant" and isinstance(line["message"]["content"], str)
            assert isinstance(line.get("message", {}).get("thinking", ""), str)
        assert lines[-1]["done"] is True and isinstance(lines[-1]["eval_count"], int)
        return lines

    def create(self, body: dict) -> list[dict]:
        lines = self.stream("/api/create", body)
        assert lines[-1] == {"status": "success"}, lines
        return lines


def check_show_decodes(resp: dict) -> None:
    """api.ShowResponse: what json.Unmarshal needs to succeed, and what showInfo() dereferences."""
    assert RFC3339.match(resp["modified_at"]), resp["modified_at"]
    for key in ("modelfile", "parameters", "template"):
        assert isinstance(resp[key], str)
    for key in ("system", "license"):
        assert isinstance(resp.get(key, ""), str)
    details = resp["details"]
    for key in ("parent_model", "format", "family", "parameter_size", "quantization_level"):
        assert isinstance(details.get(key, ""), str), (key, details)
    assert isinstance(resp["capabilities"], list) and all(isinstance(c, str) for c in resp["capabilities"])
    assert isinstance(resp["model_info"], dict)
    for m in resp.get("messages") or []:
        assert isinstance(m["role"], str) and isinstance(m["content"], str)


def show_info(resp: dict) -> dict:
    """The rows showInfo() prints for `/show info` (cmd.go), from the fields it reads."""
    info = resp["model_info"]
    arch = info.get("general.architecture", "")
    rows = {"architecture": arch,
            "parameters": resp["details"]["parameter_size"] or info.get("general.parameter_count"),
            "quantization": resp["details"]["quantization_level"]}
    for name in ("context_length", "embedding_length"):
        value = info.get(f"{arch}.{name}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # the `.(float64)` assertion
            rows[name.replace("_", " ")] = value
    rows["capabilities"] = resp["capabilities"]
    rows["parameters table"] = [line.split() for line in resp["parameters"].split("\n") if line]
    rows["system"] = [x.strip() for x in (resp.get("system") or "").split("\n") if x.strip()][:2]
    return rows


def format_params(key: str, values: list[str]) -> object:
    """api.FormatParams for the parameters the CLI's help lists: float32, int, or []string for stop."""
    if key == "stop":
        return values
    if key in ("temperature", "top_p", "min_p", "repeat_penalty"):
        return float(values[0])
    return int(values[0])


@pytest.fixture(scope="module")
def url(corral_server) -> str:
    return corral_server.url


@pytest.fixture(scope="module")
def go(url):
    client = GoClient(url)
    yield client
    client.http.close()


@pytest.fixture(scope="module")
def session_model(go):
    """`ollama create interactive-base` with a system prompt and a parameter, from tiny."""
    go.create({"model": "interactive-base", "from": "tiny", "system": "You are terse.",
               "parameters": {"temperature": 0.0}, "name": ""})
    yield "interactive-base"
    for name in ("interactive-base", "interactive-saved", "interactive-thinker"):
        go.http.post("/api/generate", json={"model": name, "keep_alive": 0})  # `ollama stop`
        go.http.request("DELETE", "/api/delete", json={"model": name})


def start_session(go, model: str) -> dict:
    """`ollama run <model>` at a terminal, up to the first `>>>` prompt."""
    go.heartbeat()
    info = go.show(model)  # showOrPullModel
    # inferThinkingOption(&info.Capabilities, …): think on only for models with "thinking"
    think = True if "thinking" in info["capabilities"] else None
    assert "embedding" not in info["capabilities"]
    # loadOrUnloadModel: /api/show again, then an empty generate (think passed to fail early)
    assert go.show(model)["capabilities"] == info["capabilities"]
    lines = go.generate(model, think=think)
    assert lines[-1]["done"] is True and RFC3339.match(lines[-1]["created_at"])
    return {"model": model, "parent": info["details"]["parent_model"], "messages": [], "options": {},
            "system": "", "think": think, "multimodal": "vision" in info["capabilities"]}


def test_session_start_loads_the_model(go, session_model):
    s = start_session(go, session_model)
    ps = {m["name"]: m for m in go.http.get("/api/ps").json()["models"]}
    assert f"{session_model}:latest" in ps  # the empty generate loaded it
    assert s["think"] is None and s["multimodal"] is False


def test_set_parameter_then_chat_and_show_parameters(go, session_model):
    s = start_session(go, session_model)
    # `/set parameter temperature 0.5`, `/set parameter stop <|x|> END`, `/set parameter num_ctx 512`
    for line in ("/set parameter temperature 0.5", "/set parameter stop <|x|> END", "/set parameter num_ctx 512"):
        args = line.split()
        s["options"][args[2]] = format_params(args[2], args[3:])
    assert s["options"] == {"temperature": 0.5, "stop": ["<|x|>", "END"], "num_ctx": 512}
    s["messages"].append({"role": "user", "content": "hello"})
    lines = go.chat(s["model"], s["messages"], s["options"])
    s["messages"].append({"role": "assistant", "content": "".join(x["message"]["content"] for x in lines)})
    ps = {m["name"]: m for m in go.http.get("/api/ps").json()["models"]}
    assert ps[f"{session_model}:latest"]["context_length"] == 512  # the session's num_ctx took effect
    # `/show parameters`: the model's own parameters (resp.Parameters), then the session's, printed locally
    resp = go.show(s["model"], system=s["system"], options=s["options"])
    assert [line.split() for line in resp["parameters"].split("\n")] == [["temperature", "0"]]


def test_set_system_single_and_multiline(go, session_model):
    s = start_session(go, session_model)
    # `/set system Talk like a pirate.`: one line
    s["system"] = "Talk like a pirate."
    s["messages"].append({"role": "system", "content": s["system"]})
    # `/set system """Line one` … `line two"""`: replaces the trailing system message
    s["system"] = "Line one\nline two"
    assert s["messages"][-1]["role"] == "system"
    s["messages"][-1] = {"role": "system", "content": s["system"]}
    s["messages"].append({"role": "user", "content": "hi"})
    go.chat(s["model"], s["messages"], s["options"])
    # the request's system message is what the template sees, not the model's SYSTEM
    body = {"model": s["model"], "messages": s["messages"], "options": None, "_debug_render_only": True}
    rendered = go.do("POST", "/api/chat", body)["_debug_info"]["rendered_template"]
    assert "Line one\nline two" in rendered and "You are terse." not in rendered
    # `/show system` prints opts.System when set; `/show info` and `/show modelfile` print what /api/show
    # returns for the request's `system` (Ollama's GetModelInfo replaces the model's with it)
    resp = go.show(s["model"], system=s["system"], options=s["options"])
    assert resp["system"] == "Line one\nline two"
    assert 'SYSTEM """Line one\nline two"""' in resp["modelfile"]
    assert show_info(resp)["system"] == ["Line one", "line two"]


def test_show_info_modelfile_template_license(go, session_model):
    s = start_session(go, session_model)
    s["options"]["num_ctx"] = 256
    resp = go.show(s["model"], system=s["system"], options=s["options"])
    rows = show_info(resp)
    assert rows["architecture"] == "llama"
    assert isinstance(rows["context length"], int) and rows["context length"] > 0
    assert isinstance(rows["embedding length"], int) and rows["embedding length"] > 0
    assert rows["parameters"] and rows["quantization"]
    assert "completion" in rows["capabilities"]
    assert rows["parameters table"] == [["temperature", "0"]]
    assert rows["system"] == ["You are terse."]  # no /set system: the model's own
    # `/show modelfile`: resp.Modelfile, with the session's options merged in as Ollama does
    text = resp["modelfile"]
    assert text.startswith('# Modelfile generated by "ollama show"')
    assert 'SYSTEM """You are terse."""' in text
    assert "PARAMETER num_ctx 256" in text and "PARAMETER temperature 0" in text
    # `/show template`: the template or "No prompt template was specified"; `/show license`: likewise
    assert isinstance(resp["template"], str) and resp["template"]
    assert resp.get("license", "") == ""  # prints "No license was specified for this model."


def test_multiline_prompt(go, session_model):
    s = start_session(go, session_model)
    # `"""first line`, `second line`, `third"""`: the lines are joined with "\n" (Fprintln after each)
    typed = ['"""first line', "second line", 'third"""']
    sb = typed[0][3:] + "\n" + typed[1] + "\n" + typed[2][:-3]
    s["messages"].append({"role": "user", "content": sb})
    go.chat(s["model"], s["messages"], s["options"])
    body = {"model": s["model"], "messages": s["messages"], "options": None, "_debug_render_only": True}
    rendered = go.do("POST", "/api/chat", body)["_debug_info"]["rendered_template"]
    assert "first line\nsecond line\nthird" in rendered


def test_clear_keeps_the_session_system(go, session_model):
    s = start_session(go, session_model)
    s["system"] = "Be kind."
    s["messages"] += [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "zebra-first"}]
    lines = go.chat(s["model"], s["messages"], s["options"])
    s["messages"].append({"role": "assistant", "content": "".join(x["message"]["content"] for x in lines)})
    # `/clear`: messages reset to the session system message only
    s["messages"] = [{"role": "system", "content": s["system"]}]
    s["messages"].append({"role": "user", "content": "yak-second"})
    go.chat(s["model"], s["messages"], s["options"])
    body = {"model": s["model"], "messages": s["messages"], "options": None, "_debug_render_only": True}
    rendered = go.do("POST", "/api/chat", body)["_debug_info"]["rendered_template"]
    assert "zebra-first" not in rendered and "yak-second" in rendered and "Be kind." in rendered


def test_save_then_load(go, session_model):
    s = start_session(go, session_model)
    s["options"] = {"temperature": 0.25, "num_ctx": 384, "stop": ["END"]}
    s["system"] = "Saved system."
    s["messages"].append({"role": "system", "content": s["system"]})
    s["messages"].append({"role": "user", "content": "remember this"})
    lines = go.chat(s["model"], s["messages"], s["options"])
    s["messages"].append({"role": "assistant", "content": "".join(x["message"]["content"] for x in lines)})

    # `/save interactive-saved`: NewCreateRequest (from = a valid parent_model, else the session's model)
    parent = s["parent"] if re.fullmatch(r"[\w.\-/:]+", s["parent"] or "") else ""
    body = {"model": "interactive-saved", "from": parent or s["model"], "system": s["system"],
            "parameters": s["options"], "messages": s["messages"], "name": ""}
    go.create(body)

    # `/save` with a name Ollama rejects: the CLI looks for "invalid model name" and carries on
    with pytest.raises(GoError, match="invalid model name"):
        go.create({**body, "model": "bad:name:twice"})

    # what was saved: `ollama show` reads it back
    saved = go.show("interactive-saved")
    assert saved["system"] == "Saved system."
    params = dict(line.split(None, 1) for line in saved["parameters"].split("\n"))
    assert params["temperature"] == "0.25" and params["num_ctx"] == "384" and params["stop"] == '"END"'
    assert [m["content"] for m in saved["messages"]][:2] == ["Saved system.", "remember this"]

    # `/load interactive-saved`: inferThinkingOption's /api/show, then loadOrUnloadModel
    caps = go.show("interactive-saved")["capabilities"]
    think = True if "thinking" in caps else None
    go.show("interactive-saved")
    assert go.generate("interactive-saved", think=think)[-1]["done"] is True
    # the next prompt starts from empty messages; the saved ones come from the model, server side
    lines = go.chat("interactive-saved", [{"role": "user", "content": "and now?"}], {})
    body = {"model": "interactive-saved", "messages": [{"role": "user", "content": "and now?"}], "options": None,
            "_debug_render_only": True}
    rendered = go.do("POST", "/api/chat", body)["_debug_info"]["rendered_template"]
    assert "Saved system." in rendered and "remember this" in rendered and "and now?" in rendered
    ps = {m["name"]: m for m in go.http.get("/api/ps").json()["models"]}
    assert ps["interactive-saved:latest"]["context_length"] == 384

    # `/load no-such-model`: the CLI prints "Couldn't find model" when the error says "not found"
    with pytest.raises(GoError, match="not found"):
        go.show("no-such-model")


def test_set_think_on_models_with_and_without_thinking(go, session_model):
    # a model without "thinking": ensureThinkingSupport warns, and the chat fails with a message the CLI
    # recognises ("does not support thinking") and prints before going on
    s = start_session(go, session_model)
    assert "thinking" not in go.show(s["model"])["capabilities"]  # ensureThinkingSupport
    s["think"] = True  # `/set think`
    s["messages"].append({"role": "user", "content": "think"})
    with pytest.raises(GoError, match="does not support thinking"):
        go.chat(s["model"], s["messages"], s["options"], think=True)
    # `/set nothink`: think false is fine on any model
    go.chat(s["model"], s["messages"], s["options"], think=False)

    # a model with "thinking": think is on from the start (inferThinkingOption), levels pass through
    go.create({"model": "interactive-thinker", "from": "tiny", "template": THINK_TEMPLATE, "name": ""})
    t = start_session(go, "interactive-thinker")
    assert t["think"] is True
    t["messages"].append({"role": "user", "content": "q"})
    go.chat(t["model"], t["messages"], t["options"], think=True)
    go.chat(t["model"], t["messages"], t["options"], think="high")  # `/set think high`
    rendered = go.do("POST", "/api/chat", {"model": t["model"], "messages": t["messages"], "options": None,
                                           "think": True, "_debug_render_only": True})
    assert "(thinking on)" in rendered["_debug_info"]["rendered_template"]
    # `/load interactive-thinker` with `/set think` earlier: the load itself carries think
    assert go.generate("interactive-thinker", think=True)[-1]["done"] is True
    # and a load that carries think on a model without it fails the way the CLI expects
    with pytest.raises(GoError, match="does not support thinking"):
        go.generate(session_model, think=True)


def test_set_format_json(go, session_model):
    s = start_session(go, session_model)
    s["messages"].append({"role": "user", "content": "json please"})
    go.chat(s["model"], s["messages"], s["options"], fmt="json")  # `/set format json`


def _png(width: int = 1, height: int = 1) -> bytes:
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_image_input(go, session_model, tmp_path):
    s = start_session(go, session_model)
    # without "vision" the CLI never reads files: a line starting with a path is "Unknown command" and a
    # path inside a line is sent as text; so no request carries images
    assert s["multimodal"] is False
    # with "vision" (RunHandler: capabilities, or model_info keys containing ".vision."), extractFileData
    # reads the file, strips the path from the text and sends the bytes base64-encoded in `images`
    assert not any(".vision." in k for k in go.show(s["model"])["model_info"])
    image = tmp_path / "cat.png"
    image.write_bytes(_png())
    message = {"role": "user", "content": "what is this?", "images": [base64.b64encode(image.read_bytes()).decode()]}
    # such a request on a model without vision is refused with a message the CLI prints as its error
    with pytest.raises(GoError, match="does not support vision"):
        go.chat(s["model"], [message], s["options"])
