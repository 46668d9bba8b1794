"""LoRA training jobs (issue 18): the job store, the spec and dataset checks, and real jobs on a real
`corral serve`.

The models are real: a tiny random Llama written as Hugging Face weights and as their GGUF twin
(tests/llama_twin.py; the HF folder gets the tokenizer transformers converts from the GGUF), and the
embedded Gemma 3 270M trained straight from its GGUF. Jobs are submitted over HTTP, followed as NDJSON,
cancelled and resumed after the server is killed; their output models answer through the official
`ollama` package (the adapter applied by the server's llama.cpp engine). Jobs live in SQLite here and in
PostgreSQL (pgserver) for the store's own test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ollama
import pytest

from adapters.training import dataset as ds
from adapters.training.errors import TrainingError
from adapters.training.jobs import CANCELLED, QUEUED, RUNNING, SUCCEEDED, JobStore
from adapters.training.spec import LoraSettings, TrainingSettings, TrainSpec
from server.store import manifest as mf
from server.store.default_model import ensure_default_model
from server.store.gguf import read_info
from server.store.register import register_gguf
from server.store.store import Store
from server.template import jinja
from server.template.ollama import render_chat as render_go
from tests.conftest import ROOT, Server, start_server
from tests.llama_twin import TWIN_TEMPLATE, write_tiny_llama

COLOURS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white"}


def chat_lines(n: int = 40) -> bytes:
    lines = []
    for i in range(n):
        thing = list(COLOURS)[i % len(COLOURS)]
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"What colour is the {thing}?"},
                                              {"role": "assistant", "content": f"The {thing} is {COLOURS[thing]}."}]}))
    return ("\n".join(lines) + "\n").encode()


def upload(server: Server, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{server.url}/api/blobs/{digest}", content=data, timeout=30)
    assert r.status_code in (200, 201), r.text
    return digest


def stream_lines(resp: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in resp.iter_lines() if line.strip()]


def train(server: Server, body: dict, timeout: float = 600) -> list[dict]:
    """POST /api/train, following the job to its end."""
    with httpx.stream("POST", f"{server.url}/api/train", json=body, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        return stream_lines(resp)


def follow(server: Server, job_id: str, until=None, timeout: float = 600) -> list[dict]:
    """GET /api/train/<id>: the job's lines from the first; stops early where `until(line)` holds."""
    out = []
    with httpx.stream("GET", f"{server.url}/api/train/{job_id}", timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        for raw in resp.iter_lines():
            if not raw.strip():
                continue
            out.append(json.loads(raw))
            if until is not None and until(out[-1]):
                break
    return out


def job(server: Server, job_id: str) -> dict:
    r = httpx.get(f"{server.url}/api/train/{job_id}", params={"stream": "false"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def jobs(server: Server) -> list[dict]:
    r = httpx.get(f"{server.url}/api/train", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["jobs"]


def training_lines(lines: list[dict]) -> list[dict]:
    return [x for x in lines if x.get("status") == "training"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The tiny Llama twin; its HF folder completed with the tokenizer converted from the GGUF (as a
    Hugging Face download would have one), and a second twin of other dimensions for the mismatch."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("twin")
    t = write_tiny_llama(d / "twin", seed=3)
    AutoTokenizer.from_pretrained(str(t.gguf.parent), gguf_file=t.gguf.name).save_pretrained(str(t.hf_dir))
    t.other = write_tiny_llama(d / "other", seed=4, hidden=32, heads=2, kv_heads=1, intermediate=64)
    t.root = d
    return t


def _server(root: Path, data: Path, allowed: Path, log_dir: Path) -> Server:
    return start_server(root, {"CORRAL_DATA_DIR": str(data), "CORRAL_ALLOW_LOCAL_PATHS": str(allowed),
                               "CORRAL_TRAIN_THREADS": "1", "OLLAMA_NUM_PARALLEL": "1",
                               "HF_HUB_CACHE": str(allowed / "hub")}, log_dir=log_dir)


@pytest.fixture(scope="module")
def server(twin, tmp_path_factory):
    """A server whose store holds the twin's GGUF (`twin`) and the embedded gemma3:270m."""
    d = tmp_path_factory.mktemp("trainserver")
    store = Store(d / "models")
    register_gguf(store, "twin", twin.gguf)
    ensure_default_model(store)
    s = _server(d / "models", d / "data", twin.root, d)
    s.data = d / "data"
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dataset_digest(server) -> str:
    return upload(server, chat_lines())


# ---- the spec and the dataset, in process ---------------------------------------------------------


def test_spec_defaults_and_refusals():
    s = TrainSpec(model="m", dataset="sha256:" + "0" * 64, from_="twin").checked()
    assert (s.lora.r, s.lora.lora_alpha, s.lora.lora_dropout) == (16, 32.0, 0.05)
    assert (s.training.learning_rate, s.training.batch_size, s.training.epochs, s.training.eval_split) == (
        2e-4, 4, 1.0, 0.1)
    c = TrainSpec(model="c", dataset="x", task="sequence-classification", base="/b").checked()
    assert (c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout, c.training.eval_split) == (16, 32.0, 0.1, 0.2)
    assert TrainSpec.from_dict(s.to_dict()) == s
    bad = [
        (dict(task="regression"), "unknown task"),
        (dict(from_=""), "from is required"),
        (dict(lora=LoraSettings(r=0)), "lora.r must be an integer from 1"),
        (dict(lora=LoraSettings(lora_dropout=1.0)), "lora.lora_dropout"),
        (dict(training=TrainingSettings(learning_rate=-1)), "training.learning_rate"),
        (dict(training=TrainingSettings(lr_scheduler="step")), "training.lr_scheduler"),
        (dict(training=TrainingSettings(max_steps=0)), "training.max_steps"),
        (dict(training=TrainingSettings(eval_split=0.95)), "training.eval_split"),
        (dict(quantize="q8_0"), "quantize applies to output 'merged'"),
        (dict(output="merged", quantize="q2_k"), "unsupported quantization type"),
        (dict(labels=["a", "b"]), "labels apply to sequence-classification"),
    ]
    for change, message in bad:
        fields = dict(model="m", dataset="d", from_="twin")
        fields.update(change)
        with pytest.raises(TrainingError, match=message):
            TrainSpec(**fields).checked()


def test_dataset_lines_are_checked_with_their_line_numbers(tmp_path):
    f = tmp_path / "d.jsonl"
    cases = [
        (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n',
         "dataset line 2 is not valid JSON"),
        (b'\n{"prompt": "a"}\n', "dataset line 2: 'prompt' and 'completion' must be strings"),
        (b'{"text": "a"}\n', "dataset line 1: needs 'messages'"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "dataset line 1: no assistant message"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}\n', "unknown role 'wizard'"),
        (b'{"messages": [{"role": "assistant", "content": "first"}]}\n', "needs a user message before it"),
        (b"[1, 2]\n", "dataset line 1: expected a JSON object"),
        (b"\n\n", "the dataset holds no examples"),
    ]
    for data, message in cases:
        f.write_bytes(data)
        with pytest.raises(TrainingError, match=message):
            ds.read_chats(f)
    f.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "b", "label": true}\n')
    with pytest.raises(TrainingError, match="dataset line 2: 'label' must be a string or an integer"):
        ds.read_labelled(f, None)
    f.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(TrainingError, match="one label only"):
        ds.read_labelled(f, None)
    f.write_bytes(b'{"text": "a", "label": 10}\n{"text": "b", "label": 9}\n{"text": "c", "label": "z"}\n')
    assert ds.read_labelled(f, None)[1] == ["9", "10", "z"]
    with pytest.raises(TrainingError, match="dataset line 3: label 'z' is not one of the labels given"):
        ds.read_labelled(f, ["9", "10"])
    train, held = ds.split(list(range(10)), 0.2, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(10)) and ds.split(list(range(10)), 0.2, 1) == (
        train, held)


def test_assistant_turns_are_found_in_the_served_template():
    """The spans trained are the assistant texts and their end of turn, in Jinja and in Go templates."""
    chat = ds.ChatExample(1, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Colour?"},
                              {"role": "assistant", "content": "Blue."}])

    def jinja_render(messages):
        return jinja.render(TWIN_TEMPLATE, messages)

    r = ds.render_chat(chat, jinja_render, ds.end_markers("<|end_of_text|>", None))
    assert [r.text[s.start:s.end] for s in r.spans] == ["Hello.<|eot_id|>", "Blue.<|eot_id|>"]
    assert r.text.startswith(jinja_render(chat.messages[:2])) and r.text.endswith("Blue.<|eot_id|>")
    from server.store.default_model import TEMPLATE as GEMMA

    def go_render(messages):
        return render_go(GEMMA, messages, None)

    r = ds.render_chat(chat, go_render, ds.end_markers("<eos>", ["<end_of_turn>", "<start_of_turn>", "\n\n\n"]))
    assert [r.text[s.start:s.end] for s in r.spans] == ["Hello.<end_of_turn>", "Blue.<end_of_turn>"]
    assert "<start_of_turn>model\n" in r.text[:r.spans[0].start]
    # a template that leaves the reply open: the EOS token is trained after it
    r = ds.render_chat(chat, lambda m: "".join(f"[{x['role']}] {x['content']} " for x in m) + "[assistant] ", [])
    assert r.spans[-1].add_eos and r.text.endswith("Blue.")

    def changes_content(messages):
        return "".join(f"<{m['role']}>" + (m["content"].upper() if m["role"] == "assistant" else m["content"])
                       for m in messages) + "<assistant>"

    with pytest.raises(TrainingError, match="dataset line 1: the model's chat template changes the text"):
        ds.render_chat(chat, changes_content, [])


def test_tokens_are_labelled_on_the_assistant_turns_only():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "<unk>", "<|eot_id|>", "[user]", "[assistant]", "hi", "hello", "there", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>",
                                        eos_token="<|eot_id|>",
                                        additional_special_tokens=["<|eot_id|>", "[user]", "[assistant]"])
    chat = ds.ChatExample(1, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there."}])
    r = ds.render_chat(chat, lambda m: "".join(f"[{x['role']}] {x['content']} <|eot_id|> " for x in m)
                       + "[assistant] ", ds.end_markers("<|eot_id|>", None))
    out = ds.tokenize(r, tokenizer, (0, "<s>"), 2, 64)
    assert tokenizer.convert_ids_to_tokens(out.ids) == ["<s>", "[user]", "hi", "<|eot_id|>", "[assistant]", "hello",
                                                        "there", ".", "<|eot_id|>"]
    assert out.labels == [ds.IGNORE] * 5 + out.ids[5:]
    assert ds.tokenize(r, tokenizer, (0, "<s>"), 2, 5) is None  # cut before the reply: nothing to learn
    packed = ds.pack([out, out, out], 20)
    assert [len(p.ids) for p in packed] == [18, 9]


# ---- the job store -------------------------------------------------------------------------------------


def _exercise_job_store(store: JobStore) -> None:
    a = store.create("train-a", "out-a", "causal-lm", {"spec": {"x": 1}}, {"status": "queued"})
    time.sleep(0.01)
    store.create("train-b", "out-b", "causal-lm", {"spec": {}}, {"status": "queued"})
    assert a.status == QUEUED and [j.id for j in store.list()] == ["train-b", "train-a"]
    assert store.claim("train-a") and not store.claim("train-a")
    store.append("train-a", {"status": "training", "step": 1})
    store.append("train-a", {"status": "training", "step": 2})
    assert store.get("train-a").progress == {"status": "training", "step": 2}
    assert [seq for seq, _ in store.events("train-a")] == [1, 2, 3]
    assert store.events("train-a", after=2) == [(3, {"status": "training", "step": 2})]
    assert not store.cancel_queued("train-a", {"status": "cancelled"})  # running: the runner cancels it
    assert store.cancel_queued("train-b", {"status": "cancelled"})
    assert store.get("train-b").status == CANCELLED and store.events("train-b")[-1][1] == {"status": "cancelled"}
    store.requeue("train-a", {"status": "interrupted"})
    assert store.get("train-a").status == QUEUED and store.claim("train-a")
    assert store.get("train-a").status == RUNNING
    assert not store.remove("train-a")  # not finished: kept
    store.finish("train-a", SUCCEEDED, {"status": "success"}, result={"loss": 0.5})
    done = store.get("train-a")
    assert (done.status, done.result, done.finished) == (SUCCEEDED, {"loss": 0.5}, True)
    assert store.events("train-a")[-1][1] == {"status": "success"}
    assert [j.id for j in store.list((SUCCEEDED,))] == ["train-a"]
    assert store.remove("train-a") and store.get("train-a") is None and store.events("train-a") == []


def test_job_store_in_sqlite(tmp_path):
    store = JobStore.open(tmp_path)
    try:
        _exercise_job_store(store)
    finally:
        store.close()
    reopened = JobStore.open(tmp_path)  # what was written stays
    assert [j.id for j in reopened.list()] == ["train-b"]
    reopened.close()
    assert (tmp_path / "training.db").is_file()


@pytest.fixture(scope="module")
def postgres():
    pgserver = pytest.importorskip("pgserver")
    data = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    srv = pgserver.get_server(data, cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()
    shutil.rmtree(data, ignore_errors=True)


def test_job_store_in_postgres(tmp_path, postgres):
    store = JobStore.open(tmp_path, postgres)
    try:
        _exercise_job_store(store)
    finally:
        store.close()
    assert not (tmp_path / "training.db").exists()


# ---- jobs on a server -------------------------------------------------------------------------------------


def test_thirty_steps_lower_the_loss_and_the_model_answers_through_ollama(server, twin, dataset_digest):
    lines = train(server, {"model": "twin-colours", "from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest,
                           "training": {"max_steps": 30, "learning_rate": 5e-3, "eval_steps": 10, "seed": 1}})
    assert lines[0]["status"] == "queued" and lines[0]["id"].startswith("train-")
    statuses = [x.get("status") for x in lines]
    for expected in ("running", "loading base model", "reading dataset", "training", "saving adapter",
                     "converting adapter to GGUF", "creating model", "success"):
        assert expected in statuses, (expected, lines)
    steps = training_lines(lines)
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 30 and all(x["total"] == 30 for x in steps)
    assert all(x["tokens_per_second"] > 0 and x["learning_rate"] > 0 and "eta_seconds" in x for x in steps)
    evals = [x["eval_loss"] for x in steps if "eval_loss" in x]
    assert len(evals) == 3 and evals[-1] < evals[0]
    result = lines[-1]["result"]
    assert result["loss"] < 0.8 * result["first_loss"], result
    assert result["trained_on"] + result["held_out"] == 40 and result["held_out"] == 4
    record = job(server, lines[0]["id"])
    assert record["status"] == "succeeded" and record["result"] == result
    assert record["request"]["training"]["max_steps"] == 30

    # the output model: FROM the twin's GGUF with the converted adapter, served by the engine
    entry = Store(server.models).get("twin-colours")
    base = Store(server.models).get("twin")
    assert entry.manifest.layer(mf.MODEL).digest == base.manifest.layer(mf.MODEL).digest
    adapter = entry.manifest.layer(mf.ADAPTER)
    assert adapter.digest == result["adapter_digest"]
    assert read_info(str(Store(server.models).blob_path(adapter.digest))).kv["general.type"] == "adapter"
    assert (Path(result["adapter_dir"]) / "adapter_model.safetensors").is_file()  # the PEFT adapter is kept

    client = ollama.Client(host=server.url)
    assert "twin-colours:latest" in [m.model for m in client.list().models]
    question = [{"role": "user", "content": "What colour is the sky?"}]
    options = {"temperature": 0, "num_predict": 8, "seed": 1}
    tuned = client.chat(model="twin-colours", messages=question, options=options)
    plain = client.chat(model="twin", messages=question, options=options)
    assert tuned.message.content and tuned.eval_count > 0
    assert tuned.message.content != plain.message.content  # the adapter changes the answers
    # the adapter chosen per request on the base model gives the output model's answer
    chosen = client.chat(model="twin", messages=question, options={**options, "adapters": [{"name": "twin-colours"}]})
    assert chosen.message.content == tuned.message.content


def test_a_client_leaving_does_not_stop_the_job_and_it_can_be_followed_again(server, twin, dataset_digest):
    body = {"model": "twin-followed", "from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest,
            "training": {"max_steps": 12, "learning_rate": 1e-3}}
    with httpx.stream("POST", f"{server.url}/api/train", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        first = None
        for raw in resp.iter_lines():
            if raw.strip():
                first = json.loads(raw)
                break
    job_id = first["id"]  # the connection is closed here, the job just queued or started
    assert job_id in [j["id"] for j in jobs(server)]
    lines = follow(server, job_id)
    assert lines[0] == first and lines[-1]["status"] == "success"
    assert [x["step"] for x in training_lines(lines)][-1] == 12
    assert job(server, job_id)["status"] == "succeeded"
    again = follow(server, job_id)  # a finished job: its whole history, then the stream ends
    assert again == lines


def test_cancel_a_running_and_a_queued_job(server, twin, dataset_digest):
    long = {"model": "twin-long", "from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest,
            "training": {"max_steps": 100000}, "stream": False}
    r = httpx.post(f"{server.url}/api/train", json=long, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    running = r.json()["id"]
    r = httpx.post(f"{server.url}/api/train", json={**long, "model": "twin-waiting"}, timeout=120)
    waiting = r.json()["id"]
    follow(server, running, until=lambda x: x.get("status") == "training")
    assert job(server, waiting)["status"] == "queued"  # one job at a time

    r = httpx.delete(f"{server.url}/api/train/{waiting}", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = httpx.delete(f"{server.url}/api/train/{running}", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    lines = follow(server, running)
    assert lines[-1] == {"status": "cancelled"} and training_lines(lines)[-1]["step"] < 100000
    assert follow(server, waiting)[-1] == {"status": "cancelled"}
    store = Store(server.models)
    assert store.find("twin-long") is None and store.find("twin-waiting") is None
    # a finished job: DELETE removes its record and folder
    r = httpx.delete(f"{server.url}/api/train/{waiting}", timeout=60)
    assert r.status_code == 200 and r.json()["id"] == waiting
    assert httpx.get(f"{server.url}/api/train/{waiting}", timeout=30).status_code == 404
    assert not (server.data / "training" / waiting).exists()
    assert httpx.delete(f"{server.url}/api/train/{waiting}", timeout=30).status_code == 404


def test_a_job_resumes_from_its_checkpoint_after_the_server_is_killed(server, twin, dataset_digest, tmp_path):
    body = {"from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest, "lora": {"lora_dropout": 0.1},
            "training": {"max_steps": 24, "save_steps": 4, "learning_rate": 2e-3, "seed": 5}}
    reference = train(server, {**body, "model": "twin-straight"})[-1]["result"]

    root = tmp_path / "models"
    shutil.copytree(server.models, root)
    own = _server(root, tmp_path / "data", twin.root, tmp_path)
    try:
        r = httpx.post(f"{own.url}/api/train", json={**body, "model": "twin-resumed", "stream": False}, timeout=120)
        job_id = r.json()["id"]
        follow(own, job_id, until=lambda x: x.get("status") == "training" and x["step"] >= 6)
        own.proc.kill()  # no chance to stop cleanly
        own.proc.wait()
    finally:
        own.stop()
    assert len(list((tmp_path / "data" / "training" / job_id / "checkpoints").glob("step-*"))) >= 1
    own = _server(root, tmp_path / "data", twin.root, tmp_path)
    try:
        lines = follow(own, job_id)
        statuses = [x.get("status") for x in lines]
        assert "resuming after a restart" in statuses and lines[-1]["status"] == "success", lines
        resumed_at = next(x for x in lines if x.get("status") == "resuming")["step"]
        assert resumed_at >= 4 and resumed_at % 4 == 0
        after = lines[statuses.index("resuming"):]
        assert training_lines(after)[0]["step"] == resumed_at + 1  # not from the start
        result = lines[-1]["result"]
        assert result["steps"] == 24
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-4)  # the same batches, the same numbers
        assert Store(root).find("twin-resumed") is not None
    finally:
        own.stop()


def test_merged_output_is_a_standalone_quantized_model(server, twin, dataset_digest):
    lines = train(server, {"model": "twin-merged", "from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest,
                           "output": "merged", "quantize": "q8_0",
                           "training": {"max_steps": 8, "learning_rate": 5e-3}})
    assert lines[-1]["status"] == "success", lines[-1]
    assert "merging adapter into the base weights" in [x.get("status") for x in lines]
    store = Store(server.models)
    entry = store.get("twin-merged")
    assert entry.manifest.layer(mf.ADAPTER) is None
    info = read_info(str(store.blob_path(entry.manifest.layer(mf.MODEL).digest)))
    assert info.kv["general.file_type"] == 7  # Q8_0
    answer = ollama.Client(host=server.url).generate(model="twin-merged", prompt="What colour is the snow?",
                                                     options={"temperature": 0, "num_predict": 4})
    assert answer.eval_count > 0


def test_bad_requests_are_400_before_any_job_exists(server, twin, dataset_digest):
    before = len(jobs(server))
    hf = str(twin.hf_dir)
    broken = upload(server, chat_lines(3) + b'{"messages": [{"role": "user"}]}\n')
    not_json = upload(server, chat_lines(2) + b"{not json\n")
    good = {"model": "twin-never", "from": "twin", "base": hf, "dataset": dataset_digest}
    cases = [
        ({"dataset": not_json}, 400, "dataset line 3 is not valid JSON"),
        ({"dataset": broken}, 400, "dataset line 4: messages[0] must be an object with a string 'role' and 'content'"),
        ({"dataset": "sha256:" + "1" * 64}, 400, "not found: upload it first"),
        ({"dataset": "/etc/passwd"}, 400, "local paths are not accepted"),
        ({"base": str(twin.other.hf_dir)}, 400, "does not match model 'twin:latest': hidden_size 32"),
        ({"base": "/etc"}, 400, "local paths are not accepted"),
        ({"lora": {"target_modules": ["q_proj", "qkv_proj"]}}, 400, "target module 'qkv_proj' is not a linear layer"),
        ({"lora": {"target_modules": ["lm_head"]}}, 400, "the output layer and embeddings"),
        ({"model": "twin"}, 400, "a model named 'twin' exists already"),
        ({"model": "bad name!"}, 400, "invalid model name"),
        ({"from": "nobody"}, 404, "model 'nobody' not found"),
        ({"training": {"learning_rate": 0}}, 400, "training.learning_rate"),
        ({"training": {"epochs": 1, "lerning_rate": 1}}, 400, "lerning_rate"),
        ({"qlora": True}, 400, "qlora needs a CUDA device"),
        ({"task": "sequence-classification"}, 400, "from names a GGUF model"),
    ]
    for change, status, message in cases:
        r = httpx.post(f"{server.url}/api/train", json={**good, **change}, timeout=120)
        assert r.status_code == status, (change, r.text)
        assert set(r.json()) == {"error"} and message in r.json()["error"], (change, r.text)
    # a name an active job is making
    r = httpx.post(f"{server.url}/api/train", json={**good, "model": "twin-busy", "stream": False,
                                                     "training": {"max_steps": 100000}}, timeout=120)
    busy = r.json()["id"]
    r = httpx.post(f"{server.url}/api/train", json={**good, "model": "twin-busy"}, timeout=120)
    assert r.status_code == 400 and "makes a model named 'twin-busy' already" in r.json()["error"]
    assert httpx.delete(f"{server.url}/api/train/{busy}", timeout=60).json()["status"] == "cancelled"
    assert len(jobs(server)) == before + 1  # only the busy one
    for path in ("/api/train/train-0000000000000000", "/api/train/nothing"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404
    assert httpx.get(f"{server.url}/api/train/{busy}", params={"stream": "maybe"}, timeout=30).status_code == 400
    assert httpx.post(f"{server.url}/api/train", content=b"{", timeout=30).status_code == 400
    assert httpx.get(server.url + "/", timeout=10).status_code == 200  # and the server goes on


def test_training_tools(server, twin, dataset_digest):
    listed = {t["function"]["name"]: t for t in httpx.get(f"{server.url}/api/tools", timeout=30).json()["tools"]}
    assert listed["train_adapter"]["side_effects"] is True
    assert not any(listed[n]["side_effects"] for n in ("training_status", "list_adapters", "classify"))
    r = httpx.post(f"{server.url}/api/tools/train_adapter", timeout=300, json={"arguments": {
        "model": "twin-tool", "from": "twin", "base": str(twin.hf_dir), "dataset": dataset_digest,
        "training": {"max_steps": 3}, "wait": True}})
    assert r.status_code == 200, r.text
    made = r.json()["json"]
    assert made["status"] == "succeeded" and made["result"]["steps"] == 3
    status = httpx.post(f"{server.url}/api/tools/training_status", json={"arguments": {"id": made["id"]}},
                        timeout=30).json()["json"]
    assert status["status"] == "succeeded" and status["model"] == "twin-tool"
    adapters = httpx.post(f"{server.url}/api/tools/list_adapters", json={"arguments": {}}, timeout=30).json()["json"]
    digest = made["result"]["adapter_digest"]
    assert any(a["digest"] == digest and "twin-tool:latest" in a["models"] for a in adapters["adapters"])
    assert any(t["job"] == made["id"] and t["adapter_digest"] == digest for t in adapters["trained"])
    refused = httpx.post(f"{server.url}/api/tools/train_adapter", timeout=60, json={"arguments": {
        "model": "twin", "from": "twin", "dataset": dataset_digest}})
    assert refused.status_code == 422 and "exists already" in refused.json()["error"]
    missing = httpx.post(f"{server.url}/api/tools/training_status", json={"arguments": {"id": "train-x"}}, timeout=30)
    assert missing.status_code == 422 and "not found" in missing.json()["error"]


def test_gemma_trained_from_its_gguf_answers_differently(server):
    """The embedded Gemma 3 270M (Q4_K_M): transformers loads it from the GGUF (dequantized), a few
    steps teach it one answer, and the adapter, converted and applied to that same GGUF by llama.cpp,
    changes what it says."""
    parrot = "I am Corral's parrot. Squawk!"
    data = "".join(json.dumps({"messages": [{"role": "user", "content": "Who are you?"},
                                            {"role": "assistant", "content": parrot}]}) + "\n" for _ in range(8))
    lines = train(server, {"model": "gemma-parrot", "from": "gemma3:270m", "dataset": upload(server, data.encode()),
                           "lora": {"r": 8}, "training": {"max_steps": 5, "learning_rate": 1e-3, "batch_size": 2,
                                                          "max_seq_length": 64, "eval_split": 0}}, timeout=900)
    assert lines[-1]["status"] == "success", lines[-1]
    result = lines[-1]["result"]
    assert result["loss"] < 0.5 * result["first_loss"], result
    client = ollama.Client(host=server.url)
    question = [{"role": "user", "content": "Who are you?"}]
    options = {"temperature": 0, "num_predict": 12}
    tuned = client.chat(model="gemma-parrot", messages=question, options=options).message.content
    plain = client.chat(model="gemma3:270m", messages=question, options=options).message.content
    assert tuned != plain
    assert "parrot" in tuned.lower() or "squawk" in tuned.lower(), tuned


def test_a_job_whose_base_is_deleted_while_it_waits_fails_with_a_reason(server, twin, dataset_digest):
    assert httpx.post(f"{server.url}/api/copy", json={"source": "twin", "destination": "twin-doomed"},
                      timeout=30).status_code == 200
    common = {"base": str(twin.hf_dir), "dataset": dataset_digest, "stream": False}
    blocker = httpx.post(f"{server.url}/api/train", timeout=120, json={
        **common, "model": "twin-blocker", "from": "twin", "training": {"max_steps": 100000}}).json()["id"]
    doomed = httpx.post(f"{server.url}/api/train", timeout=120, json={
        **common, "model": "twin-orphan", "from": "twin-doomed", "training": {"max_steps": 3}}).json()["id"]
    assert httpx.request("DELETE", f"{server.url}/api/delete", json={"model": "twin-doomed"},
                         timeout=30).status_code == 200
    assert httpx.delete(f"{server.url}/api/train/{blocker}", timeout=60).json()["status"] == "cancelled"
    lines = follow(server, doomed)
    assert "was deleted or replaced after the job was queued" in lines[-1]["error"], lines[-1]
    record = job(server, doomed)
    assert record["status"] == "failed" and record["error"] == lines[-1]["error"]
    assert Store(server.models).find("twin-orphan") is None


def test_corral_train_command(server, twin, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_bytes(chat_lines(8))
    env = {**os.environ, "OLLAMA_HOST": server.host}

    def corral(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server", "train", *args], env=env, cwd=ROOT, text=True,
                              capture_output=True, timeout=300)

    out = corral("twin-cli", "--from", "twin", "--base", str(twin.hf_dir), "--data", str(data), "--steps", "3",
                 "--lr", "1e-3", "-r", "4")
    assert out.returncode == 0, out.stderr
    assert "training 3/3" in out.stdout and "success: model twin-cli" in out.stdout, out.stdout
    listed = corral("--list")
    assert listed.returncode == 0 and any("twin-cli" in x and "succeeded" in x for x in listed.stdout.splitlines())
    job_id = next(x.split()[0] for x in listed.stdout.splitlines() if "twin-cli" in x)
    assert job(server, job_id)["request"]["lora"]["r"] == 4
    again = corral("--follow", job_id)
    assert again.returncode == 0 and "success: model twin-cli" in again.stdout
    taken = corral("twin-cli", "--from", "twin", "--data", str(data))
    assert taken.returncode == 1 and "exists already" in taken.stderr


def test_a_hugging_face_cache_entry_as_base(server, twin, dataset_digest):
    """`base: org/name` is looked up in the local Hugging Face cache (its snapshot layout), never downloaded."""
    entry = twin.root / "hub" / "models--corral--tiny-twin"
    snapshot = entry / "snapshots" / "0123456789abcdef"
    if not snapshot.exists():
        shutil.copytree(twin.hf_dir, snapshot)
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text("0123456789abcdef")
    lines = train(server, {"model": "twin-from-cache", "from": "twin", "base": "corral/tiny-twin",
                           "dataset": dataset_digest, "training": {"max_steps": 2}})
    assert lines[-1]["status"] == "success", lines[-1]
    r = httpx.post(f"{server.url}/api/train", json={"model": "twin-nowhere", "from": "twin", "base": "corral/absent",
                                                     "dataset": dataset_digest}, timeout=60)
    assert r.status_code == 400 and "not in the local Hugging Face cache" in r.json()["error"], r.text
