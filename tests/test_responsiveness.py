"""One heavy request must not hold up the others: long prompts are tokenized off the event loop,
an embedding whose client went away stops, model loads do not wait behind embeddings, and one
embedding request has a bounded number of inputs.

Against real server processes with tiny random-weight models. The tests prove what happened by
the order of events and the server's state, never by how long something took: waits are bounded
generously only so that a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time

import httpx
import pytest

from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import Server, start_server
from tests.gguf_factory import write_random_llama

# Tokenizing this takes the tiny model's BPE tokenizer seconds (one 8 MB "word"); the request asks
# not to truncate, so once tokenized it is refused at once (400) without computing anything.
HUGE = "a" * 8_000_000
# An input of about 4,096 tokens: embedding one takes seconds on a CPU (one per batch).
LONG_INPUT = "hello world " * 2100
EMBED_OPTIONS = {"num_ctx": 4096}
MAX_EMBED_INPUTS = 2048  # server.inference.MAX_EMBED_INPUTS, as OpenAI's /v1/embeddings caps it


@pytest.fixture
def server(fresh_store, tmp_path):
    srv = start_server(fresh_store, {"OLLAMA_NUM_PARALLEL": "2"}, log_dir=tmp_path)
    yield srv
    srv.stop()


def send(server: Server, path: str, body: dict) -> socket.socket:
    """Send a whole request on a raw connection and return the connection, to read or drop later."""
    data = json.dumps(body).encode()
    host, port = server.host.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    return sock


def status_of(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "connection closed without a response"
        head += chunk
    return int(head.split(b" ", 2)[1])


def answered(sock: socket.socket) -> bool:
    """Whether any of the response (or the connection's end) has arrived, without waiting."""
    return bool(select.select([sock], [], [], 0)[0])


# ---- A: tokenizing a huge prompt happens off the event loop --------------------------------------


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": "tiny", "prompt": HUGE, "raw": True, "truncate": False, "stream": False}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": HUGE}], "truncate": False,
                   "stream": False}),
    ("/api/embed", {"model": "tiny", "input": HUGE, "truncate": False}),
])
def test_a_huge_prompt_does_not_stop_other_streams(server, path, body):
    """While one request's prompt is being tokenized, another request streams to its end."""
    warm = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False,
                                                          "options": {"num_predict": 1}}, timeout=120)
    assert warm.status_code == 200
    big = send(server, path, body)
    try:
        time.sleep(1)  # the server has the whole body and is tokenizing: the stream below starts after
        lines = []
        stream = {"model": "tiny", "prompt": "count", "options": {"num_predict": 8, "ignore_eos": True}}
        with httpx.stream("POST", server.url + "/api/generate", json=stream, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.append(json.loads(line))
        assert lines[-1]["done"] and len(lines) > 2
        assert not answered(big), "the stream ended only after the huge prompt was tokenized"
        assert status_of(big, 300) == 400  # the huge prompt was tokenized all the same, then refused
    finally:
        big.close()


# ---- B: an embedding whose client went away stops -------------------------------------------------


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings"])
def test_an_abandoned_embedding_stops(server, path):
    """300 inputs of 4,096 tokens take long minutes to embed on a CPU; once the client
    has gone, the embedding stops after the batch under way and the next one is served."""
    small = {"model": "tiny", "input": ["hello"], "options": EMBED_OPTIONS}
    assert httpx.post(server.url + "/api/embed", json=small, timeout=120).status_code == 200  # loaded
    big = send(server, path, {"model": "tiny", "input": [LONG_INPUT] * 300, "options": EMBED_OPTIONS})
    time.sleep(2)  # the server has the request and is working on it
    assert not answered(big)
    big.close()
    # the old code finished the abandoned embedding first (tens of minutes), holding the embedder
    r = httpx.post(server.url + "/api/embed", json=small, timeout=180)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


def test_shutdown_does_not_wait_for_an_abandoned_embedding(server):
    """SIGTERM with a long embedding under way: the process ends (its grace period is 5 s)."""
    small = {"model": "tiny", "input": ["hello"], "options": EMBED_OPTIONS}
    assert httpx.post(server.url + "/api/embed", json=small, timeout=120).status_code == 200
    big = send(server, "/api/embed", {"model": "tiny", "input": [LONG_INPUT] * 300, "options": EMBED_OPTIONS})
    try:
        time.sleep(2)
        assert not answered(big)
        server.proc.terminate()
        server.proc.wait(timeout=120)  # raises if it is still running
    finally:
        big.close()


# ---- B: loads and unloads do not wait for worker threads that embeddings hold ----------------------


def test_loads_are_not_starved_by_busy_embeddings(fresh_store, tmp_path):
    """More embedding requests than the event loop's default executor has threads, all waiting on one
    model's embedder: another model still loads, and unloads."""
    other = write_random_llama(tmp_path / "other.gguf", n_layer=1, d=64, seed=7)
    register_gguf(Store(fresh_store), "other", other, template="{{ .Prompt }}")
    srv = start_server(fresh_store, {"OLLAMA_NUM_PARALLEL": "1"}, log_dir=tmp_path)
    socks: list[socket.socket] = []
    try:
        small = {"model": "tiny", "input": ["hello"], "options": EMBED_OPTIONS}
        assert httpx.post(srv.url + "/api/embed", json=small, timeout=120).status_code == 200
        threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor, in the server too
        body = {"model": "tiny", "input": [LONG_INPUT] * 4, "options": EMBED_OPTIONS}
        socks = [send(srv, "/api/embed", body) for _ in range(threads + 4)]
        time.sleep(2)  # they have all arrived
        assert not any(answered(s) for s in socks[1:])  # the first may have finished: the rest wait
        load = httpx.post(srv.url + "/api/generate", json={"model": "other"}, timeout=180)
        assert load.status_code == 200 and load.json()["done_reason"] == "load"
        # the load came before the embeddings ended (they take turns batch by batch, so none ends
        # early); with loads on the default executor it waited until embedding requests had ended
        # and given back their threads (two of them, half a minute, when this test was written)
        assert sum(answered(s) for s in socks) <= 1
        names = {m["name"] for m in httpx.get(srv.url + "/api/ps", timeout=30).json()["models"]}
        assert "other:latest" in names
        unload = httpx.post(srv.url + "/api/generate", json={"model": "other", "keep_alive": 0}, timeout=180)
        assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
        names = {m["name"] for m in httpx.get(srv.url + "/api/ps", timeout=30).json()["models"]}
        assert "other:latest" not in names
    finally:
        for s in socks:
            s.close()
        srv.stop()


# ---- B: the number of inputs in one request is capped ---------------------------------------------


def test_embedding_inputs_are_capped(server):
    many = ["x"] * MAX_EMBED_INPUTS
    r = httpx.post(server.url + "/api/embed", json={"model": "tiny", "input": many}, timeout=300)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == MAX_EMBED_INPUTS

    r = httpx.post(server.url + "/api/embed", json={"model": "tiny", "input": many + ["x"]}, timeout=60)
    assert r.status_code == 400
    assert r.json() == {"error": "too many inputs: 2049; at most 2048 in one request"}

    r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": many + ["x"]}, timeout=60)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"] == "too many inputs: 2049; at most 2048 in one request"
    assert error["type"] == "invalid_request_error" and error["param"] == "input"

    r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", "input": many}, timeout=300)
    assert r.status_code == 200 and len(r.json()["data"]) == MAX_EMBED_INPUTS
