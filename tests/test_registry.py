"""Pull and push against a real registry on loopback (tests/registry_server.py), through a real server.

No network: every registry here is `127.0.0.1:<port>`, reached with `insecure` (plain http).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import ollama
import pytest

from server.model_registry import Registry, collect
from server.store.names import ModelName
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server
from tests.registry_server import RegistryServer

PART_THRESHOLD = 4 << 20  # the server under test splits blobs above 4 MiB into 4 parallel parts


@pytest.fixture(scope="module")
def source(tmp_path_factory, model_files) -> Store:
    """A store holding the tiny model, to publish from."""
    store = Store(tmp_path_factory.mktemp("source"))
    register_gguf(store, "tiny", model_files["tiny"])
    return store


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source) -> RegistryServer:
    reg = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    reg.publish(source, "tiny", "library/tiny:latest")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("pulled"), {
        "CORRAL_PULL_PART_THRESHOLD": str(PART_THRESHOLD),
        "CORRAL_PULL_ATTEMPTS": "2",
    })
    yield srv
    srv.stop()


def random_model(reg: RegistryServer, repo: str, size: int, seed: int) -> tuple[str, str]:
    """Publish a model with a random `size`-byte model layer; returns (model blob digest, manifest digest)."""
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = bytes(b ^ (i * 131 % 251) for i, b in enumerate(data[:size]))
    model = reg.add_blob(data)
    config = reg.add_blob(json.dumps({"model_format": "gguf", "model_family": "test", "seed": seed}).encode())
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config,
                   "size": reg.blob_path(config).stat().st_size},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": model, "size": size}],
    }).encode()
    reg.add_manifest(repo, manifest)
    return model, "sha256:" + hashlib.sha256(manifest).hexdigest()


def pull_lines(server, name: str, **extra) -> list[dict]:
    body = {"model": name, "insecure": True, **extra}
    with httpx.stream("POST", f"{server.url}/api/pull", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def blob_file(server, digest: str) -> Path:
    return server.models / "blobs" / digest.replace(":", "-")


def manifest_file(server, name: str) -> Path:
    return server.models.joinpath("manifests", *ModelName.parse(name).parts())


def file_gets(reg: RegistryServer, digest: str) -> list:
    return [e for e in reg.requests("GET", f"/files/{digest}")]


def range_start(entry) -> int:
    return int(entry.range.split("=")[1].split("-")[0])


# ---- pulls ---------------------------------------------------------------------------------


def test_pull_through_server_then_generate(server, registry, source):
    name = f"{registry.host}/library/tiny"
    lines = pull_lines(server, name)
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    entry = source.get("tiny")
    for layer in entry.manifest.layers + [entry.manifest.config]:
        mine = [x for x in lines if x.get("digest") == layer.digest]
        assert mine, f"no progress for {layer.digest}"
        assert all(x["status"] == f"pulling {layer.digest[7:19]}" and x["total"] == layer.size for x in mine)
        assert mine[-1]["completed"] == layer.size
        assert blob_file(server, layer.digest).is_file()
    # the 24 MB model blob came as 4 parallel ranged parts (through the registry's redirect)
    model = entry.manifest.layers[0]
    parts = file_gets(registry, model.digest)
    assert len(parts) == 4 and all(e.status == 206 for e in parts)
    assert sorted(range_start(e) for e in parts)[0] == 0
    assert sum(e.sent for e in parts) == model.size
    assert not list((server.models / "blobs").glob("*partial*"))

    tags = httpx.get(f"{server.url}/api/tags").json()["models"]
    listed = {m["name"]: m for m in tags}
    assert f"{registry.host}/library/tiny:latest" in listed
    # the manifest is stored byte for byte: same digest as the registry's
    assert listed[f"{registry.host}/library/tiny:latest"]["digest"] == entry.digest

    r = httpx.post(f"{server.url}/api/generate", json={"model": name, "prompt": "hello", "stream": False,
                                                       "options": {"num_predict": 2}}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True

    # pulling again: every layer is already present (completed == total), nothing is downloaded
    before = len(registry.log)
    again = pull_lines(server, name)
    assert again[-1] == {"status": "success"}
    layer_lines = [x for x in again if "digest" in x]
    assert layer_lines and all(x["completed"] == x["total"] for x in layer_lines)
    assert [e.path for e in registry.log[before:]] == ["/v2/library/tiny/manifests/latest"]


def test_pull_with_ollama_client(server, registry):
    _, manifest_digest = random_model(registry, "client/model:v1", 300_000, seed=1)
    client = ollama.Client(host=server.url)
    name = f"{registry.host}/client/model:v1"
    progress = list(client.pull(name, insecure=True, stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert any(p.digest and p.completed == p.total for p in progress)
    assert [p.status for p in progress][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    # stream=False: the last progress object
    done = client.pull(name, insecure=True, stream=False)
    assert done.status == "success"
    listed = {m.model: m for m in client.list().models}
    assert listed[name].digest == manifest_digest[7:]


def test_resume_within_a_pull_after_dropped_connection(server, registry):
    size = 3_000_000  # below the part threshold: one stream
    model, _ = random_model(registry, "flaky/once:latest", size, seed=2)
    registry.drop[model] = (1, 1_000_000)
    lines = pull_lines(server, f"{registry.host}/flaky/once")
    assert lines[-1] == {"status": "success"}, lines[-3:]
    gets = file_gets(registry, model)
    assert len(gets) == 2
    assert range_start(gets[0]) == 0 and gets[0].sent == 1_000_000
    # the retry asked only for the rest
    assert 0 < range_start(gets[1]) <= 1_000_000
    assert gets[1].range == f"bytes={range_start(gets[1])}-{size - 1}"
    assert sum(e.sent for e in gets) < size + 1_000_000
    assert hashlib.sha256(blob_file(server, model).read_bytes()).hexdigest() == model[7:]


def test_resume_across_pulls_from_the_partial_file(server, registry):
    size = 3_000_000
    model, _ = random_model(registry, "flaky/twice:latest", size, seed=3)
    registry.drop[model] = (2, 700_000)  # the server tries twice per pull: this pull fails
    name = f"{registry.host}/flaky/twice"
    lines = pull_lines(server, name)
    assert "error" in lines[-1] and "max retries exceeded" in lines[-1]["error"]
    assert not manifest_file(server, name).exists()
    assert not blob_file(server, model).exists()
    partial = server.models / "blobs" / (model.replace(":", "-") + "-partial")
    assert partial.is_file() and partial.stat().st_size == 1_400_000

    lines = pull_lines(server, name)
    assert lines[-1] == {"status": "success"}
    gets = file_gets(registry, model)
    assert [range_start(e) for e in gets] == [0, 700_000, 1_400_000]
    assert gets[-1].sent == size - 1_400_000  # the second pull downloaded only the rest
    assert manifest_file(server, name).is_file() and not partial.exists()


def test_resume_of_a_parallel_download(tmp_path, registry):
    """In-process: a multi-part download whose parts drop resumes every part where it stopped."""
    size = 9_000_000
    model, _ = random_model(registry, "flaky/parts:latest", size, seed=4)
    registry.drop[model] = (2, 500_000)
    store = Store(tmp_path / "store")
    reg = Registry(part_threshold=1 << 20, parts=4, attempts=1)
    name = f"{registry.host}/flaky/parts"
    with pytest.raises(Exception, match="max retries exceeded"):
        asyncio.run(collect(reg.pull(store, name, insecure=True)))
    assert store.find(name) is None and not store.has_blob(model)
    sidecar = store.blobs / ("." + store.partial_path(model).name + ".json")
    parts = json.loads(sidecar.read_text())["parts"]
    assert len(parts) == 4 and sum(p["completed"] for p in parts) > 0
    registry.settle()  # a part the failed pull cancelled may still be logged late
    before = len(file_gets(registry, model))

    out = asyncio.run(collect(reg.pull(store, name, insecure=True)))
    assert out[-1] == {"status": "success"}
    resumed = sorted(range_start(e) for e in file_gets(registry, model)[before:])
    wanted = sorted(p["offset"] + p["completed"] for p in parts if p["completed"] < p["size"])
    assert resumed == wanted  # each unfinished part asked only for its rest
    assert hashlib.sha256(store.read_blob(model)).hexdigest() == model[7:]
    assert not sidecar.exists() and not store.partial_path(model).exists()


def test_corrupted_blob_is_rejected_and_nothing_written(server, registry):
    model, _ = random_model(registry, "bad/corrupt:latest", 200_000, seed=5)
    registry.corrupt.add(model)
    name = f"{registry.host}/bad/corrupt"
    lines = pull_lines(server, name)
    statuses = [x.get("status") for x in lines]
    assert "verifying sha256 digest" in statuses
    assert "error" in lines[-1] and "digest mismatch" in lines[-1]["error"]
    assert not manifest_file(server, name).exists()
    assert not blob_file(server, model).exists()
    assert not list((server.models / "blobs").glob(model.replace(":", "-") + "*"))
    names = [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]]
    assert f"{name}:latest" not in names
    r = httpx.post(f"{server.url}/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=60)
    assert r.status_code == 500 and "digest mismatch" in r.json()["error"]


def test_missing_manifest(server, registry):
    name = f"{registry.host}/library/nothing-here"
    lines = pull_lines(server, name)
    assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    r = httpx.post(f"{server.url}/api/pull", json={"model": name, "insecure": True, "stream": False})
    assert r.status_code == 500
    assert r.json() == {"error": "pull model manifest: file does not exist"}
    with pytest.raises(ollama.ResponseError, match="pull model manifest: file does not exist"):
        list(ollama.Client(host=server.url).pull(name, insecure=True, stream=True))
    registry.hidden.add("library/tiny:latest")
    try:
        assert pull_lines(server, f"{registry.host}/library/tiny")[-1] == {
            "error": "pull model manifest: file does not exist"}
    finally:
        registry.hidden.discard("library/tiny:latest")


def test_pull_request_errors(server):
    assert httpx.post(f"{server.url}/api/pull", content=b"").status_code == 400
    r = httpx.post(f"{server.url}/api/pull", json={"model": "../evil"})
    assert r.status_code == 400
    # nothing listens on this port: a transport error, reported in-band
    lines = pull_lines(server, "127.0.0.1:9/library/x")
    assert lines[0] == {"status": "pulling manifest"} and lines[-1]["error"].startswith("pull model manifest: ")


# ---- push ----------------------------------------------------------------------------------


def test_push_then_pull_back_into_another_store(server, tmp_path, model_files):
    target = RegistryServer(tmp_path / "target").start()
    try:
        # a model of the server's own, named for the target registry
        store = Store(server.models)
        register_gguf(store, "to-push", model_files["tiny"], system="pushed system prompt")
        name = f"{target.host}/team/pushed:v1"
        r = httpx.post(f"{server.url}/api/copy", json={"source": "to-push", "destination": name})
        assert r.status_code == 200
        with httpx.stream("POST", f"{server.url}/api/push", json={"model": name, "insecure": True},
                          timeout=120) as resp:
            assert resp.status_code == 200
            lines = [json.loads(x) for x in resp.iter_lines() if x.strip()]
        statuses = [x["status"] for x in lines]
        assert statuses[0] == "retrieving manifest"
        assert statuses[-2:] == ["pushing manifest", "success"]
        local = store.get(name)
        for layer in local.manifest.layers + [local.manifest.config]:
            mine = [x for x in lines if x.get("digest") == layer.digest]
            assert mine[-1] == {"status": f"pushing {layer.digest[7:19]}", "digest": layer.digest,
                                "total": layer.size, "completed": layer.size}
        uploads = target.requests("PUT", "/blobs/uploads/")
        assert len(uploads) == 3 and all(e.status == 201 for e in uploads)
        assert len(target.requests("POST", "/blobs/uploads/")) == 3
        assert target.manifest_path("team/pushed:v1").read_bytes() == local.path.read_bytes()

        # pushing again: HEAD finds every blob, nothing is uploaded
        before = len(target.log)
        r = httpx.post(f"{server.url}/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=60)
        assert r.json() == {"status": "success"}
        assert {e.method for e in target.log[before:]} == {"HEAD", "PUT"}
        assert not [e for e in target.log[before:] if "uploads" in e.path]

        # and back, into a store of its own
        other = Store(tmp_path / "other")
        out = asyncio.run(collect(Registry().pull(other, name, insecure=True)))
        assert out[-1] == {"status": "success"}
        pulled = other.get(name)
        assert pulled.digest == local.digest
        assert pulled.manifest.digests() == local.manifest.digests()
        for digest in local.manifest.digests():
            assert other.read_blob(digest) == store.read_blob(digest)
    finally:
        target.stop()


def test_push_errors(server):
    r = httpx.post(f"{server.url}/api/push", json={"model": "127.0.0.1:9/nobody/none", "insecure": True})
    assert r.status_code == 404
    assert httpx.post(f"{server.url}/api/me").status_code == 401
    assert httpx.post(f"{server.url}/api/me").json() == {"error": "unauthorized"}


def test_registry_hosts_from_names():
    """The host part of the name picks the registry: Ollama's by default, Hugging Face for hf.co."""
    reg = Registry()
    hf = ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert reg._repo_url(hf, insecure=False) == "https://hf.co/v2/bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert hf.tag == "Q4_K_M"
    default = ModelName.parse("llama3.2")
    assert reg._repo_url(default, insecure=False) == "https://registry.ollama.ai/v2/library/llama3.2"
    local = ModelName.parse("localhost:5000/me/m:t")
    assert reg._repo_url(local, insecure=True) == "http://localhost:5000/v2/me/m"


# ---- what a strict registry accepts, replaced layers, insecure names ------------------------


def test_created_model_pushes_to_a_registry_that_checks_manifests(server, tmp_path, model_files):
    """registry:2 refuses a manifest without schemaVersion/mediaType (tests/registry_server.py checks
    the same): a model made by /api/create pushes, and so does one an older Corral wrote."""
    target = RegistryServer(tmp_path / "strict").start()
    try:
        store = Store(server.models)
        register_gguf(store, "strict-base", model_files["tiny"])
        name = f"{target.host}/team/created:v1"
        r = httpx.post(f"{server.url}/api/create", json={"model": name, "from": "strict-base",
                                                         "system": "made here", "stream": False}, timeout=120)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{server.url}/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=120)
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        pushed = json.loads(target.manifest_path("team/created:v1").read_bytes())
        assert pushed["schemaVersion"] == 2
        assert pushed["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"

        # a manifest file without the two fields (as Corral used to write them) is completed on push
        legacy = store.get("strict-base")
        data = json.loads(legacy.path.read_bytes())
        raw = json.dumps({"config": data["config"], "layers": data["layers"]}).encode()
        old_name = f"{target.host}/team/legacy:v1"
        store.write_manifest(old_name, legacy.manifest, raw=raw)
        r = httpx.post(f"{server.url}/api/push", json={"model": old_name, "insecure": True, "stream": False},
                       timeout=120)
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        assert json.loads(target.manifest_path("team/legacy:v1").read_bytes())["schemaVersion"] == 2

        # and the registry does refuse one without them
        put = httpx.put(f"http://{target.host}/v2/team/bad/manifests/v1", content=raw,
                        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
        assert put.status_code == 400 and put.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    finally:
        target.stop()


def test_repull_of_a_changed_tag_removes_the_replaced_layers(server, registry):
    name = f"{registry.host}/churn/model:latest"
    random_model(registry, "churn/model:latest", 120_000, seed=20)
    assert pull_lines(server, name)[-1] == {"status": "success"}
    old = Store(server.models).get(name)
    # a blob nobody's manifest names (an upload waiting for its create): never touched
    upload = b"uploaded, waiting for /api/create" * 100
    digest = "sha256:" + hashlib.sha256(upload).hexdigest()
    assert httpx.post(f"{server.url}/api/blobs/{digest}", content=upload).status_code == 201

    # the tag now points at other content
    new_model, _ = random_model(registry, "churn/model:latest", 130_000, seed=22)
    lines = pull_lines(server, name)
    statuses = [x["status"] for x in lines]
    assert statuses[-3:] == ["writing manifest", "removing unused layers", "success"]
    for stale in old.manifest.digests():
        assert not blob_file(server, stale).exists(), stale
    assert blob_file(server, new_model).is_file() and blob_file(server, digest).is_file()

    # a replaced layer another model still uses stays (the status comes all the same, as in Ollama)
    assert httpx.post(f"{server.url}/api/copy", json={"source": name, "destination": "churn-keep"}).status_code == 200
    random_model(registry, "churn/model:latest", 140_000, seed=23)
    lines = pull_lines(server, name)
    assert [x["status"] for x in lines][-2:] == ["removing unused layers", "success"]
    assert blob_file(server, new_model).is_file()
    assert Store(server.models).get("churn-keep").manifest.layers[0].digest == new_model

    # an unchanged re-pull has nothing to remove
    again = [x["status"] for x in pull_lines(server, name)]
    assert "removing unused layers" not in again and again[-1] == "success"


def test_noprune_keeps_replaced_layers(tmp_path, registry, monkeypatch):
    store = Store(tmp_path / "store")
    name = f"{registry.host}/churn/noprune:latest"
    first, _ = random_model(registry, "churn/noprune:latest", 50_000, seed=30)
    asyncio.run(collect(Registry().pull(store, name, insecure=True)))
    random_model(registry, "churn/noprune:latest", 60_000, seed=31)
    monkeypatch.setenv("OLLAMA_NOPRUNE", "1")
    out = asyncio.run(collect(Registry().pull(store, name, insecure=True)))
    assert [x["status"] for x in out][-2:] == ["writing manifest", "success"]
    assert store.has_blob(first)
    monkeypatch.setenv("OLLAMA_NOPRUNE", "false")
    random_model(registry, "churn/noprune:latest", 70_000, seed=32)
    out = asyncio.run(collect(Registry().pull(store, name, insecure=True)))
    assert [x["status"] for x in out][-2:] == ["removing unused layers", "success"]


def test_http_scheme_needs_insecure(server, registry, tmp_path):
    name = f"http://{registry.host}/library/tiny"
    r = httpx.post(f"{server.url}/api/pull", json={"model": name}, timeout=60)
    assert r.status_code == 500 and r.json() == {"error": "insecure protocol http"}
    r = httpx.post(f"{server.url}/api/pull", json={"model": name, "stream": False}, timeout=60)
    assert r.status_code == 500 and r.json() == {"error": "insecure protocol http"}
    assert pull_lines(server, name)[-1] == {"status": "success"}  # with insecure: plain http

    target = RegistryServer(tmp_path / "plain").start()
    try:
        dest = f"http://{target.host}/team/plain:v1"
        assert httpx.post(f"{server.url}/api/copy", json={"source": name, "destination": dest}).status_code == 200
        with httpx.stream("POST", f"{server.url}/api/push", json={"model": dest}, timeout=60) as resp:
            lines = [json.loads(x) for x in resp.iter_lines() if x.strip()]
        assert lines == [{"status": "retrieving manifest"}, {"error": "insecure protocol http"}]
        assert not target.log
        r = httpx.post(f"{server.url}/api/push", json={"model": dest, "insecure": True, "stream": False}, timeout=60)
        assert r.json() == {"status": "success"}
    finally:
        target.stop()
