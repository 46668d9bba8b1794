"""/api/create, /api/blobs, the Modelfile parser and `corral create -f`, against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import pytest

from server import modelfile
from server.store.names import ModelName
from tests.conftest import ROOT, start_server


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory, store_dir):
    """A server of this module's own over a linked copy of the session store (gemma3:270m, tiny)."""
    models = tmp_path_factory.mktemp("create") / "models"
    shutil.copytree(store_dir, models, copy_function=os.link)
    srv = start_server(models, {"OLLAMA_NUM_PARALLEL": "1"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def tiny_digest(http, model_files) -> str:
    data = model_files["tiny"].read_bytes()
    digest = sha(data)
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def manifest_file(server, name: str) -> Path:
    return server.models.joinpath("manifests", *ModelName.parse(name).parts())


def create_lines(http, body: dict) -> list[dict]:
    with http.stream("POST", "/api/create", json=body) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(x) for x in r.iter_lines() if x.strip()]


def names(http) -> set[str]:
    return {m["name"] for m in http.get("/api/tags").json()["models"]}


# ---- blobs ---------------------------------------------------------------------------------


def test_blob_upload_statuses(http, server):
    data = os.urandom(200_000)
    digest = sha(data)
    r = http.head(f"/api/blobs/{digest}")
    assert r.status_code == 404
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert http.head(f"/api/blobs/{digest}").status_code == 200
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 200  # already there
    assert (server.models / "blobs" / digest.replace(":", "-")).read_bytes() == data
    # the sha256-<hex> spelling names the same blob
    assert http.head(f"/api/blobs/sha256-{digest[7:]}").status_code == 200

    other = os.urandom(1000)
    wrong = sha(b"something else")
    r = http.post(f"/api/blobs/{wrong}", content=other)
    assert r.status_code == 400
    assert r.json() == {"error": f'digest mismatch, expected "{wrong}", got "{sha(other)}"'}
    assert http.head(f"/api/blobs/{wrong}").status_code == 404
    assert not (server.models / "blobs" / wrong.replace(":", "-")).exists()
    assert not list((server.models / "blobs").glob(".upload-*"))


def test_blob_malformed_digests(http):
    assert http.head(f"/api/blobs/{sha(b'never uploaded')}").status_code == 404
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "g" * 64, "sha256:" + "0" * 65):
        assert http.head(f"/api/blobs/{bad}").status_code == 400, bad
        r = http.post(f"/api/blobs/{bad}", content=b"x")
        assert r.status_code == 400 and r.json() == {"error": "invalid digest format"}, bad


# ---- the Modelfile parser ------------------------------------------------------------------


def test_modelfile_parser():
    text = '''# a comment
from gemma3:270m
SYSTEM """You are
a pirate."""
Template "{{ .Prompt }}"
PARAMETER temperature 0
parameter stop "<end_of_turn>"
PARAMETER stop END
PARAMETER num_ctx 2048
PARAMETER use_mmap false
PARAMETER mirostat 1
MESSAGE user Who are you?
MESSAGE assistant """Arr,
a pirate!"""
LICENSE """MIT"""
LICENSE Apache
ADAPTER ./lora.gguf
REQUIRES 0.6.2
'''
    mf = modelfile.parse(text)
    assert mf.from_ == "gemma3:270m" and mf.froms == ["gemma3:270m"]
    assert mf.system == "You are\na pirate."
    assert mf.template == "{{ .Prompt }}"
    assert mf.parameters == {"temperature": 0.0, "stop": ["<end_of_turn>", "END"], "num_ctx": 2048,
                             "use_mmap": False}
    assert isinstance(mf.parameters["num_ctx"], int) and isinstance(mf.parameters["temperature"], float)
    assert mf.messages == [{"role": "user", "content": "Who are you?"},
                           {"role": "assistant", "content": "Arr,\na pirate!"}]
    assert mf.license == ["MIT", "Apache"]
    assert mf.adapters == ["./lora.gguf"]
    assert mf.requires == "0.6.2"
    assert mf.warnings == ["parameter mirostat is deprecated"]
    assert mf.create_fields()["parameters"]["stop"] == ["<end_of_turn>", "END"]


@pytest.mark.parametrize("text, message", [
    ("SYSTEM hi\n", "no FROM line"),
    ("# only a comment\n", "no FROM line"),
    ("FROM x\nFOO bar\n", "unknown command 'FOO'"),
    ("FROM x\nPARAMETER nope 1\n", "unknown parameter 'nope'"),
    ("FROM x\nPARAMETER num_ctx lots\n", "invalid int value lots"),
    ("FROM x\nPARAMETER temperature hot\n", "invalid float value hot"),
    ("FROM x\nMESSAGE robot hi\n", "message role must be one of"),
    ('FROM x\nSYSTEM """never closed\n', "unexpected EOF"),
    ("FROM x\nREQUIRES soon\n", "requires must be a valid semver"),
    ("FROM\n", "FROM needs a value"),
])
def test_modelfile_parser_errors(text, message):
    with pytest.raises(modelfile.ModelfileError, match=message.replace("(", r"\(")):
        modelfile.parse(text)


def test_modelfile_render_parses_back():
    messages = [{"role": "user", "content": "two\nlines"}, {"role": "assistant", "content": " padded "}]

    class Fake:
        name = "m:latest"
        model_path = "/blobs/sha256-x"
        adapter_paths = []
        template = "{{ .Prompt }}"
        system = "sys\nprompt"
        parameters = {"stop": ["a", "b"], "temperature": 0.5}
        license = ["L"]

    Fake.messages = messages
    text = modelfile.render(Fake())
    assert 'MESSAGE user """two\nlines"""' in text
    back = modelfile.parse(text)
    assert back.messages == messages
    assert back.system == "sys\nprompt" and back.template == "{{ .Prompt }}"
    assert back.parameters == {"stop": ["a", "b"], "temperature": 0.5}
    assert back.license == ["L"]


# ---- create: from a model, with the ollama package -----------------------------------------


PIRATE_SYSTEM = "You are a pirate named Captain Corral."


def test_create_from_model_with_ollama_client_and_chat(http, server):
    client = ollama.Client(host=server.url)
    progress = list(client.create(
        model="pirate", from_="gemma3:270m", system=PIRATE_SYSTEM, parameters={"temperature": 0},
        messages=[{"role": "user", "content": "Who are you?"},
                  {"role": "assistant", "content": "Arr, I be the captain of this ship!"}],
        stream=True,
    ))
    statuses = [p.status for p in progress]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("using existing layer sha256:") for s in statuses)
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert "pirate:latest" in names(http)

    # the system prompt and the MESSAGEs reach the prompt
    r = http.post("/api/chat", json={"model": "pirate", "messages": [{"role": "user", "content": "Hello"}],
                                     "_debug_render_only": True})
    assert r.status_code == 200, r.text
    rendered = r.json()["_debug_info"]["rendered_template"]
    assert PIRATE_SYSTEM in rendered
    assert "Who are you?" in rendered and "Arr, I be the captain of this ship!" in rendered
    assert rendered.index("Arr, I be the captain") < rendered.index("Hello")

    r = http.post("/api/chat", json={"model": "pirate", "messages": [{"role": "user", "content": "Hello"}],
                                     "stream": False, "options": {"num_predict": 8}})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["message"]["role"] == "assistant"

    show = http.post("/api/show", json={"model": "pirate"}).json()
    assert show["system"] == PIRATE_SYSTEM
    assert "temperature" in show["parameters"]
    assert f'{"stop":<30} "<end_of_turn>"' in show["parameters"]  # inherited, merged
    assert show["messages"][1] == {"role": "assistant", "content": "Arr, I be the captain of this ship!"}
    gemma = http.post("/api/show", json={"model": "gemma3:270m"}).json()
    assert show["template"] == gemma["template"]
    text = show["modelfile"]
    assert text.startswith('# Modelfile generated by "ollama show"')
    assert f'SYSTEM """{PIRATE_SYSTEM}"""' in text and "PARAMETER temperature 0" in text
    assert "MESSAGE user Who are you?" in text
    parsed = modelfile.parse(text)
    assert parsed.system == PIRATE_SYSTEM and parsed.parameters["temperature"] == 0
    assert show["details"]["parent_model"] == "gemma3:270m"
    # non-streaming create answers with the last progress object
    done = client.create(model="pirate2", from_="pirate", system="Another.", stream=False)
    assert done.status == "success"
    assert http.post("/api/show", json={"model": "pirate2"}).json()["messages"] == show["messages"]


# ---- create: legacy modelfile form, raw HTTP -----------------------------------------------


def test_create_legacy_modelfile_form(http, tiny_digest, model_files):
    text = (f"FROM @{tiny_digest}\n"
            'PARAMETER stop "<|eot_id|>"\nPARAMETER stop "END"\nPARAMETER temperature 0.1\n'
            'SYSTEM """multi\nline"""\nMESSAGE user hi\n')
    r = http.post("/api/create", json={"name": "legacy-tiny", "modelfile": text, "stream": False})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success"}
    show = http.post("/api/show", json={"name": "legacy-tiny"}).json()
    assert show["system"] == "multi\nline"
    assert show["parameters"].count("stop") == 2
    r = http.post("/api/generate", json={"model": "legacy-tiny", "prompt": "x", "stream": False,
                                          "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"] is True

    # an absolute path on the server's disk: refused unless CORRAL_ALLOW_LOCAL_PATHS allows its
    # directory (tests/test_hardening.py)
    r = http.post("/api/create", json={"model": "legacy-path", "modelfile": f"FROM {model_files['tiny']}\n",
                                       "stream": False})
    assert r.status_code == 400 and "local paths are not accepted" in r.json()["error"], r.text
    assert "legacy-path:latest" not in names(http)


# ---- validation ----------------------------------------------------------------------------


def test_create_validation(http, server, tiny_digest):
    def err(body: dict) -> tuple[int, str]:
        r = http.post("/api/create", json=body)
        return r.status_code, r.json().get("error", "")

    assert err({"model": "v"}) == (400, "neither 'from' or 'files' was specified")
    for path in ("../x.gguf", "/etc/passwd", "a/../../b.gguf", "./x", "", "c:\\x.gguf"):
        status, message = err({"model": "v", "files": {path: tiny_digest}})
        assert status == 400 and message.startswith("file path must be relative"), (path, message)
    status, message = err({"model": "../x", "files": {"m.gguf": tiny_digest}})
    assert status == 400 and "invalid model name" in message
    status, message = err({"model": "a/b/c/d", "files": {"m.gguf": tiny_digest}})
    assert status == 400
    status, message = err({"model": "v", "files": {"m.gguf": sha(b"not uploaded")}})
    assert status == 400 and "blob not found" in message
    status, message = err({"model": "v", "files": {"m.gguf": "sha256:1234"}})
    assert status == 400 and "invalid digest" in message
    assert err({"model": "v", "from": "no-such-model"}) == (404, "model 'no-such-model' not found")
    status, message = err({"model": "v", "from": "tiny", "parameters": {"nope": 1}})
    assert (status, message) == (400, "unknown parameter 'nope'")
    status, message = err({"model": "v", "from": "tiny", "parameters": {"num_ctx": "lots"}})
    assert status == 400
    status, message = err({"model": "v", "files": {"m.gguf": tiny_digest}, "quantize": "q2_K"})
    assert status == 400 and "unsupported quantization type" in message
    status, message = err({"model": "v", "modelfile": "SYSTEM hi\n"})
    assert (status, message) == (400, "no FROM line")
    status, message = err({"model": "v", "from": "tiny", "requires": "soon"})
    assert status == 400 and "semver" in message
    status, message = err({"model": "v", "from": "/no/such/file.gguf"})
    assert status == 400 and "local paths are not accepted" in message
    assert "v:latest" not in names(http)
    assert not (server.models / "manifests" / "x").exists()


def test_truncated_and_foreign_files_write_nothing(http, server, model_files):
    data = model_files["tiny"].read_bytes()
    cases = {
        "head-only": data[:1000],  # cut inside the header
        "no-tail": data[:-4096],  # header intact, tensor data short
        "not-gguf": b"PK\x03\x04" + os.urandom(5000),
    }
    for label, blob in cases.items():
        digest = sha(blob)
        assert http.post(f"/api/blobs/{digest}", content=blob).status_code == 201
        before = sorted(p.name for p in (server.models / "blobs").iterdir())
        r = http.post("/api/create", json={"model": f"broken-{label}", "files": {"model.gguf": digest}})
        assert r.status_code == 400, (label, r.text)
        message = r.json()["error"]
        assert ("truncated" in message) if label != "not-gguf" else ("not in GGUF format" in message), message
        assert not manifest_file(server, f"broken-{label}").exists()
        assert sorted(p.name for p in (server.models / "blobs").iterdir()) == before  # nothing written
        assert (server.models / "blobs" / digest.replace(":", "-")).exists()  # the upload stays, as in Ollama


# ---- quantize ------------------------------------------------------------------------------


def test_quantize_q8_0(http, tiny_digest):
    lines = create_lines(http, {"model": "tiny-q8", "files": {"tiny.gguf": tiny_digest}, "quantize": "Q8_0"})
    statuses = [x["status"] for x in lines]
    assert "quantizing F16 model to Q8_0" in statuses
    assert statuses.index("verifying conversion") > statuses.index("quantizing F16 model to Q8_0")
    assert statuses[-1] == "success"
    progress = [x for x in lines if x["status"].startswith("quantizing")]
    assert progress[-1]["completed"] == progress[-1]["total"] > 0
    show = http.post("/api/show", json={"model": "tiny-q8"}).json()
    assert show["details"]["quantization_level"] == "Q8_0"
    assert show["model_info"]["general.file_type"] == 7
    r = http.post("/api/generate", json={"model": "tiny-q8", "prompt": "x", "stream": False,
                                         "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"] is True


def test_quantize_q4_k_m_succeeds_or_fails_cleanly(http, server, tiny_digest):
    with http.stream("POST", "/api/create", json={"model": "tiny-q4", "files": {"tiny.gguf": tiny_digest},
                                                  "quantize": "q4_K_M"}) as r:
        status = r.status_code
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    if status == 200 and lines[-1].get("status") == "success":
        show = http.post("/api/show", json={"model": "tiny-q4"}).json()
        assert show["details"]["quantization_level"] == "Q4_K_M"
    else:
        assert status == 400 or "error" in lines[-1]
        assert not manifest_file(server, "tiny-q4").exists()
    assert not list((server.models / "blobs").glob(".quantize-*"))


def test_quantize_needs_an_unquantized_model(http):
    r = http.post("/api/create", json={"model": "gq", "from": "gemma3:270m", "quantize": "q8_0"})
    assert r.status_code == 400 and "only supported for F16 and F32" in r.json()["error"]


# ---- adapters ------------------------------------------------------------------------------


def test_adapter_is_stored_shown_and_applied(http, tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "lora.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    import numpy as np  # a LoRA pair that fits tiny's 64×64 attn_q: adapters are checked against the model

    w.add_tensor("blk.0.attn_q.weight.lora_a", np.full((4, 64), 0.01, np.float32))
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.full((64, 4), 0.01, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    digest = sha(data)
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    lines = create_lines(http, {"model": "tiny-lora", "from": "tiny", "adapters": {"lora.gguf": digest}})
    assert lines[-1] == {"status": "success"}
    show = http.post("/api/show", json={"model": "tiny-lora"}).json()
    assert "\nADAPTER " in show["modelfile"]
    # it runs with the adapter applied (tests/test_adapters_serving.py checks what the adapter changes)
    r = http.post("/api/generate", json={"model": "tiny-lora", "prompt": "x", "stream": False,
                                         "options": {"num_predict": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["done"] and r.json()["eval_count"] >= 1


# ---- `corral create -f` --------------------------------------------------------------------


def test_corral_create_subcommand(http, server, tmp_path, model_files):
    (tmp_path / "weights").mkdir()
    os.link(model_files["tiny"], tmp_path / "weights" / "tiny.gguf")
    (tmp_path / "Modelfile").write_text(
        "FROM ./weights/tiny.gguf\n"
        'SYSTEM """You are terse.\nVery terse."""\n'
        "PARAMETER temperature 0.2\n"
        'PARAMETER stop "<|eot_id|>"\n'
        "MESSAGE user hello\n"
        'MESSAGE assistant """hi\nthere"""\n'
        "REQUIRES 0.6.0\n"
    )
    env = dict(os.environ, OLLAMA_HOST=server.host)
    proc = subprocess.run([sys.executable, "-m", "server", "create", "cli-tiny", "-f", str(tmp_path / "Modelfile")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == "success"
    assert any(line.startswith("copying file sha256:") for line in out)
    assert "writing manifest" in out
    show = http.post("/api/show", json={"model": "cli-tiny"}).json()
    assert show["system"] == "You are terse.\nVery terse."
    assert show["messages"] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi\nthere"}]
    assert f'{"temperature":<30} 0.2' in show["parameters"]
    manifest = json.loads(manifest_file(server, "cli-tiny").read_bytes())
    config = json.loads((server.models / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_bytes())
    assert config["requires"] == "0.6.0" and config["file_type"] == "F16"

    # a model name in FROM goes as `from`; a bad Modelfile fails before talking to the server
    (tmp_path / "Derived").write_text("FROM cli-tiny\nSYSTEM other\n")
    proc = subprocess.run([sys.executable, "-m", "server", "create", "cli-derived", "-f", str(tmp_path / "Derived")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert http.post("/api/show", json={"model": "cli-derived"}).json()["system"] == "other"
    (tmp_path / "Bad").write_text("SYSTEM no from\n")
    proc = subprocess.run([sys.executable, "-m", "server", "create", "bad", "-f", str(tmp_path / "Bad")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no FROM line" in proc.stderr


# ---- templates and parameter values that cannot be stored ------------------------------------


def blob_names(server) -> list[str]:
    return sorted(p.name for p in (server.models / "blobs").iterdir())


@pytest.mark.parametrize("template", ["{{ .Prompt ", "{{ if .System }}no end", "{{ nosuchfunc .Prompt }}",
                                      "{{ end }}"])
def test_create_refuses_a_template_that_does_not_parse(http, server, template):
    before = blob_names(server)
    r = http.post("/api/create", json={"model": "bad-template", "from": "tiny", "template": template})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("template error: template:"), r.json()
    r = http.post("/api/create", json={"model": "bad-template", "modelfile": f'FROM tiny\nTEMPLATE """{template}"""\n'})
    assert r.status_code == 400 and r.json()["error"].startswith("template error: ")
    assert not manifest_file(server, "bad-template").exists()
    assert blob_names(server) == before  # nothing written
    ok = http.post("/api/create", json={"model": "good-template", "from": "tiny", "stream": False,
                                        "template": "{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"})
    assert ok.status_code == 200, ok.text


def test_create_refuses_parameter_values_json_cannot_hold(http, server):
    def err(parameters=None, modelfile_text=None) -> tuple[int, str]:
        body = {"model": "bad-params", "from": "tiny"}
        if modelfile_text is not None:
            body = {"model": "bad-params", "modelfile": modelfile_text}
        else:
            body["parameters"] = parameters
        r = http.post("/api/create", json=body)
        return r.status_code, r.json().get("error", "")

    big = 10 ** 400
    for value in ("NaN", "nan", "Inf", "-Infinity", "1e39"):
        assert err({"temperature": value}) == (400, f"invalid float value {value}")
    assert err(modelfile_text="FROM tiny\nPARAMETER temperature NaN\n") == (400, "(line 2): invalid float value NaN")
    assert err({"temperature": big}) == (400, f"invalid float value {big}")
    assert err({"num_ctx": big}) == (400, f"invalid int value {big}")
    assert err({"num_ctx": 2 ** 63}) == (400, f"invalid int value {2 ** 63}")
    assert err({"seed": -(2 ** 63) - 1}) == (400, f"invalid int value {-(2 ** 63) - 1}")
    assert err({"num_ctx": "9223372036854775808"}) == (400, "invalid int value 9223372036854775808")
    assert err({"num_ctx": str(big)}) == (400, f"invalid int value {big}")
    assert err(modelfile_text=f"FROM tiny\nPARAMETER num_ctx {big}\n") == (400, f"(line 2): invalid int value {big}")
    assert not manifest_file(server, "bad-params").exists()

    # the edges of the ranges are fine
    r = http.post("/api/create", json={"model": "edge-params", "from": "tiny", "stream": False,
                                       "parameters": {"seed": 2 ** 63 - 1, "temperature": "3.4e38", "num_ctx": 2048.0}})
    assert r.status_code == 200, r.text
    layer = next(x for x in json.loads(manifest_file(server, "edge-params").read_bytes())["layers"]
                 if x["mediaType"] == "application/vnd.ollama.image.params")
    params = json.loads((server.models / "blobs" / layer["digest"].replace(":", "-")).read_bytes())
    assert params == {"seed": 2 ** 63 - 1, "temperature": 3.4e38, "num_ctx": 2048}


# ---- re-creating a name ----------------------------------------------------------------------


def layer_of(server, name: str, media_type: str) -> str:
    manifest = json.loads(manifest_file(server, name).read_bytes())
    return next(x["digest"] for x in manifest["layers"] if x["mediaType"] == media_type)


def test_recreating_a_name_removes_the_replaced_layers(http, server):
    system = "application/vnd.ollama.image.system"
    tiny = json.loads(manifest_file(server, "tiny").read_bytes())
    lines = create_lines(http, {"model": "again", "from": "tiny", "system": "first version"})
    assert lines[-1] == {"status": "success"}
    first = layer_of(server, "again", system)
    first_config = json.loads(manifest_file(server, "again").read_bytes())["config"]["digest"]
    lines = create_lines(http, {"model": "again", "from": "tiny", "system": "second version"})
    assert [x["status"] for x in lines][-2:] == ["writing manifest", "success"]
    second = layer_of(server, "again", system)
    assert not (server.models / "blobs" / first.replace(":", "-")).exists()
    assert not (server.models / "blobs" / first_config.replace(":", "-")).exists()
    assert (server.models / "blobs" / second.replace(":", "-")).is_file()
    for layer in tiny["layers"] + [tiny["config"]]:  # shared with tiny: kept
        assert (server.models / "blobs" / layer["digest"].replace(":", "-")).is_file()

    # from itself: the inherited layers stay, the replaced system prompt goes
    assert create_lines(http, {"model": "again", "from": "again", "system": "third version"})[-1] == {
        "status": "success"}
    assert not (server.models / "blobs" / second.replace(":", "-")).exists()
    assert http.post("/api/show", json={"model": "again"}).json()["system"] == "third version"
    for layer in tiny["layers"]:
        assert (server.models / "blobs" / layer["digest"].replace(":", "-")).is_file()


def test_recreating_with_noprune_keeps_the_replaced_layers(tmp_path, model_files, monkeypatch):
    import asyncio

    from server import create as creating
    from server.model_registry import collect
    from server.store.register import register_gguf
    from server.store.store import Store

    store = Store(tmp_path / "models")
    register_gguf(store, "tiny", model_files["tiny"])
    monkeypatch.setenv("OLLAMA_NOPRUNE", "1")
    asyncio.run(collect(creating.create(store, creating.CreateSpec(name="np", from_="tiny", system="one"))))
    first = store.get("np").manifest.layer("application/vnd.ollama.image.system").digest
    asyncio.run(collect(creating.create(store, creating.CreateSpec(name="np", from_="tiny", system="two"))))
    assert store.has_blob(first)
