"""The exact request sequences of the real `ollama` CLI (cmd/cmd.go), replayed with httpx.

Every command starts with `HEAD /`; bodies are shaped like the Go client's (empty strings for
unset string fields, omitted optional fields). The only liberty taken: `options.num_predict`, so
that the random-weight model answers quickly.
"""

from __future__ import annotations

import hashlib
import json
import re

import httpx
import pytest

from server import modelfile
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server
from tests.registry_server import RegistryServer

GO_UA = "ollama/0.6.5 (amd64 linux) Go/go1.24.1"
RFC3339_TZ = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, model_files):
    source = Store(tmp_path_factory.mktemp("flow-source"))
    register_gguf(source, "tiny", model_files["tiny"])
    reg = RegistryServer(tmp_path_factory.mktemp("flow-registry")).start()
    reg.publish(source, "tiny", "library/tiny:latest")
    reg.publish(source, "tiny", "other/tiny:latest")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("flow-models"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cli(server):
    with httpx.Client(base_url=server.url, timeout=120, headers={"User-Agent": GO_UA}) as client:
        yield client


def hello(cli) -> None:
    """What every command does first."""
    assert cli.head("/").status_code < 400


def stream(cli, method: str, path: str, body: dict) -> list[dict]:
    """The Go client's stream(): status >= 400 is an error; a line with "error" aborts."""
    with cli.stream(method, path, json=body) as r:
        if r.status_code >= 400:
            r.read()
            raise AssertionError(f"{path}: {r.status_code} {r.text}")
        out = []
        for line in r.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("error"):
                raise AssertionError(f"{path}: {item['error']}")
            out.append(item)
        return out


def pull(cli, name: str) -> list[dict]:
    """`ollama pull`: shows lines with completed > 0 or without a digest; expects a final success."""
    lines = stream(cli, "POST", "/api/pull", {"model": name, "insecure": True})
    assert lines[-1] == {"status": "success"}
    return [x for x in lines if not x.get("digest") or x.get("completed")]


def generate(cli, body: dict) -> list[dict]:
    go = {"model": "", "prompt": "", "suffix": "", "system": "", "template": "", "options": None}
    go.update(body)
    return stream(cli, "POST", "/api/generate", go)


@pytest.fixture(scope="module")
def flow_model(cli, tmp_path_factory, model_files) -> str:
    """`ollama create flow -f Modelfile`: parse locally, POST each file to /api/blobs (no HEAD), create."""
    d = tmp_path_factory.mktemp("flow-modelfile")
    (d / "Modelfile").write_text(f"FROM {model_files['tiny']}\nSYSTEM \"\"\"You are a test.\"\"\"\n"
                                 "PARAMETER temperature 0\nPARAMETER num_ctx 512\n")
    hello(cli)
    parsed = modelfile.parse((d / "Modelfile").read_text())
    data = model_files["tiny"].read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = cli.post(f"/api/blobs/{digest}", content=data)
    assert r.status_code in (200, 201)
    body = {"model": "flow", "files": {"tiny.gguf": digest}, **parsed.create_fields()}
    lines = stream(cli, "POST", "/api/create", body)
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "parsing GGUF" and statuses[-2:] == ["writing manifest", "success"]
    return "flow"


def test_pull(cli, registry):
    hello(cli)
    shown = pull(cli, f"{registry.host}/library/tiny")
    assert shown[0] == {"status": "pulling manifest"}
    assert any(x.get("completed") == x.get("total") for x in shown if x.get("digest"))


def test_run_with_a_prompt(cli, flow_model):
    hello(cli)
    show = cli.post("/api/show", json={"model": flow_model})
    assert show.status_code == 200
    caps = show.json()["capabilities"]
    assert "completion" in caps and "thinking" not in caps and "embedding" not in caps
    first = generate(cli, {"model": flow_model, "prompt": "hello", "options": {"num_predict": 3}})
    final = first[-1]
    assert final["done"] is True and final["done_reason"] in ("stop", "length")
    assert final["context"] and all(isinstance(x, int) for x in final["context"])
    # a second prompt carries the context of the first
    second = generate(cli, {"model": flow_model, "prompt": "again", "context": final["context"],
                            "options": {"num_predict": 3}})
    assert second[-1]["done"] is True
    ctx = second[-1]["context"]
    assert ctx[:len(final["context"])] == final["context"] and len(ctx) > len(final["context"])


def test_run_pulls_a_missing_model(cli, registry):
    name = f"{registry.host}/other/tiny"
    hello(cli)
    assert cli.post("/api/show", json={"model": name}).status_code == 404
    pull(cli, name)
    assert cli.post("/api/show", json={"model": name}).status_code == 200
    lines = generate(cli, {"model": name, "prompt": "hi", "options": {"num_predict": 2}})
    assert lines[-1]["done"] is True


def test_show_modelfile(cli, flow_model):
    hello(cli)
    show = cli.post("/api/show", json={"model": flow_model}).json()
    text = show["modelfile"]
    assert text.startswith('# Modelfile generated by "ollama show"')
    assert f"# FROM {flow_model}:latest" in text
    assert 'SYSTEM """You are a test."""' in text
    assert "PARAMETER num_ctx 512" in text and "PARAMETER temperature 0" in text
    assert show["model_info"]["general.architecture"] == "llama"
    assert "llama.context_length" in show["model_info"]


def test_list(cli, flow_model):
    hello(cli)
    models = {m["name"]: m for m in cli.get("/api/tags").json()["models"]}
    m = models[f"{flow_model}:latest"]
    assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
    assert RFC3339_TZ.match(m["modified_at"])
    assert m["size"] > 0 and m["details"]["family"] == "llama"


def test_ps_and_stop(cli, flow_model):
    generate(cli, {"model": flow_model, "prompt": "load me", "options": {"num_predict": 1}})
    hello(cli)
    running = {m["name"]: m for m in cli.get("/api/ps").json()["models"]}
    m = running[f"{flow_model}:latest"]
    assert RFC3339_TZ.match(m["expires_at"]) and m["size_vram"] == 0 and m["context_length"] == 512

    # `ollama stop`: show, then an empty generate with keep_alive "0s"
    hello(cli)
    assert cli.post("/api/show", json={"model": flow_model}).status_code == 200
    lines = generate(cli, {"model": flow_model, "keep_alive": "0s"})
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "unload"
    assert f"{flow_model}:latest" not in {m["name"] for m in cli.get("/api/ps").json()["models"]}


def test_cp_and_rm(cli, flow_model):
    hello(cli)
    r = cli.post("/api/copy", json={"source": flow_model, "destination": "flow-copy"})
    assert r.status_code == 200 and r.content == b""
    assert cli.post("/api/show", json={"model": "flow-copy"}).status_code == 200
    r = cli.post("/api/copy", json={"source": "no-such-model", "destination": "x"})
    assert r.status_code == 404

    # `ollama rm`: show, unload with keep_alive "0s", then DELETE /api/delete
    generate(cli, {"model": "flow-copy", "prompt": "x", "options": {"num_predict": 1}})
    hello(cli)
    assert cli.post("/api/show", json={"model": "flow-copy"}).status_code == 200
    lines = generate(cli, {"model": "flow-copy", "keep_alive": "0s"})
    assert lines[-1]["done_reason"] == "unload"
    r = cli.request("DELETE", "/api/delete", json={"model": "flow-copy"})
    assert r.status_code == 200
    assert "flow-copy:latest" not in {m["name"] for m in cli.get("/api/tags").json()["models"]}
    r = cli.request("DELETE", "/api/delete", json={"model": "flow-copy"})
    assert r.status_code == 404 and r.json() == {"error": "model 'flow-copy' not found"}
    # the original keeps its blobs
    assert cli.post("/api/generate", json={"model": flow_model, "prompt": "still here", "stream": False,
                                           "options": {"num_predict": 1}}).status_code == 200


def test_push_checks_sign_in_first(cli, flow_model):
    hello(cli)
    assert cli.post("/api/me").status_code == 401


def test_pull_sends_ollama_user_agent(cli, registry):
    """The registry sees Ollama's User-Agent shape (server/images.go: `ollama/<version> (<GOARCH> <GOOS>)
    Go/<go version>`), with the Ollama API version /api/version reports and Corral's token after it."""
    hello(cli)
    version = cli.get("/api/version").json()["version"]
    before = len(registry.log)
    pull(cli, f"{registry.host}/library/tiny")
    agents = {e.user_agent for e in registry.log[before:]}
    assert len(agents) == 1, agents
    (agent,) = agents
    assert re.fullmatch(rf"ollama/{re.escape(version)} \((amd64|arm64|\w+) (linux|darwin|windows|\w+)\) "
                        r"corral/\d+\.\d+\.\d+\S*", agent), agent
