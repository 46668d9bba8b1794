"""ADAPTER layers at create, against a real `corral serve`: PEFT folders converted to GGUF LoRA, GGUF
adapters checked against the base, through the official `ollama` client, the Ollama CLI's request
sequence for `ADAPTER ./dir`, and `corral create -f`. What cannot be applied is a 400 at create.

Running a model with its adapters is the engine's part; here the stored manifest is checked: its
ADAPTER layers are GGUF LoRAs with the right keys and tensors, equal to what the converter writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("torch")

import ollama  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from adapters.peft_to_gguf import convert_for_base, convert_peft_adapter  # noqa: E402
from server.store import manifest as mf  # noqa: E402
from server.store.names import ModelName  # noqa: E402
from server.store.register import register_gguf  # noqa: E402
from server.store.store import Store  # noqa: E402
from tests.conftest import ROOT, start_server  # noqa: E402
from tests.llama_twin import make_peft_lora, write_tiny_llama  # noqa: E402

GO_UA = "ollama/0.32.15 (amd64 linux) Go/go1.24.1"
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def twin(work):
    return write_tiny_llama(work / "twin", seed=0)


@pytest.fixture(scope="module")
def server(work, twin):
    models = work / "models"
    register_gguf(Store(models), "twin", twin.gguf)
    srv = start_server(models, {"OLLAMA_NUM_PARALLEL": "1"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def lora(twin, work) -> Path:
    return make_peft_lora(twin, work / "lora", seed=1, r=4, alpha=8)


def upload(http, path: Path) -> str:
    """The Go CLI's createBlob: HEAD, then POST when the server lacks the blob."""
    digest = sha(path)
    if http.head(f"/api/blobs/{digest}").status_code != 200:
        assert http.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
    return digest


def cli_files(folder: Path) -> list[Path]:
    """What Ollama's CLI (parser.filesForModel) sends for a directory of safetensors: *.safetensors, then *.json."""
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json"))


def manifest(server, name: str) -> dict:
    return json.loads(server.models.joinpath("manifests", *ModelName.parse(name).parts()).read_text())


def adapter_blobs(server, name: str) -> list[Path]:
    layers = [x for x in manifest(server, name)["layers"] if x["mediaType"] == mf.ADAPTER]
    return [server.models / "blobs" / x["digest"].replace(":", "-") for x in layers]


def assert_lora(path: Path, n_layers: int, kinds=KINDS) -> GGUFReader:
    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    names = {t.name for t in reader.tensors}
    assert names == {f"blk.{i}.{k}.weight.lora_{ab}" for i in range(n_layers) for k in kinds for ab in "ab"}
    return reader


def same_tensors(a: Path, b: Path) -> bool:
    ra, rb = GGUFReader(a), GGUFReader(b)
    ta = {t.name: np.array(t.data) for t in ra.tensors}
    tb = {t.name: np.array(t.data) for t in rb.tensors}
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_ollama_client_creates_with_a_peft_folder(server, twin, lora, work):
    client = ollama.Client(host=server.url)
    adapters = {p.name: client.create_blob(p) for p in cli_files(lora)}
    assert set(adapters) == {"adapter_config.json", "adapter_model.safetensors"}
    statuses = [r.status for r in client.create(model="twin-lora", from_="twin", adapters=adapters, stream=True)]
    assert statuses[-1] == "success"
    [blob] = adapter_blobs(server, "twin-lora")
    assert_lora(blob, twin.n_layers)
    convert_for_base(lora, work / "expected.gguf", twin.gguf)
    assert same_tensors(blob, work / "expected.gguf")
    assert client.show("twin-lora").modelfile  # the model is listed and described
    assert "twin-lora:latest" in {m.model for m in client.list().models}


def test_ollama_client_creates_with_a_gguf_adapter(server, twin, lora, work):
    converted = work / "converted.gguf"
    convert_for_base(lora, converted, twin.gguf)
    client = ollama.Client(host=server.url)
    digest = client.create_blob(converted)
    client.create(model="twin-gguf-lora", from_="twin", adapters={"converted.gguf": digest})
    [blob] = adapter_blobs(server, "twin-gguf-lora")
    assert blob.name == digest.replace(":", "-")


def test_ollama_cli_sequence_for_adapter_dir(server, twin, lora):
    """`ollama create twin-cli -f Modelfile` with `FROM twin` / `ADAPTER ./lora`, as the Go CLI sends it:
    HEAD /, each file's blob (HEAD, POST), then /api/create with base names → digests."""
    with httpx.Client(base_url=server.url, timeout=120, headers={"User-Agent": GO_UA}) as cli:
        assert cli.head("/").status_code == 200
        adapters = {p.name: upload(cli, p) for p in cli_files(lora)}
        body = {"model": "twin-cli", "from": "twin", "adapters": adapters, "stream": True}
        with cli.stream("POST", "/api/create", json=body) as r:
            assert r.status_code == 200
            lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    assert lines[-1] == {"status": "success"}
    assert not any("error" in x for x in lines)
    [blob] = adapter_blobs(server, "twin-cli")
    assert_lora(blob, twin.n_layers)


def test_corral_create_stacks_two_adapter_folders(server, twin, lora, work):
    second = make_peft_lora(twin, work / "mf" / "second", seed=2, r=2, alpha=4, target_modules=("q_proj", "v_proj"))
    shutil.copytree(lora, work / "mf" / "first")
    (work / "mf" / "Modelfile").write_text("FROM twin\nADAPTER ./first\nADAPTER ./second\nPARAMETER temperature 0\n")
    env = dict(os.environ, OLLAMA_HOST=server.host)
    proc = subprocess.run([sys.executable, "-m", "server", "create", "twin-two", "-f", str(work / "mf" / "Modelfile")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "success" in proc.stdout
    blobs = adapter_blobs(server, "twin-two")
    assert len(blobs) == 2
    expected = {work / "e1.gguf": lora, work / "e2.gguf": second}
    for out, folder in expected.items():
        convert_for_base(folder, out, twin.gguf)
    assert sorted(same_tensors(b, e) for b in blobs for e in expected) == [False, False, True, True]
    assert_lora(work / "e2.gguf", twin.n_layers, kinds=("attn_q", "attn_v"))


# ---- what is refused, and why ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(twin, work) -> dict[str, tuple[dict[str, Path], str]]:
    """{case: ({relative name: local file}, expected words of the 400)}."""
    d = work / "bad"
    small = write_tiny_llama(d / "small", seed=5, hidden=32, heads=2, kv_heads=1, intermediate=64)
    deep = write_tiny_llama(d / "deep", seed=6, n_layers=3)
    cases: dict[str, tuple[dict[str, Path], str]] = {}

    def folder(path: Path) -> dict[str, Path]:
        return {p.name: p for p in cli_files(path)}

    cases["other size"] = (folder(make_peft_lora(small, d / "small-lora")), "another size")
    cases["more layers"] = (folder(make_peft_lora(deep, d / "deep-lora")), "the base model has 2 layers")
    cases["dora"] = (folder(make_peft_lora(twin, d / "dora", use_dora=True)), "DoRA")
    cases["modules_to_save"] = (folder(make_peft_lora(twin, d / "saved", modules_to_save=["norm"])), "modules_to_save")
    qwen = d / "qwen2.gguf"
    convert_peft_adapter(make_peft_lora(twin, d / "for-qwen"), qwen, base_arch="qwen2")
    cases["other architecture"] = ({"qwen2.gguf": qwen}, "qwen2 architecture, the model is llama")
    good = make_peft_lora(twin, d / "good")
    corrupt = d / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    cases["corrupt safetensors"] = (folder(corrupt), "not a safetensors file")
    truncated = d / "truncated"
    shutil.copytree(good, truncated)
    data = (good / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    cases["truncated safetensors"] = (folder(truncated), "truncated")
    bad_json = d / "bad-json"
    shutil.copytree(good, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    cases["corrupt config"] = (folder(bad_json), "not valid JSON")
    cases["config only"] = ({"adapter_config.json": good / "adapter_config.json"}, "without adapter_model.safetensors")
    ok = d / "ok.gguf"
    convert_for_base(good, ok, twin.gguf)
    cut = d / "cut.gguf"
    cut.write_bytes(ok.read_bytes()[:-1000])
    cases["truncated gguf"] = ({"cut.gguf": cut}, "truncated")
    garbage = d / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(2000))
    cases["corrupt gguf"] = ({"garbage.gguf": garbage}, "GGUF")
    return cases


@pytest.mark.parametrize("case", ["other size", "more layers", "dora", "modules_to_save", "other architecture",
                                  "corrupt safetensors", "truncated safetensors", "corrupt config", "config only",
                                  "truncated gguf", "corrupt gguf"])
def test_bad_adapter_is_a_400_at_create(server, http, bad_inputs, case):
    files, words = bad_inputs[case]
    adapters = {name: upload(http, path) for name, path in files.items()}
    blobs_before = {p.name for p in (server.models / "blobs").iterdir()}
    name = "bad-" + case.replace(" ", "-").replace("_", "-")
    r = http.post("/api/create", json={"model": name, "from": "twin", "adapters": adapters})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert set(r.json()) == {"error"}
    # nothing written: no manifest, no converted blob, no temporary file left
    assert not server.models.joinpath("manifests", *ModelName.parse(name).parts()).exists()
    assert {p.name for p in (server.models / "blobs").iterdir()} == blobs_before
    assert http.get("/api/tags").status_code == 200  # still serving


def test_ollama_client_sees_the_reason(server, bad_inputs):
    client = ollama.Client(host=server.url)
    files, _ = bad_inputs["dora"]
    adapters = {name: client.create_blob(path) for name, path in files.items()}
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="bad-dora-client", from_="twin", adapters=adapters)
    assert err.value.status_code == 400
    assert "DoRA" in err.value.error
