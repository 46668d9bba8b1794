"""Golden tests: real Ollama Go templates (tests/data/templates, from ollama/ollama) rendered
through server.template.ollama.  Expected strings are written out by hand from each template's
text, following Ollama's template.Execute semantics (collation, .Messages vs legacy
.Prompt/.Response turns, Go JSON for tools and arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.template.ollama import render_chat, render_generate, template_variables

TEMPLATES = Path(__file__).parent / "data" / "templates"


def tmpl(name: str) -> str:
    return (TEMPLATES / f"{name}.gotmpl").read_text()


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

CHAT = [
    SYSTEM,
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                # deliberately unsorted and with a keyword Ollama's api.Tool does not keep
                "properties": {
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "city": {"type": "string", "description": "The city name"},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]

TOOL_CHAT = [
    SYSTEM,
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}}}],
    },
    {"role": "tool", "content": '{"temperature": 22, "condition": "sunny"}', "tool_name": "get_weather"},
    {"role": "assistant", "content": "It is 22 degrees and sunny in Paris."},
    {"role": "user", "content": "And in Tokyo?"},
]

# Go's json.Marshal of Ollama's templateTool / templateToolFunction: struct field order,
# map keys sorted, "additionalProperties" dropped.
FUNCTION_JSON = (
    '{"name":"get_weather","description":"Get the current weather for a city",'
    '"parameters":{"type":"object","required":["city"],"properties":{'
    '"city":{"type":"string","description":"The city name"},'
    '"unit":{"type":"string","enum":["celsius","fahrenheit"]}}}}'
)
TOOL_JSON = '{"type":"function","function":' + FUNCTION_JSON + "}"
ARGS_JSON = '{"city":"Paris","unit":"celsius"}'


# ---------------------------------------------------------------------------- llama 3


def test_llama32_tools_conversation() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "You are a helpful assistant."
        "When you receive a tool call response, use the output to format an answer to the orginal user question.\n\n"
        "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "What's the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": ' + ARGS_JSON + "}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n"
        '{"temperature": 22, "condition": "sunny"}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "It is 22 degrees and sunny in Paris.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        "Do not use variables.\n\n"
        + TOOL_JSON + "\n\n"
        "And in Tokyo?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tmpl("llama3.2"), TOOL_CHAT, TOOLS) == expected


def test_llama32_without_tools_ends_after_tool_result() -> None:
    messages = TOOL_CHAT[:4]  # ends with the tool result: the template opens the assistant turn
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "What's the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": ' + ARGS_JSON + "}<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n"
        '{"temperature": 22, "condition": "sunny"}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tmpl("llama3.2"), messages) == expected


def test_llama32_generate() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Why is the sky blue?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_generate(tmpl("llama3.2"), prompt="Why is the sky blue?", system="Be brief.") == expected


def test_llama3_instruct_messages() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tmpl("llama3-instruct"), CHAT) == expected


def test_llama3_legacy_prompt_response_turns() -> None:
    # no .Messages: one execution per turn; the last one stops at {{ .Response }}
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tmpl("llama3-legacy"), CHAT) == expected


def test_llama3_legacy_system_mid_conversation_and_tool_skipped() -> None:
    messages = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "tool", "content": "ignored by legacy templates"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Thanks."},
    ]
    expected = (
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>system<|end_header_id|>\n\nAnswer in French.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nThanks.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(tmpl("llama3-legacy"), messages) == expected


def test_llama3_legacy_assistant_prefill() -> None:
    messages = [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}]
    expected = (
        "<|start_header_id|>user<|end_header_id|>\n\nCount to three.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nOne, two,"
    )
    assert render_chat(tmpl("llama3-legacy"), messages) == expected


def test_llama3_legacy_generate() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_generate(tmpl("llama3-legacy"), prompt="Why is the sky blue?", system="Be brief.") == expected


# ---------------------------------------------------------------------------- gemma 3


def test_gemma3_system_folded_into_first_user_turn() -> None:
    expected = (
        "<start_of_turn>user\nYou are a helpful assistant.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n"
        "<start_of_turn>model\n"
        "\n"  # the template file ends with a newline after its last {{- end }}
    )
    assert render_chat(tmpl("gemma3-instruct"), CHAT) == expected


def test_gemma3_consecutive_user_messages_are_merged() -> None:
    messages = [{"role": "user", "content": "First."}, {"role": "user", "content": "Second."}]
    expected = "<start_of_turn>user\nFirst.\n\nSecond.<end_of_turn>\n<start_of_turn>model\n\n"
    assert render_chat(tmpl("gemma3-instruct"), messages) == expected


# ---------------------------------------------------------------------------- qwen 2.5


def test_qwen25_tools_conversation() -> None:
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        '{"type": "function", "function": ' + FUNCTION_JSON + "}\n"
        "</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": ' + ARGS_JSON + "}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n"
        '{"temperature": 22, "condition": "sunny"}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 22 degrees and sunny in Paris.<|im_end|>\n"
        "<|im_start|>user\nAnd in Tokyo?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(tmpl("qwen2.5"), TOOL_CHAT, TOOLS) == expected


def test_qwen25_no_system_no_tools() -> None:
    messages = [{"role": "user", "content": "Hi!"}]
    assert render_chat(tmpl("qwen2.5"), messages) == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"


def test_qwen25_fill_in_the_middle() -> None:
    out = render_generate(tmpl("qwen2.5"), prompt="def add(a, b):\n", suffix="\n    return c")
    assert out == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c<|fim_middle|>"


def test_qwen25_assistant_prefill_is_left_open() -> None:
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello"}]
    expected = "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello"
    assert render_chat(tmpl("qwen2.5"), messages) == expected


# ---------------------------------------------------------------------------- mistral


def test_mistral_tools_conversation() -> None:
    expected = (
        "[INST] What's the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": ' + ARGS_JSON + "}]</s>"
        '[TOOL_RESULTS] {"content": {"temperature": 22, "condition": "sunny"}}[/TOOL_RESULTS]'
        " It is 22 degrees and sunny in Paris.</s>"
        "[AVAILABLE_TOOLS] [" + TOOL_JSON + "][/AVAILABLE_TOOLS]"
        "[INST] You are a helpful assistant.\n\nAnd in Tokyo?[/INST]"
    )
    assert render_chat(tmpl("mistral"), TOOL_CHAT, TOOLS) == expected


def test_mistral_several_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_weather", "arguments": {"city": "Rome", "days": 2.0}}},
            ],
        },
        {"role": "tool", "content": "18", "tool_name": "get_weather"},
        {"role": "tool", "content": "25", "tool_name": "get_weather"},
    ]
    expected = (
        "[INST] Weather in Paris and Rome?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Paris"}}'
        '{"name": "get_weather", "arguments": {"city":"Rome","days":2}}]</s>'
        '[TOOL_RESULTS] {"content": 18}[/TOOL_RESULTS]'
        '[TOOL_RESULTS] {"content": 25}[/TOOL_RESULTS]'
    )
    assert render_chat(tmpl("mistral"), messages) == expected


# ---------------------------------------------------------------------------- chatml


def test_chatml_conversation_with_merged_user_turns() -> None:
    messages = CHAT + [{"role": "user", "content": "A short one, please."}]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.\n\nA short one, please.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(tmpl("chatml"), messages) == expected


def test_chatml_generate() -> None:
    expected = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert render_generate(tmpl("chatml"), prompt="Hello") == expected


# ---------------------------------------------------------------------------- Ollama semantics


def test_template_variables_drive_capabilities() -> None:
    assert {"tools", "messages", "toolcalls"} <= template_variables(tmpl("llama3.2"))
    assert {"suffix", "tools", "prompt", "response"} <= template_variables(tmpl("qwen2.5"))
    assert "tools" not in template_variables(tmpl("gemma3-instruct"))
    # templates without .Messages/.Response get an implicit trailing {{ .Response }}
    assert template_variables("{{ .System }} {{ .Prompt }}") == {"system", "prompt", "response"}


def test_system_messages_are_collected() -> None:
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }};{{ end }}"
    messages = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "system", "content": "Be terse."}]
    assert render_chat(template, messages) == "You are a helpful assistant.\n\nBe terse.|system;user;system;"


def test_message_fields_visible_to_templates() -> None:
    template = (
        "{{ range .Messages }}{{ .Role }}:{{ .Content }}"
        "{{ if .Thinking }}[think:{{ .Thinking }}]{{ end }}"
        "{{ with .ToolName }}[tool:{{ . }}]{{ end }}"
        "{{ range .ToolCalls }}[call:{{ .Function.Name }} {{ .Function.Arguments.city }}]{{ end }}\n{{ end }}"
    )
    out = render_chat(template, TOOL_CHAT[1:4] + [{"role": "assistant", "content": "ok", "thinking": "hmm"}])
    assert out == (
        "user:What's the weather in Paris?\n"
        "assistant:[call:get_weather Paris]\n"
        'tool:{"temperature": 22, "condition": "sunny"}[tool:get_weather]\n'
        "assistant:ok[think:hmm]\n"
    )


def test_tool_fields_and_json_forms() -> None:
    template = (
        "{{ range .Tools }}{{ .Type }} {{ .Function.Name }}: {{ .Function.Description }}\n"
        "{{ range $name, $p := .Function.Parameters.Properties }}- {{ $name }} ({{ $p.Type }}){{ with $p.Enum }} one of {{ json . }}{{ end }}\n{{ end }}"
        "{{ json . }}\n{{ end }}{{ range .Messages }}{{ end }}"
    )
    out = render_chat(template, [{"role": "user", "content": "x"}], TOOLS)
    assert out == (
        "function get_weather: Get the current weather for a city\n"
        "- city (string)\n"
        '- unit (string) one of ["celsius","fahrenheit"]\n' + TOOL_JSON + "\n"
    )


@pytest.mark.parametrize(
    ("think", "level", "expected"),
    [
        (None, None, "false||false"),
        (True, None, "true|medium|true"),
        (False, None, "false||true"),
        (None, "high", "true|high|true"),
    ],
)
def test_think_values(think: bool | None, level: str | None, expected: str) -> None:
    template = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    assert render_chat(template, [{"role": "user", "content": "x"}], think=think, think_level=level) == expected


# ---------------------------------------------------------------------------- built-in (Jinja) templates


def test_builtin_templates_keep_their_newlines() -> None:
    """For GGUFs without a template: the same turn layout as Ollama's gemma3 / llama3 / chatml templates."""
    from server.template import builtin, jinja

    assert jinja.render(builtin.GEMMA, CHAT, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert jinja.render(builtin.LLAMA3, CHAT, bos_token="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert jinja.render(builtin.CHATML, CHAT) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_nil_tools_and_properties_print_as_ollama_does() -> None:
    """Ollama's templateTools / templateProperties have String() methods: nil prints null / {}."""
    hi = [{"role": "user", "content": "hi"}]
    messages = "{{ range .Messages }}{{ end }}"  # a template without .Messages takes the legacy path
    assert render_chat("{{ .Tools }}" + messages, hi) == "null"
    assert render_chat("{{ .Tools }}" + messages, hi, []) == "[]"
    bare = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert render_chat("{{ range .Tools }}{{ .Function.Parameters.Properties }}{{ end }}" + messages, hi, bare) == "{}"
