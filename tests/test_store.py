"""The model store's own rules, through a real server over a store of the test's own: what a
delete removes, what manifests look like on disk, /api/copy, crash leftovers, model names."""

from __future__ import annotations

import hashlib
import json
import os
import time

import httpx
import pytest

from server.store import manifest as mf
from server.store.names import InvalidName, ModelName
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(models, digest: str):
    return models / "blobs" / digest.replace(":", "-")


@pytest.fixture
def served(fresh_store):
    srv = start_server(fresh_store)
    yield srv
    srv.stop()


# ---- delete ------------------------------------------------------------------------------


def test_delete_removes_only_the_deleted_models_own_blobs(served):
    models = served.models
    http = httpx.Client(base_url=served.url, timeout=120)
    tiny = Store(models).get("tiny")

    # an /api/blobs upload waiting for its /api/create
    upload = os.urandom(50_000)
    assert http.post(f"/api/blobs/{sha(upload)}", content=upload).status_code == 201
    # a blob an in-flight pull has verified but not yet named in a manifest, and an unfinished download
    verified = Store(models).write_blob_bytes(b"verified by a pull in flight").digest
    unfinished = sha(b"still downloading")
    partial = blob(models, unfinished).with_name(blob(models, unfinished).name + "-partial")
    partial.write_bytes(b"still down")
    sidecar = partial.with_name("." + partial.name + ".json")
    sidecar.write_text('{"total": 17, "parts": [{"offset": 0, "size": 17, "completed": 10}]}')

    r = http.post("/api/create", json={"model": "doomed", "from": "tiny", "system": "short-lived system prompt",
                                       "stream": False})
    assert r.status_code == 200, r.text
    doomed = Store(models).get("doomed")
    own = set(doomed.manifest.digests()) - set(tiny.manifest.digests())
    assert len(own) == 2  # the system layer and the config

    assert http.request("DELETE", "/api/delete", json={"model": "doomed"}).status_code == 200
    for digest in own:
        assert not blob(models, digest).exists(), digest
    for digest in tiny.manifest.digests():  # shared with tiny: kept
        assert blob(models, digest).is_file(), digest
    assert blob(models, sha(upload)).read_bytes() == upload
    assert blob(models, verified).is_file()
    assert partial.is_file() and sidecar.is_file()

    # the upload is still usable by the create it was meant for
    r = http.post("/api/create", json={"model": "later", "from": "tiny", "stream": False})
    assert r.status_code == 200
    assert http.head(f"/api/blobs/{sha(upload)}").status_code == 200
    http.close()


def test_delete_keeps_blobs_a_manifest_with_an_unparsable_name_uses(tmp_path, model_files):
    store = Store(tmp_path / "models")
    register_gguf(store, "a", model_files["tiny"], system="shared")
    entry = store.get("a")
    # a manifest under a name this version refuses (a namespace with a dot) still protects its blobs
    odd = store.manifests / "registry.ollama.ai" / "old.style" / "m" / "latest"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(entry.path.read_bytes())
    store.delete("a")
    for digest in entry.manifest.digests():
        assert store.has_blob(digest)


# ---- the manifest on disk ------------------------------------------------------------------


def test_written_manifests_carry_schema_version_and_media_type(served, model_files):
    models = served.models
    store = Store(models)
    data = json.loads(store.get("tiny").path.read_bytes())  # written by register_gguf
    assert data["schemaVersion"] == 2 and data["mediaType"] == MANIFEST_TYPE
    assert list(data)[:2] == ["schemaVersion", "mediaType"]

    r = httpx.post(f"{served.url}/api/create", json={"model": "made", "from": "tiny", "system": "s",
                                                     "stream": False}, timeout=120)
    assert r.status_code == 200
    data = json.loads(store.get("made").path.read_bytes())
    assert data["schemaVersion"] == 2 and data["mediaType"] == MANIFEST_TYPE
    assert data["config"]["mediaType"] == mf.CONFIG_MEDIA_TYPE
    for layer in data["layers"] + [data["config"]]:
        assert set(layer) == {"mediaType", "digest", "size"}  # unset optional fields stay out
    assert mf.decode(mf.encode(mf.decode(store.get("made").path.read_bytes()))) == store.get("made").manifest


# ---- copy ----------------------------------------------------------------------------------


def test_copy_keeps_the_manifests_bytes(served):
    models = served.models
    store = Store(models)
    tiny = store.get("tiny")
    # a manifest as another tool wrote it: other key order, spacing, a field Corral does not model
    data = json.loads(tiny.path.read_bytes())
    foreign = {"layers": data["layers"], "config": data["config"], "mediaType": MANIFEST_TYPE,
               "schemaVersion": 2, "annotations": {"org.example": "kept"}}
    raw = json.dumps(foreign, indent=2).encode()
    store.write_manifest("foreign", mf.decode(raw), raw=raw)

    r = httpx.post(f"{served.url}/api/copy", json={"source": "foreign", "destination": "team/copied:v2"})
    assert r.status_code == 200, r.text
    assert store.get("team/copied:v2").path.read_bytes() == raw
    tags = {m["name"]: m["digest"] for m in httpx.get(f"{served.url}/api/tags").json()["models"]}
    assert tags["team/copied:v2"] == tags["foreign:latest"] == hashlib.sha256(raw).hexdigest()


# ---- leftovers of a crash --------------------------------------------------------------------


def test_stale_temporary_files_are_removed_at_start(fresh_store):
    models = fresh_store
    blobs = models / "blobs"
    hour_ago = time.time() - 3600
    digest = sha(b"a download to resume")
    partial = blobs / (digest.replace(":", "-") + "-partial")
    stale = [
        blobs / ".tmp-abc123",  # Store.write_blob / import_file
        blobs / ".upload-def456",  # /api/blobs
        blobs / ".quantize-789.gguf",  # create with quantize
        blobs / ".assemble-xyz",  # the default model's assembly (a directory)
        blobs / ("." + partial.name + ".json.tmp"),  # a sidecar being replaced
        models / "manifests" / "registry.ollama.ai" / "library" / "tiny" / ".tmp-manifest",
    ]
    keep = [
        partial,  # pull resume
        blobs / ("." + partial.name + ".json"),
        blobs / ".upload-fresh",  # recent: some writer may still own it
    ]
    for path in stale + keep:
        if path.name.startswith(".assemble-"):
            path.mkdir()
            (path / "model.gguf").write_bytes(b"half assembled")
            os.utime(path / "model.gguf", (hour_ago, hour_ago))
        else:
            path.write_bytes(b"leftover")
        if path.name != ".upload-fresh":
            os.utime(path, (hour_ago, hour_ago))
    before = {p.name for p in blobs.iterdir() if p.name.startswith("sha256-") and not p.name.endswith("-partial")}

    srv = start_server(models)
    try:
        for path in stale:
            assert not path.exists(), path
        for path in keep:
            assert path.exists(), path
        after = {p.name for p in blobs.iterdir() if p.name.startswith("sha256-") and not p.name.endswith("-partial")}
        assert after == before
        assert httpx.post(f"{srv.url}/api/show", json={"model": "tiny"}).status_code == 200
    finally:
        srv.stop()


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["my.ns/model", "host.example/a.b/model:tag", "x./m", "ns/m:t:g", "ns/m:ta/g"])
def test_invalid_names(text):
    with pytest.raises(InvalidName):
        ModelName.parse(text)


def test_valid_names_and_schemes():
    n = ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert (n.host, n.namespace, n.model, n.tag) == ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")
    n = ModelName.parse("my_ns/model.v2:1.5")
    assert (n.namespace, n.model, n.tag, n.scheme) == ("my_ns", "model.v2", "1.5", "")
    plain = ModelName.parse("http://127.0.0.1:5000/ns/m")
    assert plain.scheme == "http" and plain.host == "127.0.0.1:5000"
    assert ModelName.parse("https://127.0.0.1:5000/ns/m").scheme == "https"
    assert plain == ModelName.parse("127.0.0.1:5000/ns/m")  # the scheme is not part of the identity


def test_names_with_a_dotted_namespace_are_refused_by_the_api(served):
    http = httpx.Client(base_url=served.url, timeout=60)
    r = http.post("/api/create", json={"model": "dotted.ns/m", "from": "tiny"})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]
    r = http.post("/api/copy", json={"source": "tiny", "destination": "dotted.ns/m"})
    assert r.status_code == 400
    assert not (served.models / "manifests" / "registry.ollama.ai" / "dotted.ns").exists()
    http.close()
