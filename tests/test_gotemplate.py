"""Unit tests for server.template.gotemplate (Go text/template subset)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from server.template.gotemplate import NilMap, NilSlice, Struct, TemplateError, go_json, parse


def r(text: str, data: Any = None, **funcs: Any) -> str:
    return parse(text, funcs or None).execute(data)


def parse_error(text: str) -> str:
    with pytest.raises(TemplateError) as e:
        parse(text)
    return str(e.value)


def exec_error(text: str, data: Any = None) -> str:
    with pytest.raises(TemplateError) as e:
        parse(text).execute(data)
    return str(e.value)


# ---------------------------------------------------------------------------- text, trim, comments


def test_plain_text_and_actions() -> None:
    assert r("hello") == "hello"
    assert r("") == ""
    assert r("a{{ .X }}b", {"X": "-"}) == "a-b"
    assert r("{{.X}}{{ .X }}", {"X": 1}) == "11"


def test_trim_markers() -> None:
    assert r("a  \n\t{{- .X }}  b", {"X": 1}) == "a1  b"
    assert r("a  {{ .X -}} \n\n b", {"X": 1}) == "a  1b"
    assert r("a \n{{- .X -}}\n b", {"X": 1}) == "a1b"
    assert r("x\n{{- if true }}\n  y\n{{- end }}\nz") == "x\n  y\nz"
    # "{{-3}}" is the number -3, not a trim marker
    assert r("a {{-3}} b") == "a -3 b"


def test_comments() -> None:
    assert r("a{{/* note */}}b") == "ab"
    assert r("a  {{- /* multi\nline */ -}}  b") == "ab"
    assert "unclosed comment" in parse_error("{{/* no end")
    assert "comment ends before closing delimiter" in parse_error("{{/* c */ .X }}")


def test_newlines_inside_actions() -> None:
    assert r("{{ if\n  .X\n}}yes{{ end }}", {"X": True}) == "yes"


# ---------------------------------------------------------------------------- data access


def test_fields_and_missing_values() -> None:
    data = {"A": {"B": {"C": "deep"}}, "N": None, "S": "str"}
    assert r("{{ .A.B.C }}", data) == "deep"
    assert r("[{{ .Missing }}][{{ .A.Missing }}][{{ .N.X }}][{{ .N }}]", data) == "[][][][]"
    assert "can't evaluate field X in type string" in exec_error("{{ .S.X }}", data)


def test_struct_values() -> None:
    s = Struct({"Name": "n", "Count": 0, "Tags": []}, {"Name": "name", "Count": "count,omitempty", "Tags": "tags"})
    assert r("{{ .Name }} {{ .Count }} {{ .Missing }}", s) == "n 0 "
    assert r("{{ . }}", s) == "{n 0 []}"
    assert go_json(s) == '{"name":"n","tags":[]}'
    assert r("{{ if . }}struct is truthy{{ end }}", s) == "struct is truthy"


def test_dot_and_root_variable() -> None:
    data = {"Items": ["a", "b"], "Sep": ","}
    assert r("{{ range .Items }}{{ . }}{{ $.Sep }}{{ end }}", data) == "a,b,"
    assert r("{{ with .Items }}{{ index . 1 }}{{ end }}", data) == "b"


def test_variables_declare_assign_and_scope() -> None:
    assert r("{{ $x := .A }}{{ $x }}{{ $x = 2 }}{{ $x }}", {"A": 1}) == "12"
    # assignment inside range updates the outer variable
    assert r("{{ $last := 0 }}{{ range .L }}{{ $last = . }}{{ end }}{{ $last }}", {"L": [3, 4]}) == "4"
    # a declaration inside a block ends with it
    assert 'undefined variable "$y"' in parse_error("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")
    assert r("{{ if $v := .A }}{{ $v }}{{ else }}none{{ end }}", {"A": "set"}) == "set"
    assert r("{{ $m := .M }}{{ $m.K }}", {"M": {"K": "v"}}) == "v"
    assert "can't evaluate field Y in type int" in exec_error("{{ $x := 1 }}{{ $x.Y }}")


def test_pipelines_and_parentheses() -> None:
    assert r('{{ .A | printf "%s!" }}', {"A": "hi"}) == "hi!"
    assert r('{{ "abc" | len }}') == "3"
    assert r('{{ "a" | printf "%s-%s" "b" }}') == "b-a"
    assert r("{{ (index .L 0).Name }}", {"L": [{"Name": "first"}]}) == "first"
    assert r("{{ len (slice .L 1) }}", {"L": [1, 2, 3]}) == "2"
    assert r("{{ eq (len .L) 3 }}", {"L": [1, 2, 3]}) == "true"


# ---------------------------------------------------------------------------- literals and printing


def test_literals() -> None:
    assert r('{{ "tab\\there\\n\\u00e9\\x41" }}') == "tab\there\néA"
    assert r("{{ `raw \\n {{ }}` }}") == "raw \\n {{ }}"
    assert r("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 0b101 }} {{ 1_000 }}") == "42 -7 31 15 15 5 1000"
    assert r("{{ 1.5 }} {{ 1e3 }} {{ .5 }} {{ 'a' }} {{ true }} {{ false }}") == "1.5 1000 0.5 97 true false"


def test_go_value_printing() -> None:
    data = {"L": [1, "a", None, True], "M": {"b": 2, "a": [1]}, "F": [1000000.0, 123456.0, 0.0001, 0.00001, 2.0]}
    assert r("{{ .L }}", data) == "[1 a <nil> true]"
    assert r("{{ .M }}", data) == "map[a:[1] b:2]"
    assert r("{{ range .F }}{{ . }} {{ end }}", data) == "1e+06 123456 0.0001 1e-05 2 "


def test_truthiness() -> None:
    tmpl = "{{ range .V }}{{ if . }}T{{ else }}F{{ end }}{{ end }}"
    assert r(tmpl, {"V": [0, 0.0, "", [], {}, None, False, 1, "x", [0], {"k": 0}, True, -1.5]}) == "FFFFFFFTTTTTT"


# ---------------------------------------------------------------------------- control structures


def test_if_else_chain() -> None:
    tmpl = '{{ if eq .R "a" }}A{{ else if eq .R "b" "c" }}BC{{ else }}other{{ end }}'
    assert [r(tmpl, {"R": x}) for x in "abcz"] == ["A", "BC", "BC", "other"]


def test_with_else_and_else_with() -> None:
    tmpl = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    assert r(tmpl, {"A": 1}) == "a=1"
    assert r(tmpl, {"B": 2}) == "b=2"
    assert r(tmpl, {}) == "none"


def test_range_forms() -> None:
    assert r("{{ range $i, $x := .L }}{{ $i }}={{ $x }};{{ end }}", {"L": ["a", "b"]}) == "0=a;1=b;"
    assert r("{{ range $x := .L }}{{ $x }}{{ end }}", {"L": ["a", "b"]}) == "ab"
    assert r("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", {"M": {"z": 1, "a": 2}}) == "a=2;z=1;"
    assert r("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}) == "empty"
    assert r("{{ range .Missing }}x{{ else }}empty{{ end }}", {}) == "empty"
    assert r("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert r("{{ range .L }}{{ range . }}{{ . }}{{ end }}|{{ end }}", {"L": [[1, 2], [3]]}) == "12|3|"


def test_range_break_continue() -> None:
    tmpl = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert r(tmpl, {"L": [1, 2, 3, 4, 5]}) == "13"
    assert "{{break}} outside {{range}}" in parse_error("{{ break }}")


def test_last_element_idiom_from_ollama_templates() -> None:
    tmpl = "{{ range $i, $_ := .L }}{{ $last := eq (len (slice $.L $i)) 1 }}{{ . }}{{ if not $last }},{{ end }}{{ end }}"
    assert r(tmpl, {"L": ["a", "b", "c"]}) == "a,b,c"


# ---------------------------------------------------------------------------- functions


def test_logic_functions_short_circuit() -> None:
    data = {"L": []}
    assert r("{{ and 1 0 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 \"x\" }} {{ not 0 }}") == "0 2  x true"
    # the second operand would fail if evaluated
    assert r("{{ or 1 (index .L 5) }} {{ and 0 (index .L 5) }}", data) == "1 0"


def test_comparisons() -> None:
    assert r("{{ eq 1 1 }} {{ eq 1 2 3 1 }} {{ ne \"a\" \"b\" }} {{ eq .X nil }}", {"X": None}) == "true true true true"
    assert r("{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge \"b\" \"a\" }} {{ eq 2 2.0 }}") == "true true false true true"
    assert "incompatible types for comparison" in exec_error('{{ eq 1 "1" }}')
    assert "missing argument for comparison" in exec_error("{{ eq 1 }}")


def test_len_index_slice() -> None:
    data = {"L": [10, 20, 30], "M": {"k": "v"}, "S": "héllo"}
    assert r("{{ len .L }} {{ len .M }} {{ len .S }}", data) == "3 1 6"  # Go counts bytes
    assert r('{{ index .L 1 }} {{ index .M "k" }} [{{ index .M "nope" }}]', data) == "20 v []"
    assert r("{{ slice .L 1 }} {{ slice .L 0 2 }} {{ slice .L }}", data) == "[20 30] [10 20] [10 20 30]"
    assert r('{{ slice "abcdef" 1 3 }}') == "bc"
    assert "index out of range: 5" in exec_error("{{ index .L 5 }}", data)
    assert "invalid slice index" in exec_error("{{ slice .L 2 1 }}", data)


def test_print_functions() -> None:
    assert r('{{ print 1 2 "a" "b" 3 }}') == "1 2ab3"
    assert r('{{ println "a" 1 }}') == "a 1\n"
    assert r('{{ printf "%s|%d|%v|%q|%t|%.2f|%5s|%-3d|%x|%%" "s" 7 .L "q" true 3.14159 "r" 1 255 }}', {"L": [1]}) == (
        's|7|[1]|"q"|true|3.14|    r|1  |ff|%'
    )
    assert r('{{ printf "%d" }}') == "%!d(MISSING)"
    assert r('{{ printf "x" 1 }}') == "x%!(EXTRA int=1)"


def test_json_function_matches_go() -> None:
    data = {"V": {"b": [1, 2.0, 0.5, 1e21, 1e-7], "a": None, "c": "<tag> & \"q\"\n", "d": True}}
    assert r("{{ json .V }}", data) == (
        '{"a":null,"b":[1,2,0.5,1e+21,1e-7],"c":"\\u003ctag\\u003e \\u0026 \\"q\\"\\n","d":true}'
    )
    assert r('{{ json "é" }}') == '"é"'


def test_current_date() -> None:
    out = r("{{ currentDate }}")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out)
    assert out == datetime.date.today().strftime("%Y-%m-%d")


def test_custom_functions() -> None:
    assert r("{{ shout .X }}", {"X": "hi"}, shout=lambda s: s.upper() + "!") == "HI!"
    assert r("{{ print zero }}", zero=lambda: 0) == "0"


def test_html_js_urlquery_functions() -> None:
    # text/template's HTMLEscapeString, JSEscapeString and url.QueryEscape
    assert r('{{ html .S }}', {"S": "<a href=\"x\">'&'</a>\x00"}) == (
        "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;\ufffd")
    assert r('{{ js .S }}', {"S": "\"it's\" <b>=&\\\n\té\u2028"}) == (
        '\\"it\\\'s\\" \\u003Cb\\u003E\\u003D\\u0026\\\\\\u000A\\u0009é\\u2028')
    assert r('{{ urlquery "a b&c=d/é~-_." }}') == "a+b%26c%3Dd%2F%C3%A9~-_."
    # several arguments (or a non-string) go through fmt.Sprint first; a pipeline feeds the last
    assert r('{{ html "<" 1 2 }}') == "&lt;1 2"
    assert r('{{ .L | urlquery }}', {"L": [1, 2]}) == "%5B1+2%5D"
    assert r('{{ html }}') == ""


def test_call_function() -> None:
    data = {"Mul": lambda a, b: a * b, "Hi": lambda: "hi", "N": 1, "Nil": None}
    assert r("{{ call .Mul 6 7 }}", data) == "42"
    assert r("{{ call .Hi | printf \"%s!\" }}", data) == "hi!"
    assert "non-function of type int" in exec_error("{{ call .N }}", data)
    assert "call of nil" in exec_error("{{ call .Nil }}", data)
    assert "want at least 1" in exec_error("{{ call }}", data)


def test_printf_type_verb() -> None:
    data = {"L": [1], "M": {"a": 1}, "F": 1.5, "S": Struct({"A": 1})}
    assert r('{{ printf "%T %T %T %T %T %T" 1 "s" true .F .L .M }}', data) == (
        "int string bool float64 []interface {} map[string]interface {}")
    assert r('{{ printf "%T|%T" nil .Missing }}', data) == "<nil>|<nil>"
    assert r('{{ printf "%T" .S }}', data) == "struct {}"

    class Tools(list):
        __go_type__ = "template.templateTools"

    assert r('{{ printf "%T" .T }}', {"T": Tools()}) == "template.templateTools"
    assert r('{{ printf "%T" .T }}', {"T": NilSlice("null", "template.templateTools")}) == "template.templateTools"


def test_printf_star_width() -> None:
    # Granite 3.2's document counter: len (printf "a%*s" $n "") is n + 1
    assert r('{{ len (printf "a%*s" 3 "") }}') == "4"
    assert r('{{ printf "[%*d|%-*d|%.*f]" 4 7 3 7 2 3.14159 }}') == "[   7|7  |3.14]"
    assert r('{{ printf "%*d" -3 7 }}') == "7  "
    assert r('{{ printf "%*s" "x" "y" }}') == "%!(BADWIDTH)y"
    assert r('{{ printf "%.*f" -1 2.5 }}') == "%!(BADPREC)2.500000"
    tmpl = ('{{- $n := 0 }}{{- range .L }}{{- $n = len (printf "a%*s" $n "") }}{{- end }}{{ $n }}')
    assert r(tmpl, {"L": [1, 2, 3]}) == "3"


def test_typed_nils_print_like_go() -> None:
    # a nil []T prints [] and a nil map map[]; Ollama's templateTools.String() gives null for nil,
    # templateProperties.String() {} -- all marshal as null and are empty/false
    data = {
        "Tools": NilSlice("null"), "Props": NilMap("{}"), "S": NilSlice(), "M": NilMap(),
        "P": Struct({"Type": "object", "Properties": NilMap("{}")}, {"Type": "type", "Properties": "properties"}),
    }
    assert r("{{ .Tools }}|{{ .Props }}|{{ .S }}|{{ .M }}", data) == "null|{}|[]|map[]"
    assert r("{{ json .Tools }}|{{ json .P }}", data) == 'null|{"type":"object","properties":null}'
    assert r("{{ if .Tools }}y{{ else }}n{{ end }}{{ len .Props }}{{ range .S }}x{{ else }}e{{ end }}", data) == "n0e"
    assert r("{{ print .Tools .M }}", data) == "null map[]"
    assert r("{{ .P.Properties }}", data) == "{}"


def test_parse_any_func_for_inspection() -> None:
    tmpl = parse("{{ if .ToolCalls }}<tag>{{ nosuch .ToolCalls }}{{ end }}", any_func=True)
    assert tmpl.root.nodes[0].list.nodes[0].text == "<tag>"
    with pytest.raises(TemplateError, match='function "nosuch" not defined'):
        tmpl.execute({"ToolCalls": [1]})


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ .X ", "unclosed action"),
        ("{{ if .X }}never closed", "unexpected EOF"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ nosuch .X }}", 'function "nosuch" not defined'),
        ("{{ $nope }}", 'undefined variable "$nope"'),
        ("{{ $a, $b := .X }}", "too many declarations in command"),
        ("{{ .X | 3 }}", "non executable command in pipeline stage 2"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{ }}", "missing value for command"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ `abc }}", "unterminated raw quoted string"),
        ("{{ (.X }}", "unclosed left paren"),
        ("{{ .X) }}", "unexpected right paren"),
        ("{{ 12ab }}", "bad number syntax"),
        ("{{ range .L }}{{ else if .X }}{{ end }}", "unexpected <if>"),
        ("{{ define \"x\" }}{{ end }}", "not supported"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    assert message in parse_error(text)


def test_error_position_and_type() -> None:
    with pytest.raises(ValueError) as e:
        parse("line one\n  {{ .A }} {{ nosuch }}")
    err = e.value
    assert isinstance(err, TemplateError)
    assert (err.line, err.col) == (2, 15)
    assert str(err).startswith("template:2:15: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{{ "x" 1 }}', "can't give argument to non-function"),
        ("{{ .A .B }}", "can't give argument to non-function"),
        ("{{ nil }}", "nil is not a command"),
        ("{{ len 3 }}", "error calling len"),
        ('{{ range "abc" }}{{ end }}', "range can't iterate over abc"),
    ],
)
def test_exec_errors(text: str, message: str) -> None:
    assert message in exec_error(text, {"A": 1, "B": 2})
