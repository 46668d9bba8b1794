"""Training data: JSONL read line by line, checked, split, rendered and tokenized.

Line shapes (one JSON object per line; blank lines are skipped):

- causal LM, a chat: `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "…"}, …]}`
  with at least one assistant message; the loss is on the assistant turns only (their text and the
  template's end of turn).
- causal LM, a pair: `{"prompt": "…", "completion": "…", "system"?: "…"}`: one user turn and its answer,
  rendered as /api/generate renders a prompt.
- classifier: `{"text": "…", "label": "sports" | 3}`.

Every problem is a TrainingError naming the line (`dataset line 7: …`), raised before any training.

Chats are rendered with the served model's own template (Corral's: the Go template of the model's
template layer, else the GGUF's Jinja chat template), so the model learns exactly the text it is served
with. An assistant turn is the text between the prompt that precedes it (the template rendering the
conversation up to it, which ends where the reply begins) and the first end-of-turn marker after its
content (the tokenizer's EOS token, the model's `stop` parameters, the usual turn ends); a turn the
template leaves open gets the EOS token.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TrainingError

MAX_LINE = 16 << 20  # a longer line is not one training example
ROLES = ("system", "user", "assistant", "tool")
# turn ends of the common chat formats, besides the tokenizer's EOS and the model's stop strings
TURN_ENDS = ("<|eot_id|>", "<end_of_turn>", "<|im_end|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>", "</s>")
_NEXT_TURN = "CORRAL-NEXT-TURN-9f27c3"  # a user message closing the conversation, so every reply is closed
IGNORE = -100  # the label of a token that is not trained (PyTorch's cross-entropy ignore_index)


@dataclass
class ChatExample:
    line: int
    messages: list[dict[str, str]]


@dataclass
class LabelledText:
    line: int
    text: str
    label: str


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) for every non-blank line; TrainingError for one that is not JSON."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE + 1):  # bounded: a file without newlines is not read whole
            number += 1
            if len(raw) > MAX_LINE:
                raise TrainingError(f"dataset line {number} is longer than {MAX_LINE >> 20} MiB")
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise TrainingError(f"dataset line {number} is not valid JSON: {exc}") from None


def read_chats(path: Path) -> list[ChatExample]:
    """Causal LM lines as chats (pairs become a user and an assistant message)."""
    out = []
    for number, obj in read_lines(path):
        where = f"dataset line {number}"
        if not isinstance(obj, dict):
            raise TrainingError(f"{where}: expected a JSON object with 'messages' or 'prompt' and 'completion'")
        if "messages" in obj:
            out.append(ChatExample(number, _messages(obj["messages"], where)))
        elif "prompt" in obj or "completion" in obj:
            prompt, completion, system = obj.get("prompt"), obj.get("completion"), obj.get("system")
            if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
                raise TrainingError(f"{where}: 'prompt' and 'completion' must be strings, the completion not empty")
            if system is not None and not isinstance(system, str):
                raise TrainingError(f"{where}: 'system' must be a string")
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            out.append(ChatExample(number, messages))
        else:
            raise TrainingError(f"{where}: needs 'messages' (a chat) or 'prompt' and 'completion'")
    if not out:
        raise TrainingError("the dataset holds no examples")
    return out


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TrainingError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TrainingError(f"{where}: messages[{i}] must be an object with a string 'role' and 'content'")
        role = m["role"].lower()
        if role not in ROLES:
            raise TrainingError(f"{where}: messages[{i}] has the unknown role {m['role']!r}")
        if role == "assistant":
            if not m["content"].strip():
                raise TrainingError(f"{where}: messages[{i}]: an assistant message to learn needs content")
            if i == 0 or all(x.get("role") == "system" for x in value[:i]):
                raise TrainingError(f"{where}: messages[{i}]: an assistant message needs a user message before it")
        out.append({"role": role, "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise TrainingError(f"{where}: no assistant message: nothing to learn")
    return out


def read_labelled(path: Path, labels: list[str] | None) -> tuple[list[LabelledText], list[str]]:
    """Classifier lines and the label names (given, or every label in the data, sorted)."""
    out = []
    for number, obj in read_lines(path):
        where = f"dataset line {number}"
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise TrainingError(f"{where}: expected an object with a non-empty string 'text' and a 'label'")
        label = obj.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise TrainingError(f"{where}: 'label' must be a string or an integer")
        label = str(label)
        if labels is not None and label not in labels:
            raise TrainingError(f"{where}: label {label!r} is not one of the labels given ({', '.join(labels)})")
        out.append(LabelledText(number, obj["text"], label))
    if not out:
        raise TrainingError("the dataset holds no examples")
    if labels is None:
        found = set(x.label for x in out)
        labels = sorted(found, key=lambda x: (not x.lstrip("-").isdigit(), int(x) if x.lstrip("-").isdigit() else 0, x))
        if len(labels) < 2:
            raise TrainingError(f"the dataset has one label only ({labels[0]!r}): a classifier needs two or more")
    return out, labels


def split(items: list, share: float, seed: int) -> tuple[list, list]:
    """(training, held-out): a seeded shuffle, `share` of it held out (at least one item when share > 0
    and there are two or more; the training part is never empty)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(items) * share)
    if share > 0 and n_eval == 0 and len(items) >= 2:
        n_eval = 1
    n_eval = min(n_eval, len(items) - 1)
    held = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return [items[i] for i in kept], [items[i] for i in held]


# ---- rendering chats ---------------------------------------------------------------------------------


@dataclass
class Span:
    start: int  # character offsets in the rendered text of one trained assistant turn
    end: int
    add_eos: bool = False  # the template left the turn open: the EOS token follows it


@dataclass
class RenderedChat:
    line: int
    text: str
    spans: list[Span] = field(default_factory=list)


Render = Callable[[list[dict[str, str]]], str]


def render_chat(example: ChatExample, render: Render, end_markers: list[str],
                before: list[dict[str, str]] | None = None) -> RenderedChat:
    """The conversation's text through the model's template and the spans of its assistant turns.
    `before`: messages the served model puts first (its Modelfile SYSTEM and MESSAGEs), rendered as the
    server renders them but not trained."""
    where = f"dataset line {example.line}"
    skip = len(before or [])
    messages = list(before or []) + example.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[:last + 1]  # later turns teach nothing
    closed = messages + [{"role": "user", "content": _NEXT_TURN}]
    try:
        full = render(closed)
    except Exception as exc:
        raise TrainingError(f"{where}: the model's chat template cannot render it: {exc}") from None
    limit = full.find(_NEXT_TURN)
    if limit < 0:
        raise TrainingError(f"{where}: the model's chat template leaves out the last user message")
    spans: list[Span] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or k < skip:
            continue
        try:
            prefix = render(messages[:k])
        except Exception as exc:
            raise TrainingError(f"{where}: the model's chat template cannot render it: {exc}") from None
        if not full.startswith(prefix):
            raise TrainingError(f"{where}: the model's chat template does not render this conversation turn by "
                                "turn (the prompt before an assistant message is not the start of the whole chat)")
        start = len(prefix)
        content = m["content"].strip()
        at = full.find(content, start, limit)
        if at < 0 or at - start > 256:
            raise TrainingError(f"{where}: the model's chat template changes the text of an assistant message")
        content_end = at + len(content)
        following = closed[k + 1]["content"].strip()
        boundary = full.find(following, content_end, limit + len(_NEXT_TURN)) if following else -1
        if boundary < 0:
            boundary = limit
        found = [(full.find(x, content_end, boundary), x) for x in end_markers if x]
        found = [(pos, x) for pos, x in found if pos >= 0]
        if found:
            pos, marker = min(found, key=lambda f: (f[0], -len(f[1])))
            spans.append(Span(start, pos + len(marker)))
        else:
            spans.append(Span(start, content_end, add_eos=True))
    return RenderedChat(example.line, full[:spans[-1].end], spans)


def end_markers(eos_token: str | None, stop: list[str] | None) -> list[str]:
    markers = [x for x in [eos_token, *(stop or []), *TURN_ENDS] if isinstance(x, str) and x.strip()]
    return list(dict.fromkeys(markers))


# ---- tokens -------------------------------------------------------------------------------------------


@dataclass
class Tokenized:
    ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def tokenize(chat: RenderedChat, tokenizer: Any, bos: tuple[int, str] | None, eos_id: int | None,
             max_length: int) -> Tokenized | None:
    """Token ids and labels (the assistant spans' tokens, an EOS where a turn was left open), cut to
    `max_length`; None when nothing trained is left after the cut. `bos`: (id, text) when the model
    starts a prompt with a BOS token; as the server does, it is added unless the text starts with it."""
    enc = tokenizer(chat.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = []
    labels: list[int] = []
    if bos is not None and not chat.text.startswith(bos[1]):
        ids.append(bos[0])
        labels.append(IGNORE)
    open_ends = [s.end for s in chat.spans if s.add_eos]  # where an EOS token goes in
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        while open_ends and end > start and start >= open_ends[0]:
            _append_eos(ids, labels, eos_id)
            open_ends.pop(0)
        inside = end > start and any(s.start <= start < s.end for s in chat.spans)
        ids.append(token)
        labels.append(token if inside else IGNORE)
    for _ in open_ends:
        _append_eos(ids, labels, eos_id)
    ids, labels = ids[:max_length], labels[:max_length]
    out = Tokenized(ids, labels)
    return out if out.trained else None


def _append_eos(ids: list[int], labels: list[int], eos_id: int | None) -> None:
    if eos_id is not None:
        ids.append(eos_id)
        labels.append(eos_id)


def pack(examples: list[Tokenized], max_length: int) -> list[Tokenized]:
    """Whole examples put together, in order, into sequences of at most `max_length` tokens."""
    out: list[Tokenized] = []
    current = Tokenized([], [])
    for ex in examples:
        if current.ids and len(current.ids) + len(ex.ids) > max_length:
            out.append(current)
            current = Tokenized([], [])
        current = Tokenized(current.ids + ex.ids, current.labels + ex.labels)
    if current.ids:
        out.append(current)
    return out
