"""Generation and embeddings as an in-process service: what the HTTP layers, agents and tools call.

Knows models, templates, options and the engine; knows nothing of HTTP or wire formats.
Errors are typed exceptions; the API layer turns them into status codes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .config import Settings, parse_duration
from .engine.job import Done, Failed, Job, Piece, TokenLogprob
from .engine.runner import ContextLengthError
from .options import OptionError, Options, parse_options
from .scheduler import Loaded, ModelLoadError, QueueFull, RunnerOptions, Scheduler
from .store.model import Model
from .store.gguf import GGUFError
from .store.names import InvalidName, ModelName
from .store.store import Store
from .template.prompt import PromptError, render_chat, render_generate

__all__ = [
    "BadRequest", "NotFound", "QueueFull", "ModelLoadError", "Inference", "GenerateParams", "ChatParams",
    "Delta", "Final",
]


class BadRequest(ValueError):
    """The request cannot be served as asked (400)."""


class NotFound(LookupError):
    """No such model (404)."""


@dataclass
class GenerateParams:
    model: str
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
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
    model: str
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
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
    tool_calls: list[dict] | None = None
    logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]] | None = None


@dataclass
class Final:
    done_reason: str
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0
    total_duration: int = 0
    context: list[int] | None = None


@dataclass
class Prepared:
    """A request resolved against its model, ready to run."""

    model: Model
    options: Options
    runner_options: RunnerOptions
    keep_alive: float | None
    prompt: str = ""
    tokens: list[int] = field(default_factory=list)


class Inference:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler):
        self.settings = settings
        self.store = store
        self.scheduler = scheduler

    # ---- lookup ------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        if not name:
            raise BadRequest("model is required")
        try:
            entry = self.store.find(ModelName.parse(name))
        except InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        if entry is None:
            raise NotFound(f"model '{name}' not found")
        return Model(self.store, entry)

    def keep_alive(self, value: Any) -> float | None:
        try:
            return parse_duration(value, None)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    def _prepare(self, model: Model, options: dict | None, keep_alive: Any) -> Prepared:
        try:
            opts = parse_options(model.parameters, options)
        except OptionError as exc:
            raise BadRequest(str(exc)) from exc
        num_ctx = opts.num_ctx or self.settings.context_length
        runner = RunnerOptions(num_ctx=num_ctx, num_gpu=opts.num_gpu, num_batch=opts.num_batch, num_thread=opts.num_thread)
        return Prepared(model=model, options=opts, runner_options=runner, keep_alive=self.keep_alive(keep_alive))

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
        prep = self._prepare(model, options, keep_alive)
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

    def _tokenize(self, loaded: Loaded, text: str, *, raw: bool) -> list[int]:
        llama = loaded.llama
        bos = llama.token_text(llama.bos) if llama.bos >= 0 else ""
        # templates usually write the BOS themselves; add it only when the text lacks it
        add = llama.add_bos and not (bos and text.startswith(bos))
        return llama.tokenize(text, add_special=add, parse_special=True)

    def render_generate(self, params: GenerateParams, model: Model, bos: str = "") -> str:
        if params.raw:
            return params.prompt
        try:
            return render_generate(model, params.prompt, system=params.system, template=params.template, bos_token=bos)
        except PromptError as exc:
            raise BadRequest(str(exc)) from exc

    def render_chat(self, params: ChatParams, model: Model, bos: str = "") -> str:
        messages = list(model.messages) + params.messages
        system = model.system
        if system and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        try:
            return render_chat(model, messages, tools=params.tools, think=_think_flag(params.think), bos_token=bos)
        except PromptError as exc:
            raise BadRequest(str(exc)) from exc

    # ---- generation --------------------------------------------------------------------

    def _validate_generate(self, params: GenerateParams, model: Model) -> None:
        if params.raw and (params.template or params.system or params.context):
            raise BadRequest("raw mode does not support template, system, or context")
        if "completion" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support generate')
        if params.suffix:
            self._require(model, "insert", f"{model.entry.name.full} does not support insert")
        if not 0 <= params.top_logprobs <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")

    async def render_generate_only(self, params: GenerateParams) -> str:
        """`_debug_render_only`: the prompt text, without running the model."""
        model = self.model(params.model)
        self._validate_generate(params, model)
        return self.render_generate(params, model)

    async def generate(self, params: GenerateParams) -> AsyncIterator[Delta | Final]:
        model = self.model(params.model)
        self._validate_generate(params, model)
        prep = self._prepare(model, params.options, params.keep_alive)
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            text = self.render_generate(params, model, bos=self._bos(loaded))
            tokens = list(params.context or []) + self._tokenize(loaded, text, raw=params.raw)
            job = self._job(prep, tokens, params.truncate, params.shift, params.logprobs, params.top_logprobs,
                            params.format, loaded)
            async for item in self._run(loaded, job, start, load_ns, keep_context=not params.raw):
                yield item

    async def chat(self, params: ChatParams) -> AsyncIterator[Delta | Final]:
        model = self.model(params.model)
        self._validate_chat(params, model)
        prep = self._prepare(model, params.options, params.keep_alive)
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            text = self.render_chat(params, model, bos=self._bos(loaded))
            tokens = self._tokenize(loaded, text, raw=False)
            job = self._job(prep, tokens, params.truncate, params.shift, params.logprobs, params.top_logprobs,
                            params.format, loaded)
            async for item in self._run(loaded, job, start, load_ns, keep_context=False):
                yield item

    def _validate_chat(self, params: ChatParams, model: Model) -> None:
        if "completion" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support chat')
        if params.tools:
            self._require(model, "tools", f"{model.entry.name.full} does not support tools")
        if params.think and "thinking" not in self.capabilities(model):
            raise BadRequest(f'"{params.model}" does not support thinking')
        if not 0 <= params.top_logprobs <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        for m in params.messages:
            if m.get("role") not in ("system", "user", "assistant", "tool"):
                raise BadRequest(f"invalid message role: {m.get('role')!r}")

    async def render_chat_only(self, params: ChatParams) -> str:
        model = self.model(params.model)
        self._validate_chat(params, model)
        return self.render_chat(params, model)

    def _job(self, prep: Prepared, tokens: list[int], truncate: bool, shift: bool, logprobs: bool,
             top_logprobs: int, fmt: Any, loaded: Loaded) -> Job:
        sampling = prep.options.sampling
        sampling.grammar = self._grammar(fmt)
        return Job(
            tokens=tokens,
            sampling=sampling,
            num_predict=prep.options.num_predict,
            stop=prep.options.stop,
            num_keep=prep.options.num_keep,
            truncate=truncate,
            shift=shift,
            logprobs=top_logprobs if logprobs else -1,
        )

    def _grammar(self, fmt: Any) -> str | None:
        if fmt is None or fmt == "":
            return None
        from .engine import grammar

        try:
            if fmt == "json":
                return grammar.json_grammar()
            if isinstance(fmt, dict):
                return grammar.schema_grammar(fmt)
        except grammar.SchemaError as exc:
            raise BadRequest(str(exc)) from exc
        raise BadRequest(f"invalid format: {fmt!r}; expected \"json\" or a JSON schema")

    async def _run(self, loaded: Loaded, job: Job, start: int, load_ns: int, *, keep_context: bool
                   ) -> AsyncIterator[Delta | Final]:
        try:
            events = loaded.runner.generate(job)
            async for event in events:
                if isinstance(event, Piece):
                    lp = [(event.logprob, event.top or [])] if event.logprob is not None else None
                    if event.text or lp:
                        yield Delta(content=event.text, logprobs=lp)
                elif isinstance(event, Done):
                    if event.text_tail:
                        yield Delta(content=event.text_tail)
                    yield Final(
                        done_reason=event.reason,
                        prompt_eval_count=event.prompt_eval_count,
                        prompt_eval_duration=event.prompt_eval_ns,
                        eval_count=event.eval_count,
                        eval_duration=event.eval_ns,
                        load_duration=load_ns,
                        total_duration=time.perf_counter_ns() - start,
                        context=(job.tokens + event.output_tokens) if keep_context else None,
                    )
                elif isinstance(event, Failed):
                    raise RuntimeError(event.message)
        except ContextLengthError as exc:
            raise BadRequest(str(exc)) from exc

    # ---- embeddings --------------------------------------------------------------------

    async def embed(self, name: str, inputs: list[str], *, truncate: bool = True, options: dict | None = None,
                    keep_alive: Any = None) -> tuple[list[list[float]], int, int]:
        """Raw pooled vectors for each input, plus (prompt tokens, load ns)."""
        import asyncio

        model = self.model(name)
        prep = self._prepare(model, options, keep_alive)
        start = time.perf_counter_ns()
        async with self.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
            load_ns = time.perf_counter_ns() - start
            embedder = await asyncio.to_thread(loaded.embedder_for, self.settings.num_threads)
            try:
                token_lists = [embedder.fit(self._tokenize(loaded, text, raw=True), truncate) for text in inputs]
            except ContextLengthError as exc:
                raise BadRequest(str(exc)) from exc
            vectors = await asyncio.to_thread(embedder.embed, token_lists)
            return vectors, sum(len(t) for t in token_lists), load_ns


def _think_flag(think: bool | str | None) -> bool | None:
    if think is None:
        return None
    if isinstance(think, str):
        return think.lower() not in ("false", "none", "")
    return bool(think)
