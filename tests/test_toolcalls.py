"""Tests for server.engine.toolcalls (pure Python, no model)."""

import json

import pytest

from server.engine.toolcalls import (
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


def test_first_key_rules_out_call():
    p = ToolCallParser("llama3", NAMES)
    assert p.feed('{"ar') == []  # could still be "arguments"
    assert merge(p.feed('gs"')) == [Content('{"args"')]
    p = ToolCallParser("llama3", NAMES)
    assert merge(p.feed('{"answ')) == [Content('{"answ')]  # no call key starts with "answ"


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
