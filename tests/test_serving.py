"""Concurrency, determinism, cancellation and the queue limit, against real server processes."""

from __future__ import annotations

import asyncio
import socket
import json
import random
import threading
import time

import httpx
import ollama
import pytest

from server.engine.job import Done, Job, Sampling
from server.engine.llama import LlamaModel
from server.engine.runner import Runner, common_prefix
from tests.conftest import start_server

PROMPTS = [
    "Why is the sky blue?",
    "Name three fruits.",
    "What is 2+2?",
    "Write a haiku about snow.",
    "Describe a cat.",
    "What is the capital of Italy?",
    "Tell me a joke.",
    "How do airplanes fly?",
]


def test_eight_concurrent_streams_stay_apart(corral_server):
    """8 streaming chats at once: every stream gets its own answer, none of another's tokens.

    Each request carries a schema whose `id` can only be its own number, so a token routed to the
    wrong stream would show up as a wrong id or broken JSON. (Token-for-token equality with solo
    runs under load is measured by bench/determinism.py: it depends on llama.cpp's numerics.)
    """
    client = ollama.AsyncClient(host=corral_server.url)

    def schema(i: int) -> dict:
        return {"type": "object", "properties": {"id": {"const": i}, "word": {"type": "string", "maxLength": 12}},
                "required": ["id", "word"]}

    async def one(i: int) -> tuple[str, int]:
        stream = await client.chat("gemma3:270m", messages=[{"role": "user", "content": PROMPTS[i]}], stream=True,
                                   format=schema(i), options={"temperature": 0.8, "seed": i, "num_predict": 60})
        parts = [part async for part in stream]
        assert parts[-1].done and not any(p.done for p in parts[:-1])
        return "".join(p.message.content for p in parts), parts[-1].eval_count

    async def run():
        return await asyncio.gather(*[one(i) for i in range(len(PROMPTS))])

    results = asyncio.run(run())
    for i, (text, count) in enumerate(results):
        answer = json.loads(text)
        assert answer["id"] == i and isinstance(answer["word"], str) and count > 0


def test_seeded_sampling_repeats_exactly(corral_server):
    """The same seed and prompt alone give the same text every time. A repeat finds its whole prompt
    in the prefix cache and samples its first token from the logits kept from the earlier run."""
    client = ollama.Client(host=corral_server.url)
    options = {"temperature": 0.9, "seed": 1234, "num_predict": 24}
    results = [client.generate("gemma3:270m", "Once upon a time", options=options) for _ in range(3)]
    runs = [r.response for r in results]
    assert runs[0] and runs.count(runs[0]) == 3
    assert results[2].prompt_eval_count == 0  # nothing computed for the repeat's prompt
    other = client.generate("gemma3:270m", "Once upon a time", options={**options, "seed": 99}).response
    assert other != runs[0]


def test_repeat_from_kept_logits_with_grammar_and_logprobs(corral_server):
    """An exact repeat samples its first token from kept logits: with a grammar (JSON schema) and
    with logprobs it gives what the first run gave, token for token and logprob for logprob."""
    body = {"model": "tiny", "prompt": "Give me a number.", "stream": False, "logprobs": True, "top_logprobs": 3,
            "format": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            "options": {"temperature": 0.7, "seed": 5, "num_predict": 30}}
    runs = [httpx.post(corral_server.url + "/api/generate", json=body, timeout=60).json() for _ in range(2)]
    assert runs[1]["prompt_eval_count"] == 0  # the repeat computed nothing before its first token
    assert isinstance(json.loads(runs[0]["response"])["n"], int)
    assert runs[1]["response"] == runs[0]["response"] and runs[1]["logprobs"] == runs[0]["logprobs"]


def test_utf8_never_split(corral_server):
    """Every streamed chunk is valid UTF-8 text on its own (no broken multi-byte characters)."""
    with httpx.stream("POST", corral_server.url + "/api/generate", json={
        "model": "gemma3:270m", "prompt": "Écris une phrase en français avec des accents: été, déjà, garçon. 日本語も。",
        "options": {"num_predict": 40, "temperature": 0.7, "seed": 3},
    }) as r:
        raw_lines = [line for line in r.iter_bytes()]
    body = b"".join(raw_lines)
    for line in body.splitlines():
        chunk = json.loads(line.decode("utf-8", errors="strict"))
        assert "\ufffd" not in chunk.get("response", "")


@pytest.fixture
def single_slot_server(fresh_store, tmp_path):
    server = start_server(fresh_store, {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"}, log_dir=tmp_path)
    yield server
    server.stop()


def _endless(server, started: threading.Event, stop: threading.Event) -> None:
    """Stream an endless generation (40,960 tokens at most: 10 x num_ctx) until told to stop, then drop
    the connection."""
    body = {"model": "tiny", "prompt": "go on forever", "options": {"num_predict": -1, "num_ctx": 4096}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            started.set()
            if stop.is_set():
                break


def test_disconnect_frees_the_sequence(single_slot_server):
    started, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_endless, args=(single_slot_server, started, stop))
    t.start()
    assert started.wait(30)
    stop.set()
    t.join(30)
    # the only sequence was taken by the endless stream: this finishes only if it was freed
    r = httpx.post(single_slot_server.url + "/api/generate", json={
        "model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 3}}, timeout=30)
    assert r.status_code == 200 and r.json()["done"] is True


def _metric(server, name: str) -> float:
    """A /metrics gauge or counter (`name` without "_total"), summed over models."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
               for sample in family.samples if sample.name in (name, name + "_total"))


def test_queue_overflow_gives_503(single_slot_server):
    started, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_endless, args=(single_slot_server, started, stop))
    t.start()
    assert started.wait(30)
    waiting = threading.Thread(target=lambda: httpx.post(single_slot_server.url + "/api/generate", json={
        "model": "tiny", "prompt": "y", "stream": False, "options": {"num_predict": 2, "num_ctx": 4096}}, timeout=60))
    waiting.start()
    deadline = time.time() + 30
    while time.time() < deadline and _metric(single_slot_server, "corral_requests_queued") < 1:  # until "y" waits for the sequence
        time.sleep(0.05)
    r = httpx.post(single_slot_server.url + "/api/generate", json={
        "model": "tiny", "prompt": "z", "stream": False, "options": {"num_predict": 2, "num_ctx": 4096}}, timeout=30)
    status = r.status_code
    try:
        assert status == 503
        assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    finally:
        stop.set()
        t.join(30)
        waiting.join(60)
    assert httpx.post(single_slot_server.url + "/api/generate", json={
        "model": "tiny", "prompt": "again", "stream": False, "options": {"num_predict": 2}}, timeout=30).status_code == 200


def test_backend_sampling(fresh_store, tmp_path):
    """CORRAL_BACKEND_SAMPLING=1 runs plain chains inside llama_decode (the GPU path, here on the CPU
    backend); chains it cannot run (grammar, penalties, logprobs) fall back to the CPU sampler."""
    server = start_server(fresh_store, {"CORRAL_BACKEND_SAMPLING": "1"}, log_dir=tmp_path)
    try:
        client = ollama.Client(host=server.url)
        options = {"temperature": 0.9, "seed": 42, "num_predict": 16}
        runs = [client.generate("tiny", "Once upon a time", options=options).response for _ in range(3)]
        assert runs[0] and runs.count(runs[0]) == 3

        async def together():
            aclient = ollama.AsyncClient(host=server.url)
            return await asyncio.gather(*[aclient.generate("tiny", f"prompt {i}", options={**options, "seed": i})
                                          for i in range(6)])

        assert all(r.done and r.eval_count == 16 for r in asyncio.run(together()))
        schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 99}}, "required": ["n"]}
        r = client.generate("tiny", "x", format=schema, options={**options, "num_predict": 60})
        assert isinstance(json.loads(r.response)["n"], int)
        r = client.generate("tiny", "x", options={**options, "repeat_penalty": 1.3})
        assert r.eval_count == 16
        raw = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                            "logprobs": True, "options": options}, timeout=60).json()
        assert len(raw["logprobs"]) == 16
    finally:
        server.stop()


def test_deterministic_mode_ignores_requests_that_join(store_dir, tmp_path):
    """CORRAL_DETERMINISTIC=1: greedy answers have bit-identical logprobs alone and when requests
    join mid-generation. Each join is a step of 8-16 rows (a short prompt beside running tokens),
    where ggml's CPU backend would otherwise switch to its tiled K-quant kernel (other numbers)."""
    server = start_server(store_dir, {"CORRAL_DETERMINISTIC": "1", "OLLAMA_NUM_PARALLEL": "4"}, log_dir=tmp_path)
    topics = ["the sea", "a red bicycle", "winter mornings", "prime numbers"]

    async def run() -> tuple[list, list]:
        client = ollama.AsyncClient(host=server.url)

        async def answer(topic: str) -> list[tuple[str, float]]:
            stream = await client.chat("gemma3:270m", [{"role": "user", "content": f"Tell me about {topic}."}],
                                       stream=True, logprobs=True, options={"temperature": 0, "num_predict": 24})
            return [(lp.token, lp.logprob) async for part in stream for lp in part.logprobs or []]

        async def first_then_others() -> list[list[tuple[str, float]]]:
            first = asyncio.create_task(answer(topics[0]))
            others = []
            for delay in (0.4, 0.15, 0.1):  # the others join one by one while the first runs
                await asyncio.sleep(delay)
                others.append(asyncio.create_task(answer(topics[1 + len(others)])))
            return [await first] + [await o for o in others]

        alone = [await answer(topic) for topic in topics]
        return alone, await first_then_others()

    try:
        alone, together = asyncio.run(run())
        assert all(len(a) == 24 for a in alone)
        assert together == alone
    finally:
        server.stop()


def test_deterministic_mode_keeps_the_prefix_cache(store_dir, tmp_path):
    """CORRAL_DETERMINISTIC=1 keeps the prefix cache: an answer computed on top of a prefix left in the
    cache by another request has the same logprobs, bit for bit, as the same answer computed cold."""
    server = start_server(store_dir, {"CORRAL_DETERMINISTIC": "1", "OLLAMA_NUM_PARALLEL": "2"}, log_dir=tmp_path)
    client = ollama.Client(host=server.url)
    options = {"temperature": 0, "num_predict": 16}

    def answer(topic: str) -> list[tuple[str, float]]:
        r = client.chat("gemma3:270m", [{"role": "user", "content": f"Tell me about {topic}."}], logprobs=True,
                        options=options)
        return [(lp.token, lp.logprob) for lp in r.logprobs]

    try:
        cold = answer("the sea")
        answer("the moon")  # takes the sea's sequence: its cache now ends "...Tell me about the moon..."
        again = answer("the sea")  # computes only what follows "Tell me about the" on that cache
        assert "prefix cache: reusing" in server.log_text()
        assert len(cold) == 16 and again == cold
    finally:
        server.stop()


def test_common_prefix_matches_a_token_by_token_scan():
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[:rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(40))]
        expected = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == expected


def test_requests_arriving_together_compute_their_shared_prefix_once(store_dir, tmp_path):
    """Four chats sent at once with one system prompt: one sequence computes the prompt, the others
    copy its cells and compute only their own question (their prompt_eval_count says so). Deterministic
    mode makes the check exact: each answer has, bit for bit, the logprobs it has alone."""
    server = start_server(store_dir, {"CORRAL_DETERMINISTIC": "1", "OLLAMA_NUM_PARALLEL": "4"}, log_dir=tmp_path)
    system = ("You are a patient teacher for curious children. Answer every question in two short sentences, "
              "with plain words, one example from daily life, and no lists or headings.")
    questions = ["Why is the sea salty?", "How do birds fly?", "What makes thunder?", "Why do we sleep?"]

    async def run() -> tuple[list, list]:
        client = ollama.AsyncClient(host=server.url)
        await client.generate("gemma3:270m", "")  # load only: no cells cached yet

        async def answer(question: str) -> tuple[int, list[tuple[str, float]]]:
            stream = await client.chat("gemma3:270m", [{"role": "system", "content": system},
                                                       {"role": "user", "content": question}],
                                       stream=True, logprobs=True, options={"temperature": 0, "num_predict": 12})
            parts = [part async for part in stream]
            return parts[-1].prompt_eval_count, [(lp.token, lp.logprob) for p in parts for lp in p.logprobs or []]

        together = await asyncio.gather(*[answer(q) for q in questions])
        alone = [await answer(q) for q in questions]
        return together, alone

    try:
        together, alone = asyncio.run(run())
        assert [lps for _, lps in together] == [lps for _, lps in alone]
        assert all(len(lps) == 12 for _, lps in alone)
        counts = sorted(count for count, _ in together)
        full = counts[-1]  # the one that computed the system prompt
        assert full > 40 and all(count < full - 30 for count in counts[:3]), counts
        assert server.log_text().count("prefix cache: copying") >= 3
    finally:
        server.stop()


def test_prompts_admitted_in_one_step_wait_for_the_one_computing_their_prefix(model_files):
    """Four prompts with one 40-token prefix, admitted in the same step (the decode thread is held
    off until all four are queued): the first computes its whole prompt, the other three wait that
    step, copy the prefix and compute only their own ends."""
    model = LlamaModel(model_files["tiny"])
    runner = Runner(model, n_ctx=512, n_parallel=4)
    prefix = model.tokenize("shared instructions " * 20)[:40]
    jobs = [Job(tokens=prefix + model.tokenize(f" question {i}", add_special=False), num_predict=4,
                sampling=Sampling(temperature=0), ignore_eos=True) for i in range(4)]

    async def run() -> list[Done]:
        async def done(job: Job) -> Done:
            return [event async for event in runner.generate(job)][-1]

        with runner._wake:  # re-entrant: the tasks queue their jobs on this thread while the decode thread waits
            tasks = [asyncio.ensure_future(done(job)) for job in jobs]
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(runner._pending) == 4
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(run())
    finally:
        runner.close()
        model.close()
    assert all(isinstance(r, Done) and r.eval_count == 4 for r in results)
    length, shared = len(jobs[0].tokens), common_prefix(jobs[0].tokens, jobs[1].tokens)
    assert all(len(job.tokens) == length for job in jobs) and shared >= 40
    assert [r.prompt_eval_count for r in results] == [length] + [length - shared] * 3


def test_unrelated_prompts_take_the_least_recently_used_sequence(model_files):
    """Prompts one after another that share only BOS each go to the least recently used idle sequence
    rather than overwrite the last one's cache for one token, so a prompt asked again later finds all
    of itself cached (llama-server's cache gives such repeats the same)."""
    model = LlamaModel(model_files["tiny"])
    runner = Runner(model, n_ctx=512, n_parallel=4)
    prompts = [model.tokenize(f"{topic} " * 8) for topic in ("apples", "rivers", "engines")]

    async def run(tokens: list[int]) -> Done:
        job = Job(tokens=tokens, num_predict=2, sampling=Sampling(temperature=0), ignore_eos=True)
        return [event async for event in runner.generate(job)][-1]

    try:
        first = [asyncio.run(run(p)) for p in prompts]
        again = [asyncio.run(run(p)) for p in prompts]
    finally:
        runner.close()
        model.close()
    assert [common_prefix(prompts[0], p) for p in prompts[1:]] == [1, 1]  # BOS only
    assert [d.prompt_eval_count for d in first] == [len(p) for p in prompts]
    assert [d.prompt_eval_count for d in again] == [0, 0, 0]  # each whole, with its kept logits


def test_idle_sequence_between_running_ones_is_padded(store_dir, tmp_path):
    """With a KV stream per sequence, running sequences 0, 2 and 3 would cost llama.cpp two passes a
    step; the runner gives idle sequence 1 a throwaway token instead. Deterministic mode makes the
    check exact: the padded answers match the answers alone, and the padded sequence's cache, reused
    by a follow-up turn afterwards, gives that turn's answer bit for bit as before."""
    server = start_server(store_dir, {"CORRAL_DETERMINISTIC": "1", "OLLAMA_NUM_PARALLEL": "4"}, log_dir=tmp_path)
    asks = [("the sea", 40), ("a red bicycle", 12), ("winter mornings", 40), ("prime numbers", 40)]

    def turn(topic: str) -> list[dict]:
        return [{"role": "user", "content": f"Tell me about {topic}."}]

    async def run() -> tuple[list, list, list, list]:
        client = ollama.AsyncClient(host=server.url)

        async def answer(messages: list[dict], n: int, started: asyncio.Event | None = None):
            stream = await client.chat("gemma3:270m", messages, stream=True, logprobs=True,
                                       options={"temperature": 0, "num_predict": n})
            text, lps = "", []
            async for part in stream:
                if started is not None:
                    started.set()
                text += part.message.content
                lps += [(lp.token, lp.logprob) for lp in part.logprobs or []]
            return text, lps

        alone = [await answer(turn(topic), n) for topic, n in asks]
        follow_up = turn(asks[1][0]) + [{"role": "assistant", "content": alone[1][0]},
                                        {"role": "user", "content": "And then?"}]
        follow_alone = await answer(follow_up, 8)
        tasks = []
        for topic, n in asks:  # one by one: the first takes sequence 0 (its prefix), then 1, 2, 3
            started = asyncio.Event()
            tasks.append(asyncio.create_task(answer(turn(topic), n, started)))
            await started.wait()
        together = [await t for t in tasks]
        return alone, together, follow_alone, await answer(follow_up, 8)

    try:
        alone, together, follow_alone, follow_again = asyncio.run(run())
        assert [len(lps) for _, lps in alone] == [40, 12, 40, 40]
        assert together == alone
        # sequence 1 padded while the others ran on
        assert _metric(server, "corral_padding_tokens") >= 20
        assert len(follow_alone[1]) == 8 and follow_again == follow_alone
    finally:
        server.stop()


def _wait_for(check, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_client_leaving_the_queue_frees_its_place(single_slot_server):
    """A request whose client leaves while it waits for a sequence stops counting toward OLLAMA_MAX_QUEUE
    (1 here): the next request is queued, not refused."""
    server = single_slot_server
    started, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_endless, args=(server, started, stop))
    t.start()
    try:
        assert started.wait(30)
        body = json.dumps({"model": "tiny", "prompt": "x", "options": {"num_predict": 3, "num_ctx": 4096}}).encode()
        host, port = server.host.split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: " + server.host.encode() + b"\r\nContent-Type: "
                      b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert _wait_for(lambda: _metric(server, "corral_requests_queued") == 1)
        assert _wait_for(lambda: _metric(server, "corral_requests_queued") == 0)
        result: dict = {}
        waiting = threading.Thread(target=lambda: result.update(r=httpx.post(server.url + "/api/generate", json={
            "model": "tiny", "prompt": "y", "stream": False, "options": {"num_predict": 2, "num_ctx": 4096}},
            timeout=60)))
        waiting.start()
        assert _wait_for(lambda: _metric(server, "corral_requests_queued") == 1 or "r" in result)
    finally:
        stop.set()
        t.join(30)
    waiting.join(60)
    assert result["r"].status_code == 200, result["r"].text
