"""Turn a request (chat messages or a generate prompt) into the text the model sees.

Which template applies, in Ollama's order of precedence:
1. a Go template from the model's template layer (Modelfile TEMPLATE, registry models),
2. the Jinja `tokenizer.chat_template` shipped in the GGUF,
3. a built-in template for the model's family.
"""

from __future__ import annotations

from typing import Any

from ..store.model import Model
from . import builtin, jinja


class PromptError(ValueError):
    """The messages cannot be rendered with this model's template."""


def _jinja_messages(messages: list[dict]) -> list[dict]:
    """Ollama message dicts → the Hugging Face shape Jinja templates expect."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("thinking"):
            msg["reasoning_content"] = m["thinking"]
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    "type": "function",
                    "id": tc.get("id") or "",
                    "function": {
                        "name": tc["function"]["name"],
                        "arguments": tc["function"].get("arguments") or {},
                    },
                }
                for tc in m["tool_calls"]
            ]
        if m.get("tool_name"):
            msg["name"] = m["tool_name"]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def render_chat(
    model: Model,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    think: bool | None = None,
    think_level: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    template: str | None = None,
) -> str:
    """Render a conversation, ending where the assistant's reply begins."""
    go_template = template or model.template
    try:
        if go_template:
            from .ollama import render_chat as render_go

            return render_go(go_template, messages, tools or None, think=think, think_level=think_level)
        source = model.chat_template or builtin.for_family(model.details()["family"] or "")
        extra: dict[str, Any] = {}
        if think is not None or think_level:
            extra["enable_thinking"] = bool(think) if think is not None else think_level in ("high", "medium", "low", "max")
        return jinja.render(
            source,
            _jinja_messages(messages),
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except (jinja.TemplateError, ValueError) as exc:
        raise PromptError(str(exc)) from exc


def render_generate(
    model: Model,
    prompt: str,
    *,
    system: str | None = None,
    suffix: str = "",
    template: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    history: bool = True,
    think: bool | None = None,
    think_level: str | None = None,
) -> str:
    """/api/generate: the prompt as one user turn, after the system prompt and (with `history`,
    Ollama's rule when the request brings no `context`) the Modelfile's MESSAGEs, through the template.

    With a suffix the Go template's `.Prompt`/`.Suffix` branch renders a fill-in-the-middle prompt.
    """
    system = system if system is not None else model.system
    earlier = list(model.messages) if history else []
    go_template = template or model.template
    if go_template:
        from .ollama import render_generate as render_go

        try:
            return render_go(go_template, prompt=prompt, system=system or "", suffix=suffix, history=earlier,
                             think=think, think_level=think_level)
        except ValueError as exc:
            raise PromptError(str(exc)) from exc
    messages = (([{"role": "system", "content": system}] if system else []) + earlier
                + [{"role": "user", "content": prompt}])
    return render_chat(model, messages, bos_token=bos_token, eos_token=eos_token, think=think,
                       think_level=think_level)
