"""Tests for server.toolcalls (pure Python, no model)."""

import json

import pytest

from server.toolcalls.parser import (
    Content,
    ToolCall,
    ToolCallParser,
    detect_format,
    parse_tool_calls,
)

NAMES = {"get_weather", "search", "noargs"}


def merge(events):
    out = []
    for ev in events:
        if isinstance(ev, Content) and out and isinstance(out[-1], Content):
            out[-1] = Content(out[-1].text + ev.text)
        else:
            out.append(ev)
    return out


def run_whole(fmt, text, names=NAMES):
    p = ToolCallParser(fmt, names)
    return merge(p.feed(text) + p.finish())


def run_chars(fmt, text, names=NAMES):
    p = ToolCallParser(fmt, names)
    events = []
    for ch in text:
        events += p.feed(ch)
    return merge(events + p.finish())


def parse(fmt, text, names=NAMES):
    """Both feeding modes must agree; returns the merged events."""
    whole = run_whole(fmt, text, names)
    chars = run_chars(fmt, text, names)
    assert whole == chars
    # never lose text: content + calls account for everything but separating whitespace
    return whole


W = ToolCall("get_weather", {"city": "Paris"})
S = ToolCall("search", {"q": "a;b", "n": 3})


# -- hermes -------------------------------------------------------------------

def test_hermes_single_and_several():
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "search", "arguments": {"q": "a;b", "n": 3}}\n</tool_call>')
    assert parse("hermes", text) == [W, S]


def test_hermes_content_before_and_after():
    text = ('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '</tool_call>\nDone.')
    assert parse("hermes", text) == [Content("Let me check.\n"), W, Content("\nDone.")]


def test_hermes_missing_close_tag_at_end():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    assert parse("hermes", text) == [W]


def test_hermes_list_inside_one_tag():
    text = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "search", "arguments": {"q": "a;b", "n": 3}}]</tool_call>')
    assert parse("hermes", text) == [W, S]


def test_hermes_malformed_json_is_content():
    text = '<tool_call>{"name": "get_weather", "arguments": {city: Paris}}</tool_call>'
    assert parse("hermes", text) == [Content(text)]


def test_hermes_unknown_name_is_content():
    text = 'ok <tool_call>{"name": "launch_missiles", "arguments": {}}</tool_call> bye'
    assert parse("hermes", text) == [Content(text)]


def test_hermes_not_json_body_is_content():
    text = "Use the <tool_call> tag to call tools, like <tool_call>this</tool_call>."
    assert parse("hermes", text) == [Content(text)]


def test_hermes_unterminated_garbage_is_content():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    assert parse("hermes", text) == [Content(text)]


# -- llama3 -------------------------------------------------------------------

def test_llama3_parameters_bare_json():
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse("llama3", text) == [W]


def test_llama3_python_tag_semicolons():
    text = ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "search", "parameters": {"q": "a;b", "n": 3}}')
    assert parse("llama3", text) == [W, S]


def test_llama3_newline_separated_and_arguments_key():
    text = ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '{"name": "search", "parameters": {"q": "a;b", "n": 3}}\n'
            '{"name": "noargs", "parameters": {}}')
    assert parse("llama3", text) == [W, S, ToolCall("noargs", {})]


def test_llama3_content_before_python_tag():
    text = 'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse("llama3", text) == [Content("Checking."), W]


def test_llama3_python_code_is_content():
    text = '<|python_tag|>brave_search.call(query="weather")'
    assert parse("llama3", text) == [Content(text)]


def test_llama3_text_after_call_is_content():
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}} and more'
    assert parse("llama3", text) == [W, Content(" and more")]


# -- mistral ------------------------------------------------------------------

def test_mistral_array_form():
    text = ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, '
            '{"name": "search", "arguments": {"q": "a;b", "n": 3}}]')
    assert parse("mistral", text) == [W, S]


def test_mistral_named_args_form():
    text = ('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
            '[TOOL_CALLS]search[CALL_ID]x9y8z7[ARGS]{"q": "a;b", "n": 3}')
    assert parse("mistral", text) == [Content("Sure."), W, S]


def test_mistral_named_unknown_is_content():
    text = '[TOOL_CALLS]rm_rf[ARGS]{"path": "/"}'
    assert parse("mistral", text) == [Content(text)]


def test_mistral_without_marker_rendered():
    # the engine may not render the [TOOL_CALLS] control token
    text = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert parse("mistral", text) == [W]


def test_mistral_stringified_arguments():
    text = '[TOOL_CALLS][{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]'
    assert parse("mistral", text) == [W]


# -- plain json -----------------------------------------------------------------

def test_json_object_and_array():
    assert parse("json", '{"name": "get_weather", "arguments": {"city": "Paris"}}') == [W]
    text = ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "search", "arguments": {"q": "a;b", "n": 3}}]')
    assert parse("json", text) == [W, S]


def test_json_openai_wrapper():
    text = '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}'
    assert parse("json", text) == [W]


def test_json_answer_that_is_not_a_call_is_content():
    text = '{"answer": 42, "name": "get_weather"}'
    assert parse("json", text) == [Content(text)]
    text = '[1, 2, 3]'
    assert parse("json", text) == [Content(text)]


def test_json_later_in_text_is_content():
    text = 'Here: {"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert parse("json", text) == [Content(text)]


def test_json_leading_whitespace_before_call_dropped():
    assert parse("json", '\n  {"name": "get_weather", "arguments": {"city": "Paris"}}\n') == [W]


def test_whitespace_only_output_is_content():
    assert parse("json", "  \n") == [Content("  \n")]


# -- streaming behaviour ----------------------------------------------------------

def test_content_streams_immediately():
    p = ToolCallParser("hermes", NAMES)
    assert p.feed("Hello") == [Content("Hello")]
    assert p.feed(" there <tool") == [Content(" there ")]  # "<tool" is held back
    assert p.feed("box>") == [Content("<toolbox>")]  # false start flushed
    assert p.feed("<tool_call>") == []
    assert p.feed('{"name": "get_weather", ') == []
    assert p.feed('"arguments": {"city": "Paris"}}</tool_call>') == [W]
    assert p.finish() == []


def test_false_start_flushed_as_soon_as_impossible():
    p = ToolCallParser("json", NAMES)
    assert p.feed("{") == []
    assert p.feed('"na') == []
    assert p.feed('me": "get_w') == []
    # no tool name starts with "get_x": this is not a call
    assert merge(p.feed("x")) == [Content('{"name": "get_wx')]
    assert merge(p.feed('"}')) == [Content('"}')]
    assert p.finish() == []


def test_unknown_first_key_is_held_until_the_object_ends():
    # unknown keys ("thought", ...) are ignored in a call, so any first key may still be one
    p = ToolCallParser("llama3", NAMES)
    assert p.feed('{"args"') == []
    assert p.feed(': 1, "answer": 2') == []
    assert merge(p.feed("} tail")) == [Content('{"args": 1, "answer": 2} tail')]
    p = ToolCallParser("llama3", NAMES)
    assert p.feed('{"thought": "need the weather", ') == []
    assert p.feed('"name": "get_weather", "arguments": {"city": "Paris"}}') == [W]
    # but a non-string first key, or a list of non-objects, is no call at once
    p = ToolCallParser("llama3", NAMES)
    assert merge(p.feed("{1")) == [Content("{1")]
    p = ToolCallParser("llama3", NAMES)
    assert merge(p.feed("[1")) == [Content("[1")]


def test_partial_marker_flushed_at_finish():
    p = ToolCallParser("mistral", NAMES)
    assert p.feed("text [TOOL_CA") == [Content("text ")]
    assert p.finish() == [Content("[TOOL_CA")]


def test_markers_of_other_formats_are_content():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert parse("mistral", text) == [Content(text)]


def test_fmt_none_accepts_every_marker():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
            '[TOOL_CALLS]search[ARGS]{"q": "a;b", "n": 3}')
    assert parse(None, text) == [W, S]


def test_any_name_when_tool_names_is_none():
    assert parse("json", '{"name": "whatever", "arguments": {}}', names=None) == [ToolCall("whatever", {})]


def test_unicode_and_escapes_in_arguments():
    args = {"q": "naïve \"quoted\" \\ back } brace ] <tool_call> ü 日本"}
    text = "<tool_call>" + json.dumps({"name": "search", "arguments": args}, ensure_ascii=False) + "</tool_call>"
    assert parse("hermes", text) == [ToolCall("search", args)]


def test_parse_tool_calls_helper():
    content, calls = parse_tool_calls(
        'Hi <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', "hermes", NAMES)
    assert content == "Hi " and calls == [W]


def test_feed_after_finish_raises():
    p = ToolCallParser("json", NAMES)
    p.finish()
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_unknown_format_raises():
    with pytest.raises(ValueError):
        ToolCallParser("xml", NAMES)


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral", "json", None])
@pytest.mark.parametrize("text", [
    "plain answer with no calls at all",
    "{ not json",
    "<tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    '{"name": "get_weather", "arguments": {"city": "Paris"}',  # truncated
    "[",
    "<",
])
def test_no_text_lost(fmt, text):
    events = parse(fmt, text)
    assert "".join(e.text for e in events if isinstance(e, Content)) == text
    assert not any(isinstance(e, ToolCall) for e in events)


SAMPLES = [
    ("hermes", 'Hi!\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>{"name": "bad", "arguments": {}}</tool_call> tail <tool_ca'),
    ("llama3", '<|python_tag|>{"name": "search", "parameters": {"q": "a;b", "n": 3}};\n'
               '{"name": "get_weather", "parameters": {"city": "Paris"}} {oops'),
    ("mistral", 'x[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
                '[TOOL_CALLS]search[ARGS]{"q": "a;b", "n": 3} [TOOL_CALLS]nope[ARGS]{}'),
    ("json", ' [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
             '{"name": "search", "arguments": {"q": "a;b", "n": 3}}] ; {"name": "x"}'),
]


@pytest.mark.parametrize("fmt,text", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_random_chunking_gives_same_events(fmt, text):
    import random

    expected = run_whole(fmt, text)
    content = "".join(e.text for e in expected if isinstance(e, Content))
    assert any(isinstance(e, ToolCall) for e in expected) and content.strip()
    rng = random.Random(1234)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        p = ToolCallParser(fmt, NAMES)
        events = []
        for piece in pieces:
            events += p.feed(piece)
        assert merge(events + p.finish()) == expected


# -- detect_format -------------------------------------------------------------------

def test_detect_format():
    assert detect_format("{% for t in tools %}<tool_call>{{ t }}</tool_call>{% endfor %}", None) == "hermes"
    assert detect_format("{{ '[TOOL_CALLS]' }}", None) == "mistral"
    assert detect_format("{{ '<|python_tag|>' }}", None) == "llama3"
    assert detect_format("<|start_header_id|>{{ role }}<|end_header_id|>", None) == "llama3"
    assert detect_format("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", None) == "json"
    assert detect_format("{{ m.content }}", {"<|python_tag|>", "<|start_header_id|>"}) == "llama3"
    assert detect_format("", {"<tool_call>", "</tool_call>"}) == "hermes"
    assert detect_format(None, None) is None


# -- tags taken from Go templates (Ollama's tools/template.go) ------------------------

from server.toolcalls.parser import tag_format, template_tool_tag  # noqa: E402

# Ollama library templates, verbatim
GRANITE3_TEMPLATE = '''{{- if .Tools }}<|start_of_role|>available_tools<|end_of_role|>
{{- range .Tools }}
{{ . }}
{{ end }}<|end_of_text|>
{{ end }}
{{- range $index, $_ := .Messages }}<|start_of_role|>
{{- if eq .Role "tool" }}tool_response
{{- else }}{{ .Role }}
{{- end }}<|end_of_role|>
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<|tool_call|>
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}
{{- end }}
{{- if eq (len (slice $.Messages $index)) 1 }}
{{- if eq .Role "assistant" }}
{{- else }}<|end_of_text|>
<|start_of_role|>assistant<|end_of_role|>
{{- end }}
{{- else }}<|end_of_text|>
{{ end }}
{{- end }}'''

COMMAND_R_TEMPLATE = '''{{- if or .Tools .System }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>
{{- if .Tools }}# Safety Preamble
The instructions in this section override those in the task description and style guide sections. Don't answer questions that are harmful or immoral.

## Available Tools
Here is a list of tools that you have available to you:
{{- range .Tools }}

```python
def {{ .Function.Name }}(
{{- range $name, $property := .Function.Parameters.Properties }}{{ $name }}: {{ $property.Type }}, {{ end }}) -> List[Dict]:
    \'\'\'{{ .Function.Description }}

{{- if .Function.Parameters.Properties }}

    Args:
{{- range $name, $property := .Function.Parameters.Properties }}
        {{ $name }} ({{ $property.Type }}): {{ $property.Description }}
{{- end }}
{{- end }}
    \'\'\'
    pass
```
{{- end }}
{{- else if .System }}{{ .System }}
{{- end }}<|END_OF_TURN_TOKEN|>
{{- end }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- continue }}
{{- end }}<|START_OF_TURN_TOKEN|>
{{- if eq .Role "user" }}<|USER_TOKEN|>{{ .Content }}
{{- if $.Tools }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write 'Action:' followed by a json-formatted list of actions that you want to perform in order to produce a good response to the user's last input. The list of actions you want to call should be formatted as a list of json objects, for example:
```json
[
    {
        "tool_name": title of the tool in the specification,
        "parameters": a dict of parameters to input into the tool as they are defined in the specs, or {} if it takes no parameters
    }
]```
{{- end }}
{{- else if eq .Role "assistant" }}<|CHATBOT_TOKEN|>
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}
Action: ```json
[
{{- range .ToolCalls }}
    {
        "tool_name": "{{ .Function.Name }}",
        "parameters": {{ .Function.Arguments }}
    }
{{- end }}
]```
{{- end }}
{{- else if eq .Role "tool" }}<|SYSTEM_TOKEN|><results>
console_output: {{ .Content }}
</results>
{{- end }}<|END_OF_TURN_TOKEN|>
{{- end }}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'''

PHI4_MINI_TEMPLATE = '''{{- if or .System .Tools }}<|system|>{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}{{ if not .System }}You are a helpful assistant with some tools.{{ end }}<|tool|>{{ .Tools }}<|/tool|><|end|>
{{- end }}
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if ne .Role "system" }}<|{{ .Role }}|>{{ .Content }}
{{- if .ToolCalls }}<|tool_call|>[{{ range .ToolCalls }}{"name":"{{ .Function.Name }}","arguments":{{ .Function.Arguments }}{{ end }}]<|/tool_call|>
{{- end }}
{{- if not $last }}<|end|>
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|end|><|assistant|>{{ end }}
{{- end }}
{{- end }}'''

GRANITE = detect_format(GRANITE3_TEMPLATE)
COMMAND_R = detect_format(COMMAND_R_TEMPLATE)


def test_detect_format_takes_the_tag_from_real_go_templates():
    assert template_tool_tag(GRANITE3_TEMPLATE) == ("<|tool_call|>", "")
    assert GRANITE == tag_format("<|tool_call|>") == "tag:<|tool_call|>"
    assert template_tool_tag(COMMAND_R_TEMPLATE) == ("Action: ```json", "```")
    assert COMMAND_R == tag_format("Action: ```json", "```")
    assert template_tool_tag(PHI4_MINI_TEMPLATE) == ("<|tool_call|>", "<|/tool_call|>")
    # the known formats still win, and templates without a tag stay "json"
    assert detect_format('{{ if .ToolCalls }}<tool_call>{{ json . }}</tool_call>{{ end }}') == "hermes"
    assert detect_format("{{ range .Messages }}{{ .Content }}{{ end }}") == "json"
    assert detect_format('{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}"}'
                         '{{ end }}{{ end }}') == "json"
    # a Jinja template is no Go template: no tag, no error
    assert detect_format("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages[0]['content'] }}") == "json"
    # unknown functions do not hide the tag
    assert detect_format("{{ if .ToolCalls }}<|calls|>{{ myfunc .ToolCalls }}{{ end }}") == "tag:<|calls|>"


@pytest.mark.parametrize("template,tag", [
    # Ollama's TestParseTag cases; a trailing "[" opens the JSON array here, so is not part of the tag
    ("", None),
    ("{{if .ToolCalls}}{{end}}", None),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", None),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
    ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
    ("{{if .ToolCalls}} {{range .ToolCalls}}{{ . }}{{end}}{{end}}", None),
    ('{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}"}{{end}}{{end}}', None),
    ("{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}<|tool▁call▁begin|>x{{end}}"
     "<|tool▁calls▁end|>{{end}}",
     "<|tool▁calls▁begin|>"),
    ('{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}"}<tool_call>{{end}}{{end}}',
     "<tool_call>"),
    ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second text{{end}}", "First text"),
    ("{{if .ToolCalls}}Action: ```json{{end}}", "Action: ```json"),
    ("{{if .ToolCalls}}functools[{{end}}", "functools"),
    ("{{if .ToolCalls}}[TOOL_CALL] [{{end}}", "[TOOL_CALL]"),
    ("{{if .ToolCalls}}[TOOL_CALL][{{end}}", "[TOOL_CALL]"),
    # beyond Ollama: a range over the calls, or $var.ToolCalls, when there is no if
    ("{{range $m := .Messages}}{{range $m.ToolCalls}}<|call|>{{json .Function}}{{end}}{{end}}", "<|call|>"),
    ("{{range .Messages}}{{if $.X}}{{end}}{{if .ToolCalls}}{{.Content}}<|call|>{{end}}{{end}}", None),
])
def test_template_tool_tag_cases(template, tag):
    got = template_tool_tag(template)
    assert (got[0] if got else None) == tag


def test_closer_from_the_template():
    t = "{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}{{json .}}{{end}}<|tool▁calls▁end|>{{end}}"
    assert template_tool_tag(t) == ("<|tool▁calls▁begin|>", "<|tool▁calls▁end|>")


def test_granite_list_after_tag():
    text = ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "search", "arguments": {"q": "a;b", "n": 3}}]')
    assert parse(GRANITE, text) == [W, S]


def test_granite_objects_after_tag_with_content_before():
    text = ('Let me look.<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '{"name": "search", "arguments": {"q": "a;b", "n": 3}}')
    assert parse(GRANITE, text) == [Content("Let me look."), W, S]


def test_granite_plain_json_and_answers():
    # a grammar-forced call comes without the tag
    assert parse(GRANITE, '[{"name": "get_weather", "arguments": {"city": "Paris"}}]') == [W]
    text = "The weather in Paris is mild. <|tool_call|> is how I call tools."
    assert parse(GRANITE, text) == [Content(text)]
    text = '<|tool_call|>[{"name": "unknown_tool", "arguments": {}}] then text'
    assert parse(GRANITE, text) == [Content(text)]


def test_command_r_action_block():
    text = ('Action: ```json\n[\n    {\n        "tool_name": "get_weather",\n'
            '        "parameters": {"city": "Paris"}\n    },\n    {\n        "tool_name": "search",\n'
            '        "parameters": {"q": "a;b", "n": 3}\n    }\n]\n```')
    assert parse(COMMAND_R, text) == [W, S]
    # the closing fence is dropped only right after the calls
    text = ('Plan: look it up.\nAction: ```json\n[{"tool_name": "get_weather", "parameters": {"city": "Paris"}}]```'
            '\nok ```')
    assert parse(COMMAND_R, text) == [Content("Plan: look it up.\n"), W, Content("\nok ```")]


def test_command_r_text_that_only_starts_like_the_tag():
    text = "Action items:\n1. Action: ```python\nprint(1)\n```"
    assert parse(COMMAND_R, text) == [Content(text)]
    p = ToolCallParser(COMMAND_R, NAMES)
    assert p.feed("Sure. Action: ``") == [Content("Sure. ")]  # the partial tag is held back
    assert p.feed("`js") == []
    assert merge(p.feed("!")) == [Content("Action: ```js!")]
    assert p.finish() == []


def test_tag_streams_without_leaking_the_tag():
    text = 'Hi <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    p = ToolCallParser(GRANITE, NAMES)
    events = []
    for ch in text:
        got = p.feed(ch)
        assert not any(isinstance(e, Content) and "<|" in e.text for e in got)
        events += got
    assert merge(events + p.finish()) == [Content("Hi "), W]
    p = ToolCallParser(GRANITE, NAMES)
    assert p.feed("x <|tool_ca") == [Content("x ")]
    assert p.finish() == [Content("<|tool_ca")]


def test_phi4_closing_tag_dropped():
    fmt = detect_format(PHI4_MINI_TEMPLATE)
    text = '<|tool_call|>[{"name":"get_weather","arguments":{"city": "Paris"}}]<|/tool_call|>'
    assert parse(fmt, text) == [W]
    assert parse(fmt, text + " done") == [W, Content(" done")]


@pytest.mark.parametrize("fmt", [GRANITE, COMMAND_R])
@pytest.mark.parametrize("text", [
    "plain answer", "<|tool_call|>", "Action: ```json", "Action: ```json\n[", "<|tool_call|>[{\"name\": \"get_w",
    "Action: ``", "```",
])
def test_no_text_lost_with_tags(fmt, text):
    events = parse(fmt, text)
    assert "".join(e.text for e in events if isinstance(e, Content)) == text
    assert not any(isinstance(e, ToolCall) for e in events)


TAG_SAMPLES = [
    (GRANITE, 'Hi!<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n'
              '<|tool_call|>{"name": "search", "arguments": {"q": "a;b", "n": 3}} tail <|tool_c'),
    (COMMAND_R, 'Plan.\nAction: ```json\n[{"tool_name": "get_weather", "parameters": {"city": "Paris"}},'
                ' {"tool_name": "search", "parameters": {"q": "a;b", "n": 3}}]\n``` after Action: ``'),
]


@pytest.mark.parametrize("fmt,text", TAG_SAMPLES, ids=["granite", "command-r"])
def test_random_chunking_with_tags(fmt, text):
    test_random_chunking_gives_same_events(fmt, text)


def test_reply_parser_with_template_tags():
    from server.reply import ReplyParser

    for template, out in [
        (COMMAND_R_TEMPLATE, 'Action: ```json\n[\n    {\n        "tool_name": "get_weather",\n'
                             '        "parameters": {"city": "Paris"}\n    }\n]```'),
        (GRANITE3_TEMPLATE, '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ]:
        p = ReplyParser(think=False, tool_format=detect_format(template), tool_names=["get_weather"])
        parts = [p.feed(ch) for ch in out] + [p.finish()]
        assert "".join(x.content for x in parts) == ""
        calls = [c for x in parts for c in x.tool_calls]
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_tag_format_strings():
    assert ToolCallParser("tag:<x>", NAMES).fmt == "tag:<x>"
    with pytest.raises(ValueError):
        ToolCallParser("tag:", NAMES)
    with pytest.raises(ValueError):
        tag_format("")


# -- call objects ---------------------------------------------------------------------

def test_tool_name_and_parameters_keys():
    text = '{"tool_name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse("json", text) == [W]
    assert parse("hermes", "<tool_call>" + text + "</tool_call>") == [W]


def test_unknown_keys_are_ignored():
    text = ('{"thought": "I need the weather", "name": "get_weather", "arguments": {"city": "Paris"}, '
            '"confidence": 0.9}')
    assert parse("json", text) == [W]
    assert parse("hermes", "<tool_call>" + text + "</tool_call>") == [W]
    text = ('{"type": "function", "id": "c1", "index": 0, "function": {"name": "get_weather", '
            '"arguments": "{\\"city\\": \\"Paris\\"}", "extra": true}}')
    assert parse("json", text) == [W]
    # but with no arguments, other keys mean it is no call
    text = '{"answer": 42, "name": "get_weather"}'
    assert parse("json", text) == [Content(text)]
    assert parse("json", '{"name": "noargs", "id": "x"}') == [ToolCall("noargs", {})]


def test_object_keyed_by_tool_name():
    assert parse("json", '{"get_weather": {"city": "Paris"}}') == [W]
    assert parse(GRANITE, '<|tool_call|>[{"get_weather": {"city": "Paris"}}]') == [W]
    assert parse("json", '{"get_weather": "{\\"city\\": \\"Paris\\"}"}') == [W]
    for text in ['{"weather": {"city": "Paris"}}', '{"search": "no results"}', '{"search": ""}',
                 '{"search": {}, "get_weather": {}}']:
        assert parse("json", text) == [Content(text)]
    assert parse("json", '{"whatever": {}}', names=None) == [Content('{"whatever": {}}')]


def test_hermes_closing_tag_inside_an_argument_string():
    args = {"q": "what does </tool_call> mean?"}
    text = "<tool_call>\n" + json.dumps({"name": "search", "arguments": args}) + "\n</tool_call> ok"
    assert parse("hermes", text) == [ToolCall("search", args), Content(" ok")]
    text = '<tool_call>{"name": "search", "arguments": {"q": "</tool_call>"}}'  # close tag missing at the end
    assert parse("hermes", text) == [ToolCall("search", {"q": "</tool_call>"})]
    text = '<tool_call>{"name": "search", "arguments": {"q": "</tool_call>"}} trailing</tool_call>'
    assert parse("hermes", text) == [Content(text)]


def test_rejected_json_start_does_not_swallow_a_following_marker():
    # "{<" is no call; the "<" may start a marker, so it is scanned again (in every chunking)
    text = '{<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>}'
    assert parse("hermes", text) == [Content("{"), W, Content("}")]
    text = '[<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert parse(GRANITE, text) == [Content("["), W]
