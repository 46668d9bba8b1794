"""`CorralChatModel`: a LangChain chat model over Corral's in-process engine (never HTTP).

It lets Corral's models drop into LangChain and LangGraph code that runs in the server's process,
`langgraph.prebuilt.create_react_agent` included: `bind_tools` (with `tool_choice`), streaming with
`tool_call_chunks`, tool calls with ids, usage metadata. A model whose template has no tools support
gets the grammar-constrained JSON protocol of agents/fallback.py instead, so binding tools works for
every model that can chat.

Async only in substance: the engine lives on the server's event loop. The sync `invoke` works from a
thread other than that loop's (a sync LangGraph node, which LangGraph runs in a worker thread) by
handing the call to the loop the model was made on; on the loop's own thread it raises
NotImplementedError rather than deadlock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from server.inference import ChatParams, Final

from . import fallback
from .convert import new_call_id, to_corral

_CHOICES = ("auto", "none", "required")


class CorralChatModel(BaseChatModel):
    """Chat with a model of Corral's store through `services.inference`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    services: Any = Field(exclude=True, repr=False)  # server.services.Services
    model: str
    options: dict[str, Any] = Field(default_factory=dict)  # Ollama options (num_predict, seed, …)
    format: Any = None  # "json" or a JSON schema for every answer
    think: bool | str | None = None
    keep_alive: Any = None
    json_fallback: bool | None = None  # None: the JSON protocol only when the model's template lacks tools
    answer_schema: dict | None = None  # JSON protocol: the schema of the final answer (an agent's output_schema)

    _loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)
    _has_tools: bool | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @property
    def _llm_type(self) -> str:
        return "corral"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options}

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | dict | bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools in OpenAI's function shape; tool_choice "auto", "none", "required"/"any"/True, or a tool's
        name (or {"function": {"name"}}): that tool, forced by a grammar."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = _choice_name(tool_choice, formatted)
        return super().bind(tools=formatted, **kwargs)

    def uses_json_fallback(self) -> bool:
        """Whether bound tools go through the JSON protocol: the model's template has no tools support."""
        if self.json_fallback is not None:
            return self.json_fallback
        if self._has_tools is None:
            inference = self.services.inference
            self._has_tools = "tools" in inference.capabilities(inference.model(self.model))
        return not self._has_tools

    # ---- generation ----------------------------------------------------------------------------

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop=stop, **kwargs))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop.is_closed() or here is loop:
            raise NotImplementedError("CorralChatModel runs on the server's event loop: use ainvoke/astream "
                                      "(sync invoke works only from another thread)")
        future = asyncio.run_coroutine_threadsafe(self._agenerate(messages, stop=stop, **kwargs), loop)
        return future.result()

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        tools = kwargs.get("tools") or []
        choice = kwargs.get("tool_choice")
        options = {**self.options, **(kwargs.get("options") or {})}
        if stop:
            options["stop"] = list(stop)
        history = to_corral(messages)
        common = dict(model=self.model, options=options, keep_alive=kwargs.get("keep_alive", self.keep_alive),
                      think=kwargs.get("think", self.think))
        if tools and self.uses_json_fallback():
            schema = fallback.reply_schema(tools, _choice_name(choice or "auto", tools), self.answer_schema)
            params = ChatParams(messages=fallback.rewrite_history(history, tools, self.answer_schema),
                                format=schema, **common)
            async for chunk in self._stream_json_protocol(params):
                yield chunk
            return
        named = choice if choice in (None, *_CHOICES) else {"type": "function", "function": {"name": choice}}
        params = ChatParams(messages=history, tools=tools or None, tool_choice=named,
                            format=kwargs.get("format", self.format), **common)
        stream = self.services.inference.chat(params)
        index = 0
        try:
            async for item in stream:
                if isinstance(item, Final):
                    yield self._last_chunk(item)
                    break
                chunks = []
                for call in item.tool_calls or []:
                    chunks.append(tool_call_chunk(name=call.name, args=json.dumps(call.arguments, ensure_ascii=False),
                                                  id=call.id or new_call_id(), index=index))
                    index += 1
                extra = {"reasoning_content": item.thinking} if item.thinking else {}
                if item.content or chunks or extra:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=item.content, tool_call_chunks=chunks,
                                                                     additional_kwargs=extra))
        finally:
            await stream.aclose()  # gives the sequence back, also when the caller was cancelled

    async def _stream_json_protocol(self, params: ChatParams) -> AsyncIterator[ChatGenerationChunk]:
        answer = fallback.AnswerStream()
        stream = self.services.inference.chat(params)
        try:
            async for item in stream:
                if not isinstance(item, Final):
                    text = answer.feed(item.content)
                    if text and self.answer_schema is None:
                        yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                    continue
                reply = fallback.parse_reply(answer.raw)
                if reply is not None and reply[0] == "call":
                    call = tool_call_chunk(name=reply[1], args=json.dumps(reply[2], ensure_ascii=False),
                                           id=new_call_id(), index=0)
                    yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[call]))
                elif reply is not None and not (answer.streamed and self.answer_schema is None):
                    # not streamed: a JSON answer (a reply cut short shows what of its answer had been
                    # streamed, never its raw JSON; the run's done_reason "length" says it was cut)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=reply[1]))
                yield self._last_chunk(item)
                break
        finally:
            await stream.aclose()

    def _last_chunk(self, final: Final) -> ChatGenerationChunk:
        usage = UsageMetadata(input_tokens=final.prompt_tokens, output_tokens=final.eval_count,
                              total_tokens=final.prompt_tokens + final.eval_count,
                              input_token_details={"cache_read": max(0, final.prompt_tokens - final.prompt_eval_count)})
        meta = {"model_name": self.model, "done_reason": final.done_reason,
                "prompt_eval_count": final.prompt_eval_count, "eval_count": final.eval_count,
                "total_duration": final.total_duration, "load_duration": final.load_duration}
        return ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, response_metadata=meta,
                                                          chunk_position="last"))


def _choice_name(choice: Any, tools: list[dict]) -> str:
    """LangChain's tool_choice forms → "auto", "none", "required" or a tool's name."""
    if choice is True or choice == "any":
        return "required"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if isinstance(name, str) and name:
            return name
        raise ValueError(f"invalid tool_choice {choice!r}")
    if isinstance(choice, str) and choice:
        return choice
    if choice in (None, False):
        return "auto" if choice is None else "none"
    raise ValueError(f"invalid tool_choice {choice!r}")
