"""Generation and embeddings as an in-process service: what the HTTP layers, agents and tools call.

Knows models, templates, options and the engine; knows nothing of HTTP or wire formats.
Errors are typed exceptions; the API layer turns them into status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from adapters.catalog import AdapterCatalog

from .config import Settings, parse_duration
from .errors import BadRequest, EngineError, NotFound
from .engine.embedder import Embedder, normalize
from .engine.llama import default_threads
from .engine.memory import InsufficientMemory
from .engine.job import AdapterSet, Done, Failed, Job, Piece, TokenLogprob
from .grammar import TOOL_CALL_STYLES, SchemaError, json_grammar, schema_grammar, tool_call_grammar
from .engine.runner import ContextLengthError
from .toolcalls import detect_format
from .messages import Message, ToolCall, ToolSpec, message_dict, tool_dict
from .reply import ReplyParser, prompt_opens_thinking
from .options import OptionError, Options, parse_options
from .scheduler import Loaded, ModelLoadError, QueueFull, RunnerOptions, Scheduler
from .store.model import Model, find_model
from .store.gguf import GGUFError
from .threads import in_thread
from .store.store import Store
from .template.prompt import PromptError, render_chat, render_generate

log = logging.getLogger("corral")


__all__ = [
    "BadRequest", "NotFound", "EngineError", "QueueFull", "ModelLoadError", "Inference", "GenerateParams",
    "ChatParams", "Delta", "Final", "Answer", "Embeddings", "collect", "MAX_EMBED_INPUTS",
]

# Inputs one embedding request may bring. Ollama has no limit; OpenAI's /v1/embeddings takes at most 2048.
MAX_EMBED_INPUTS = 2048


@dataclass
class GenerateParams:
    model: str
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    think: bool | str | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class ChatParams:
    """A chat request. Messages and tools may be the typed ones (`Message`, `ToolSpec`) or their dicts."""

    model: str
    messages: list[Message | dict] = field(default_factory=list)
    tools: list[ToolSpec | dict] | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    think: bool | str | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    tool_choice: Any = None


@dataclass
class Delta:
    """A streamed piece of the answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] | None = None
    logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]] | None = None


@dataclass
class Final:
    done_reason: str
    prompt_tokens: int = 0  # the whole prompt, cached tokens included
    prompt_eval_count: int = 0  # prompt tokens computed (cached ones skipped, as Ollama counts)
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0
    total_duration: int = 0
    context: list[int] | None = None
    tool_call_count: int = 0  # how many tool calls the answer made (finish_reason "tool_calls")
    reasoning_tokens: int = 0  # generated tokens that went to thinking, its tags included


@dataclass
class Answer:
    """A whole answer: the deltas of a generation put together."""

    content: str
    thinking: str
    tool_calls: list[ToolCall]
    logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]]
    final: Final

    @property
    def message(self) -> Message:
        """The answer as the assistant message that goes back into the conversation."""
        return Message(role="assistant", content=self.content, thinking=self.thinking,
                       tool_calls=list(self.tool_calls))


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    load_duration: int  # ns


async def collect(items: AsyncIterator[Delta | Final], first: Delta | Final | None = None) -> Answer:
    """Run a generation to its end and put its deltas together (first: an item already taken)."""
    content, thinking, calls, logprobs = [], [], [], []
    item = first if first is not None else await items.__anext__()
    while not isinstance(item, Final):
        content.append(item.content)
        thinking.append(item.thinking)
        calls.extend(item.tool_calls or [])
        logprobs.extend(item.logprobs or [])
        item = await items.__anext__()
    return Answer("".join(content), "".join(thinking), calls, logprobs, item)


@dataclass
class Prepared:
    """A request resolved against its model, ready to run."""

    model: Model
    options: Options
    runner_options: RunnerOptions
    keep_alive: float | None
    adapters: AdapterSet = ()  # the model's own LoRA adapters and those the request names


class Inference:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler, adapters: AdapterCatalog | None = None):
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.adapters = adapters or AdapterCatalog(store)
        self.retrieval = None  # server/retrieval's service, set by build_services: ONNX embedders, grounded chat

    # ---- lookup ------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        return find_model(self.store, name)

    def keep_alive(self, value: Any) -> float | None:
        try:
            return parse_duration(value, None)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    def prepare(self, model: Model, options: dict | None, keep_alive: Any) -> Prepared:
        """The request's options, runner options, keep_alive and adapter set, checked against its model."""
        adapters = self.adapters.request_set(model, (options or {}).get("adapters"))
        try:
            opts = parse_options(model.parameters, options)
        except OptionError as exc:
            raise BadRequest(str(exc)) from exc
        num_ctx = opts.num_ctx or self.settings.context_length
        trained = model.context_length
        if trained and num_ctx > trained:
            log.warning("requested context size too large for model: num_ctx %d, trained %d", num_ctx, trained)
            num_ctx = trained
        runner = RunnerOptions(num_ctx=num_ctx, num_gpu=opts.num_gpu, num_batch=min(opts.num_batch, num_ctx),
                               num_thread=_threads(opts.num_thread))
        return Prepared(model=model, options=opts, runner_options=runner, keep_alive=self.keep_alive(keep_alive),
                        adapters=adapters)

    def capabilities(self, model: Model) -> list[str]:
        try:
            return model.capabilities()
        except GGUFError as exc:  # the model file is damaged: the same error a load would give
            raise ModelLoadError(f"unable to load model {model.name}: {exc}") from exc

    def _require(self, model: Model, capability: str, message: str) -> None:
        if capability not in self.capabilities(model):
            raise BadRequest(message)

    # ---- load / unload -----------------------------------------------------------------

    async def load(self, name: str, options: dict | None = None, keep_alive: Any = None) -> Final:
        """The empty-prompt form: load (or unload with keep_alive 0) and report."""
        model = self.model(name)
        prep = self.prepare(model, options, keep_alive)
        if prep.keep_alive == 0:
            await self.scheduler.unload(model.digest)
            return Final(done_reason="unload")
        start = time.perf_counter_ns()
        await self._load(prep)
        return Final(done_reason="load", load_duration=time.perf_counter_ns() - start,
                     total_duration=time.perf_counter_ns() - start)

    async def _load(self, prep: Prepared) -> Loaded:
        async with self.scheduler.use(prep.model, prep.runner_options, prep.keep_alive) as loaded:
            return loaded

    # ---- prompts -----------------------------------------------------------------------

    def _bos(self, loaded: Loaded) -> str:
        return loaded.llama.token_text(loaded.llama.bos) if loaded.llama.add_bos else ""

    def _tokenize(self, loaded: Loaded, text: str, *, first: bool = True) -> list[int]:
        """Prompt text → tokens; `first=False` for text that continues earlier tokens (no BOS then)."""
        llama = loaded.llama
        bos = llama.token_text(llama.bos) if llama.bos >= 0 else ""
        if not first:
            return llama.tokenize(text.removeprefix(bos) if bos else text, add_special=False, parse_special=True)
        # templates usually write the BOS themselves; add it only when the text lacks it
        add = llama.add_bos and not (bos and text.startswith(bos))
        return llama.tokenize(text, add_special=add, parse_special=True)

    def render_generate(self, params: GenerateParams, model: Model, bos: str = "") -> str:
        if params.raw:
            return params.prompt
        try:
            think, level = self._template_think(params.think, model)
            return render_generate(model, params.prompt, system=params.system, suffix=params.suffix,
                                   template=params.template, bos_token=bos, history=not params.context,
                                   think=think, think_level=level)
        except PromptError as exc:
            raise BadRequest(str(exc)) from exc

    def render_chat(self, params: ChatParams, model: Model, bos: str = "") -> str:
        messages = list(model.messages) + params.messages
        # the Modelfile's SYSTEM, unless the request starts with its own (Ollama's rule)
        if model.system and not (params.messages and params.messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": model.system})
        tools = params.tools if _choice(params.tool_choice) != "none" else None
        try:
            think, level = self._template_think(params.think, model)
            return render_chat(model, messages, tools=tools, think=think, think_level=level, bos_token=bos)
        except PromptError as exc:
            raise BadRequest(str(exc)) from exc

    def _template_think(self, think: bool | str | None, model: Model) -> tuple[bool | None, str | None]:
        """(think, think level) for the template, as Ollama sets them: a thinking model's unset `think`
        is true (level "medium"); a level string ("low", "high", ...) sets both."""
        if think is None and "thinking" in self.capabilities(model):
            think = True
        if isinstance(think, str):
            return (False, None) if _think_flag(think) is False else (None, think.lower())
        return think, None

    def _fim_tokens(self, loaded: Loaded, prefix: str, suffix: str) -> list[int] | None:
        """`<fim_pre>prefix<fim_suf>suffix<fim_mid>` from the model's own FIM tokens (PSM order)."""
        fim = loaded.llama.fim
        if min(fim["pre"], fim["suf"], fim["mid"]) < 0:
            return None
        llama = loaded.llama
        head = [llama.bos] if llama.add_bos and llama.bos >= 0 else []
        return (head + [fim["pre"]] + llama.tokenize(prefix, add_special=False, parse_special=False)
                + [fim["suf"]] + llama.tokenize(suffix, add_special=False, parse_special=False) + [fim["mid"]])

    def _fim_stops(self, loaded: Loaded) -> frozenset[int]:
        """Tokens that end a fill-in-the-middle answer besides the model's end-of-generation ones."""
        fim = loaded.llama.fim
        return frozenset(t for t in (fim["pad"], fim["rep"], fim["sep"]) if t >= 0)

    # ---- generation --------------------------------------------------------------------

    def _validate_generate(self, params: GenerateParams, model: Model) -> None:
        if params.raw and (params.template or params.system or params.context):
            raise BadRequest("raw mode does not support template, system, or context")
        if "completion" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support generate')
        if params.suffix:  # raw or not, as Ollama checks it: a client learns that the model cannot fill in
            self._require(model, "insert", f"{model.entry.name.full} does not support insert")
        if params.think and "thinking" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support thinking')
        if not 0 <= params.top_logprobs <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        self._check_images(model, bool(params.images))

    def _check_images(self, model: Model, images: bool) -> None:
        if not images:
            return
        if "vision" not in self.capabilities(model):
            raise BadRequest(f"{model.entry.name.full} does not support vision")
        raise BadRequest(f"{model.entry.name.full}: image input is not supported by Corral yet")

    def _uses_go_fim(self, params: GenerateParams, model: Model) -> bool:
        template = params.template or model.template or ""
        return bool(params.suffix) and not params.raw and ".Suffix" in template

    async def render_generate_only(self, params: GenerateParams) -> str:
        """`_debug_render_only`: the prompt text, without running the model."""
        model = self.model(params.model)
        self._validate_generate(params, model)
        if params.suffix and not params.raw and not self._uses_go_fim(params, model):
            prep = self.prepare(model, params.options, params.keep_alive)
            async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
                tokens = await in_thread(self._fim_tokens, loaded, params.prompt, params.suffix)
                return loaded.llama.detokenize(tokens or [], special=True)
        return await asyncio.to_thread(self.render_generate, params, model)

    async def generate(self, params: GenerateParams) -> AsyncIterator[Delta | Final]:
        """Stream a completion (see `chat` on closing it; `generate_once` is the one-shot form)."""
        model = self.model(params.model)
        self._validate_generate(params, model)
        prep = self.prepare(model, params.options, params.keep_alive)
        grammar = self._grammar(params.format)
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            text, tokens = await in_thread(self._generate_prompt, loaded, params, model)
            fim = params.suffix and not params.raw
            stop_tokens = self._fim_stops(loaded) if fim else frozenset()
            think = self._thinking(params.think, model)
            parser = ReplyParser(think=think, in_thinking=prompt_opens_thinking(text))
            job = self._job(prep, tokens, params, grammar, stop_tokens)
            async for item in self._run(loaded, job, parser, start, load_ns, keep_context=not params.raw):
                yield item

    async def generate_once(self, params: GenerateParams) -> Answer:
        """The whole completion. The generation is closed however this ends (error, cancellation),
        so an abandoned call never holds a sequence."""
        return await _once(self.generate(params))

    async def chat_once(self, params: ChatParams) -> Answer:
        """The whole chat answer (`answer.message` goes back into the conversation); always closed."""
        return await _once(self.chat(params))

    def _generate_prompt(self, loaded: Loaded, params: GenerateParams, model: Model) -> tuple[str, list[int]]:
        """The prompt's text (empty for FIM from the model's own tokens) and its tokens.
        Blocking: call through `in_thread`, as rendering and tokenizing a long prompt take seconds."""
        if params.suffix and not params.raw and not self._uses_go_fim(params, model):
            tokens = self._fim_tokens(loaded, params.prompt, params.suffix)
            if tokens is None:
                raise BadRequest(f"{model.entry.name.full} does not support insert")
            return "", tokens
        context = self._context(loaded, params.context)
        text = self.render_generate(params, model, bos="" if context else self._bos(loaded))
        return text, context + self._tokenize(loaded, text, first=not context)

    def _context(self, loaded: Loaded, context: list[int] | None) -> list[int]:
        """A previous answer's `context`, checked: a token outside the vocabulary would fail the whole
        decode step, every request in it included."""
        n_vocab = loaded.llama.n_vocab
        for token in context or []:
            if not 0 <= token < n_vocab:
                raise BadRequest(f"invalid context: token {token} is not in the model's vocabulary")
        return list(context or [])

    async def chat(self, params: ChatParams) -> AsyncIterator[Delta | Final]:
        """Stream a chat's answer. Close the iterator (or run it to its end): an iterator left open holds
        its sequence until it is collected. `chat_once` does both for a caller that wants the whole answer."""
        if self.retrieval is not None and isinstance(params.options, dict) and params.options.get("collections"):
            async for item in self.retrieval.grounded_chat(params):  # answered from collections, citing them
                yield item
            return
        params = _plain(params)
        model = self.model(params.model)
        self._validate_chat(params, model)
        prep = self.prepare(model, params.options, params.keep_alive)
        choice = _choice(params.tool_choice)
        tools = params.tools if choice != "none" else None
        template_text = model.template or model.chat_template or ""
        tool_format = detect_format(template_text) if tools else None
        grammar = self._grammar(params.format)
        if tools and choice != "auto":  # required or a named function: force a call with a grammar
            style = tool_format if tool_format in TOOL_CALL_STYLES else "json"
            try:
                # "required": one call or several; a named function: exactly one call of it
                named = choice != "required"
                grammar = tool_call_grammar(tools, name=choice if named else None, style=style, parallel=not named)
            except SchemaError as exc:
                raise BadRequest(str(exc)) from exc
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            text, tokens = await in_thread(self._chat_prompt, loaded, params, model, prep.options.num_predict)
            think = self._thinking(params.think, model)
            names = [t["function"]["name"] for t in tools] if tools else None
            parser = ReplyParser(think=think, in_thinking=prompt_opens_thinking(text), tool_format=tool_format,
                                 tool_names=names)
            job = self._job(prep, tokens, params, grammar, frozenset())
            async for item in self._run(loaded, job, parser, start, load_ns, keep_context=False):
                yield item

    def _chat_prompt(self, loaded: Loaded, params: ChatParams, model: Model, num_predict: int) -> tuple[str, list[int]]:
        """The rendered chat and its tokens. When it is too long for the context (and truncation is on),
        the oldest messages go first, whole, as in Ollama: system messages and the last message stay,
        and the template renders what is left. Only a last message too long by itself is cut in tokens
        (by the runner). Blocking: call through `in_thread`."""
        bos = self._bos(loaded)

        def render(messages: list[dict]) -> tuple[str, list[int]]:
            text = self.render_chat(dataclasses.replace(params, messages=messages), model, bos=bos)
            return text, self._tokenize(loaded, text)

        text, tokens = render(params.messages)
        limit = loaded.runner.prompt_limit(num_predict)
        if len(tokens) <= limit or not params.truncate or len(params.messages) < 2:
            return text, tokens

        def kept(start: int) -> list[dict]:
            return [m for m in params.messages[:start] if m.get("role") == "system"] + params.messages[start:]

        lo, hi = 1, len(params.messages) - 1  # the fewest messages to drop: the count only falls as start grows
        best = render(kept(hi))  # always the rendering of kept(hi)
        while lo < hi:
            mid = (lo + hi) // 2
            attempt = render(kept(mid))
            if len(attempt[1]) <= limit:
                hi, best = mid, attempt
            else:
                lo = mid + 1
        log.info("chat too long for the context: dropped the %d oldest non-system messages (%d -> %d tokens)",
                 sum(1 for m in params.messages[:hi] if m.get("role") != "system"), len(tokens), len(best[1]))
        return best

    async def infill(self, name: str, prefix: str, suffix: str, *, extra: list[tuple[str, str]] | None = None,
                     middle: str = "", options: dict | None = None, keep_alive: Any = None
                     ) -> AsyncIterator[Delta | Final]:
        """llama-server's /infill: repo-level context files, then prefix/suffix/middle in PSM order."""
        model = self.model(name)
        self._require(model, "insert", f"{model.entry.name.full} does not support insert")
        prep = self.prepare(model, options, keep_alive)
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            tokens = await in_thread(self._infill_tokens, loaded, model, prefix, suffix, extra or [], middle)
            params = GenerateParams(model=name)
            job = self._job(prep, tokens, params, None, self._fim_stops(loaded))
            async for item in self._run(loaded, job, ReplyParser(think=False), start, load_ns, keep_context=False):
                yield item

    def _infill_tokens(self, loaded: Loaded, model: Model, prefix: str, suffix: str, extra: list[tuple[str, str]],
                       middle: str) -> list[int]:
        """The infill prompt's tokens (blocking: call through `in_thread`)."""
        llama, fim = loaded.llama, loaded.llama.fim
        tokens = self._fim_tokens(loaded, prefix, suffix)
        if tokens is None:
            raise BadRequest(f"{model.entry.name.full} does not support insert")
        context: list[int] = []
        if extra:
            if fim["rep"] >= 0:
                context += [fim["rep"]] + llama.tokenize("myproject\n", add_special=False)
            for filename, text in extra:
                if fim["sep"] >= 0:
                    context += [fim["sep"]] + llama.tokenize(f"{filename}\n", add_special=False)
                else:
                    context += llama.tokenize(f"--- {filename} ---\n", add_special=False)
                context += llama.tokenize(text, add_special=False, parse_special=False)
            if fim["sep"] >= 0:
                context += [fim["sep"]] + llama.tokenize("\n", add_special=False)
        head = 1 if tokens and tokens[0] == llama.bos and llama.add_bos else 0
        tokens = tokens[:head] + context + tokens[head:]
        if middle:
            tokens += llama.tokenize(middle, add_special=False, parse_special=False)
        return tokens

    def _thinking(self, think: bool | str | None, model: Model) -> bool:
        """Parse <think> blocks when thinking was asked for, or by default for thinking models."""
        flag = _think_flag(think)
        if flag is None:
            return "thinking" in self.capabilities(model)
        return flag

    def _validate_chat(self, params: ChatParams, model: Model) -> None:
        if "completion" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support chat')
        if params.tools:
            self._require(model, "tools", f"{model.entry.name.full} does not support tools")
            _check_tools(params.tools)
            try:
                tool_call_grammar(params.tools)  # validates every tool's name and parameter schema
            except (SchemaError, ValueError) as exc:
                raise BadRequest(f"invalid tools: {exc}") from exc
            names = {t["function"]["name"] for t in params.tools}
        else:
            names = set()
        choice = _choice(params.tool_choice)
        if choice not in ("none", "auto", "required") and choice not in names:
            raise BadRequest(f"tool_choice names function {choice!r}, which is not among the tools")
        if choice == "required" and not params.tools:
            raise BadRequest("tool_choice 'required' needs tools")
        if params.think and "thinking" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support thinking')
        if not 0 <= params.top_logprobs <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        for m in params.messages:  # other roles go to the template as they are, as in Ollama
            if not m.get("role"):
                raise BadRequest("invalid message role: a message needs a role")
        self._check_images(model, any(m.get("images") for m in params.messages))

    async def render_chat_only(self, params: ChatParams) -> str:
        params = _plain(params)
        model = self.model(params.model)
        self._validate_chat(params, model)
        return await asyncio.to_thread(self.render_chat, params, model)

    def _job(self, prep: Prepared, tokens: list[int], params: GenerateParams | ChatParams, grammar: str | None,
             stop_tokens: frozenset[int]) -> Job:
        sampling = prep.options.sampling
        sampling.grammar = grammar
        return Job(
            tokens=tokens,
            sampling=sampling,
            num_predict=prep.options.num_predict,
            stop=prep.options.stop,
            num_keep=prep.options.num_keep,
            truncate=params.truncate,
            shift=params.shift,
            logprobs=params.top_logprobs if params.logprobs else -1,
            ignore_eos=prep.options.ignore_eos,
            stop_tokens=stop_tokens,
            adapters=prep.adapters,
            # batch-invariant kernels (deterministic mode) make every batch exact; otherwise a seed asks
            # for the numbers of an idle server
            alone=sampling.seed >= 0 and self.settings.seed_reproducible and not self.settings.deterministic,
        )

    def _grammar(self, fmt: Any) -> str | None:
        if fmt is None or fmt == "":
            return None
        try:
            if fmt == "json":
                return json_grammar()
            if isinstance(fmt, dict):
                return schema_grammar(fmt)
        except SchemaError as exc:
            raise BadRequest(str(exc)) from exc
        raise BadRequest(f"invalid format: {fmt!r}; expected \"json\" or a JSON schema")

    async def _run(self, loaded: Loaded, job: Job, parser: ReplyParser, start: int, load_ns: int, *,
                   keep_context: bool) -> AsyncIterator[Delta | Final]:
        calls = reasoning = 0
        try:
            async for event in loaded.runner.generate(job):
                if isinstance(event, Piece):
                    was_thinking = parser.thinking
                    part = parser.feed(event.text)
                    if was_thinking or parser.thinking or part.thinking:
                        reasoning += 1
                    lp = [(event.logprob, event.top or [])] if event.logprob is not None else None
                    calls += len(part.tool_calls)
                    if part or lp:
                        yield Delta(content=part.content, thinking=part.thinking, tool_calls=part.tool_calls or None,
                                    logprobs=lp)
                elif isinstance(event, Done):
                    part = parser.feed(event.text_tail)
                    tail = parser.finish()
                    calls += len(part.tool_calls) + len(tail.tool_calls)
                    for p in (part, tail):
                        if p:
                            yield Delta(content=p.content, thinking=p.thinking, tool_calls=p.tool_calls or None)
                    yield Final(
                        done_reason=event.reason,
                        prompt_tokens=event.prompt_tokens,
                        prompt_eval_count=event.prompt_eval_count,
                        prompt_eval_duration=event.prompt_eval_ns,
                        eval_count=event.eval_count,
                        eval_duration=event.eval_ns,
                        load_duration=load_ns,
                        total_duration=time.perf_counter_ns() - start,
                        context=(job.tokens + event.output_tokens) if keep_context else None,
                        tool_call_count=calls,
                        reasoning_tokens=min(reasoning, event.eval_count),
                    )
                elif isinstance(event, Failed):
                    raise EngineError(event.message)
        except ContextLengthError as exc:
            raise BadRequest(str(exc)) from exc

    # ---- embeddings --------------------------------------------------------------------

    async def embed(self, name: str, inputs: list[str], *, truncate: bool = True, options: dict | None = None,
                    keep_alive: Any = None, normalized: bool = True, dimensions: int | None = None) -> Embeddings:
        """One pooled vector per input: L2-normalised unless `normalized=False` (the legacy
        /api/embeddings), and cut to `dimensions` (then normalised again) where that is shorter.

        Tokenizing and each batch run in worker threads, off the event loop. Cancelling the caller
        (its client went away) stops the work after the batch under way. Requests on one model take
        turns batch by batch, and only the one whose turn it is holds a thread.
        """
        if len(inputs) > MAX_EMBED_INPUTS:
            raise BadRequest(f"too many inputs: {len(inputs)}; at most {MAX_EMBED_INPUTS} in one request")
        if dimensions is not None and dimensions < 1:
            raise BadRequest("dimensions must be greater than zero")
        if self.retrieval is not None and self.retrieval.handles(name):  # an ONNX model (all-minilm)
            return await self.retrieval.embed_api(name, inputs, truncate=truncate, normalized=normalized,
                                                  dimensions=dimensions)
        model = self.model(name)
        if model.is_reranker:  # rank pooling gives a score per (query, document) pair, not a vector
            raise BadRequest(f"model '{name}' is a reranker, not an embedding model: it scores a query against "
                             "documents on /rerank, /v1/rerank and /v2/rerank")
        prep = self.prepare(model, options, keep_alive)
        if prep.adapters:  # the embedding context computes with the base weights alone
            raise BadRequest(f"model '{model.name}' applies LoRA adapters; embeddings with adapters are not supported")
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            try:
                embedder = await asyncio.to_thread(loaded.embedder_for, self.settings.num_threads,
                                                   self.scheduler.free_memory())
            except InsufficientMemory as exc:  # num_ctx too large for an embedding context here
                raise BadRequest(str(exc)) from exc
            stop = threading.Event()
            token_lists = await in_thread(self._embed_tokens, loaded, embedder, inputs, truncate, stop, stop=stop)
            vectors: list[list[float]] = []
            for batch in embedder.batches(token_lists):
                async with loaded.embed_turn:
                    vectors += await in_thread(embedder.embed_batch, batch)
        if normalized:
            vectors = [normalize(v[:dimensions] if dimensions else v) for v in vectors]
        elif dimensions:
            vectors = [v[:dimensions] for v in vectors]
        return Embeddings(vectors, sum(len(t) for t in token_lists), load_ns)

    async def rerank(self, name: str, query: str, documents: list[str]) -> tuple[list[float], int]:
        """A GGUF reranker's raw score for each (query, document) pair, in order, and the tokens read:
        each pair a sequence of the model's embedding context (rank pooling), batch by batch in worker
        threads as `embed` runs; a cancelled caller stops after the batch under way."""
        from .engine.ranker import pair_tokens

        model = self.model(name)
        if not model.is_reranker:
            raise BadRequest(f"model '{name}' is not a reranker")
        prep = self.prepare(model, None, None)
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            try:
                embedder = await asyncio.to_thread(loaded.embedder_for, self.settings.num_threads,
                                                   self.scheduler.free_memory())
            except InsufficientMemory as exc:
                raise BadRequest(str(exc)) from exc
            stop = threading.Event()

            def tokens() -> list[list[int]]:
                out = []
                for document in documents:
                    if stop.is_set():
                        return []
                    out.append(pair_tokens(loaded.llama, query, document, embedder.n_ctx))
                return out

            token_lists = await in_thread(tokens, stop=stop)
            scores: list[float] = []
            for batch in embedder.batches(token_lists):
                async with loaded.embed_turn:
                    scores += [v[0] for v in await in_thread(embedder.embed_batch, batch)]
        return scores, sum(len(t) for t in token_lists)

    def _embed_tokens(self, loaded: Loaded, embedder: Embedder, inputs: list[str], truncate: bool,
                      stop: threading.Event) -> list[list[int]]:
        """Each input's tokens, fitted to the embedding context; stops early once `stop` is set."""
        token_lists = []
        for text in inputs:
            if stop.is_set():
                return []  # the caller is gone: nothing reads the result
            try:
                token_lists.append(embedder.fit(self._tokenize(loaded, text), truncate))
            except ContextLengthError as exc:
                raise BadRequest(str(exc)) from exc
        return token_lists


async def _once(items: AsyncIterator[Delta | Final]) -> Answer:
    try:
        return await collect(items)
    finally:
        await items.aclose()  # gives the sequence back, also when the caller was cancelled


def _plain(params: ChatParams) -> ChatParams:
    """Typed messages and tools as the dicts templates and grammars read."""
    return dataclasses.replace(params, messages=[message_dict(m) for m in params.messages],
                               tools=[tool_dict(t) for t in params.tools] if params.tools else params.tools)


# llama.cpp's ceiling (GGML_MAX_N_THREADS); a thread pool far larger than that brought the process down
_MAX_THREADS = 512


def _threads(num_thread: int) -> int:
    """`num_thread` as the runner takes it: 0 (or less) the server's default; more threads than the machine
    has cores only slows decoding (and tens of thousands end the process), so more is lowered to that."""
    if num_thread <= 0:
        return 0
    cores = min(_MAX_THREADS, max(default_threads(), os.cpu_count() or 1))
    if num_thread > cores:
        log.warning("num_thread %d is more than the %d cores of this machine: using %d", num_thread, cores, cores)
        return cores
    return num_thread


def _check_tools(tools: list[Any]) -> None:
    """Tools in the shape Ollama's Go types (api.Tool) decode, which the templates then read: an object
    whose `function` is an object with a string name and description and, when given, `parameters` that
    are a JSON Schema object; its `type`, `required`, `enum`, `anyOf` and `properties` (at every level of
    properties) of the JSON types Go takes. What Go refuses is a 400 here too, before any template runs."""
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"invalid tools: tool #{i}: must be an object")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise BadRequest(f"invalid tools: tool #{i}: 'function' must be an object")
        name = fn.get("name")
        label = f"tool '{name}'" if isinstance(name, str) and name else f"tool #{i}"
        for key in ("name", "description"):
            if fn.get(key) is not None and not isinstance(fn[key], str):
                raise BadRequest(f"invalid tools: {label}: '{key}' must be a string")
        params = fn.get("parameters")
        if params is None:
            continue
        if not isinstance(params, dict):
            raise BadRequest(f"invalid tools: {label}: parameters must be a JSON schema object, "
                             f"got {type(params).__name__}")
        _check_property(params, f"{label}: parameters")


def _check_property(schema: dict, where: str) -> None:
    """The keywords of a tool's parameters (and of each property) that Ollama's ToolProperty types."""
    kind = schema.get("type")
    if kind is not None and not isinstance(kind, str) and not (
            isinstance(kind, list) and all(isinstance(t, str) for t in kind)):
        raise BadRequest(f"invalid tools: {where}: 'type' must be a string or an array of strings")
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise BadRequest(f"invalid tools: {where}: 'required' must be an array of strings")
    for key in ("enum", "anyOf"):
        if schema.get(key) is not None and not isinstance(schema[key], list):
            raise BadRequest(f"invalid tools: {where}: '{key}' must be an array")
    for k, alt in enumerate(schema.get("anyOf") or []):
        if isinstance(alt, dict):
            _check_property(alt, f"{where}.anyOf[{k}]")
    props = schema.get("properties")
    if props is not None and not isinstance(props, dict):
        raise BadRequest(f"invalid tools: {where}: 'properties' must be an object")
    for name, prop in (props or {}).items():
        if isinstance(prop, dict):  # booleans are schemas too (true: anything), read as empty properties
            _check_property(prop, f"{where}.properties.{name}")


def _choice(tool_choice: Any) -> str:
    """tool_choice → "none" | "auto" | "required" | a function name."""
    if tool_choice is None or tool_choice == "":
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in ("none", "auto", "required", "any"):
            return "required" if tool_choice == "any" else tool_choice
        raise BadRequest(f"invalid tool_choice {tool_choice!r}")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(name, str) and name:
            return name
    raise BadRequest(f"invalid tool_choice {tool_choice!r}")


def _think_flag(think: bool | str | None) -> bool | None:
    if think is None:
        return None
    if isinstance(think, str):
        return think.lower() not in ("false", "none", "")
    return bool(think)
