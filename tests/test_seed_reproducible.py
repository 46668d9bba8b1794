"""A seed reproduces the text by default: repeated alone after the prefix cache was filled by other
requests, and four at once against their solo texts (default mode and deterministic mode).

In default mode the kernels' numbers depend on the batch, so a seeded request is computed as on an
idle server (no reused cells, decode steps of its own: server/engine/runner.py, `Job.alone`); in
deterministic mode every batch is exact and seeded requests batch with the others.
"""

from __future__ import annotations

import asyncio

import ollama
import pytest

from tests.conftest import copy_store, start_server

MODEL = "gemma3:270m"
TOPICS = ["the sea", "a red bicycle", "winter mornings", "prime numbers"]


def messages(topic: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant who answers in one paragraph."},
            {"role": "user", "content": f"Tell me a fact about {topic}."}]


def seeded(i: int) -> dict:
    return {"temperature": 0.8, "seed": 42 + i, "num_predict": 24}


async def together(url: str) -> list[str]:
    client = ollama.AsyncClient(host=url)
    answers = await asyncio.gather(*[client.chat(model=MODEL, messages=messages(t), options=seeded(i))
                                     for i, t in enumerate(TOPICS)])
    return [a.message.content for a in answers]


def solo(url: str) -> list[str]:
    client = ollama.Client(host=url)
    return [client.chat(model=MODEL, messages=messages(t), options=seeded(i)).message.content
            for i, t in enumerate(TOPICS)]


def test_a_seeded_chat_repeats_alone_whatever_the_cache_holds(corral_server):
    client = ollama.Client(host=corral_server.url)
    first = client.chat(model=MODEL, messages=messages("old maps"), options=seeded(7))
    # other requests sharing its prefix (the system prompt, the chat template) fill the cache, unseeded
    # and seeded, alone and at once
    for topic in ("old maps!", "old map", "volcanoes"):
        client.chat(model=MODEL, messages=messages(topic), options={"temperature": 0.8, "num_predict": 8})
    asyncio.run(together(corral_server.url))
    again = client.chat(model=MODEL, messages=messages("old maps"), options=seeded(7))
    assert again.message.content == first.message.content
    # computed whole as the first time, or (an exact repeat of its own run) nothing computed: never in part
    assert again.prompt_eval_count in (first.prompt_eval_count, 0)


def test_four_seeded_chats_at_once_give_their_solo_texts(corral_server):
    alone = solo(corral_server.url)
    assert len(set(alone)) == len(TOPICS)
    for _ in range(2):
        assert asyncio.run(together(corral_server.url)) == alone


@pytest.fixture(scope="module")
def deterministic_server(tmp_path_factory, store_dir):
    server = start_server(copy_store(store_dir, tmp_path_factory.mktemp("det") / "models"),
                          {"OLLAMA_NUM_PARALLEL": "4", "CORRAL_DETERMINISTIC": "1"})
    yield server
    server.stop()


def test_four_seeded_chats_at_once_in_deterministic_mode(deterministic_server):
    alone = solo(deterministic_server.url)
    for _ in range(2):
        assert asyncio.run(together(deterministic_server.url)) == alone
