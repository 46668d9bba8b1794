"""The subset of Go's text/template that Ollama model templates use, in pure Python.

Pipeline: ``_lex`` turns the source into tokens, ``_Parser`` builds a small node tree
(the node classes mirror Go's ``text/template/parse``), ``_Exec`` walks it.

Data model: ``dict`` is a Go map (``.Key`` looks up a key, ``range`` walks sorted keys),
``list``/``tuple`` a slice, ``None`` nil, and :class:`Struct` a Go struct (ordered fields with
optional ``json`` tags).  A value may define ``__go_str__()`` (a Go ``String()`` method, used when
printing), ``__go_json__()`` (a ``MarshalJSON``, used by the ``json`` function) and
``__go_type__`` (its Go type name, for ``printf "%T"``).  :class:`NilSlice` and :class:`NilMap`
are typed nils: empty like ``[]``/``{}``, but printed and marshalled as Go prints a nil of
their type (``[]``/``map[]``, or what the type's ``String()`` returns; ``null`` in JSON).

Deliberate differences from Go:
* a missing map key or struct field, or a field of nil, yields nil, and nil printed by an
  action renders as the empty string (Go prints ``<no value>`` or fails);
* int and float compare numerically in ``eq``/``lt``/... (Go reports incompatible types);
* ``define``/``template``/``block`` are not supported.
"""

from __future__ import annotations

import datetime
import json
import operator
import re
import urllib.parse
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Callable

__all__ = [
    "TemplateError", "Template", "Struct", "NilSlice", "NilMap", "parse", "go_json", "go_sprint",
    "go_type", "truth", "BUILTINS",
    "Node", "TextNode", "ListNode", "PipeNode", "CommandNode", "ActionNode", "BranchNode", "IfNode",
    "WithNode", "RangeNode", "BreakNode", "ContinueNode", "FieldNode", "VariableNode", "ChainNode",
    "IdentifierNode", "DotNode", "NilNode", "LiteralNode",
]


class TemplateError(ValueError):
    """A template failed to parse or to execute; ``line``/``col`` locate it in the source."""

    def __init__(self, message: str, source: str = "", pos: int | None = None) -> None:
        self.line: int | None = None
        self.col: int | None = None
        if pos is not None:
            self.line = source.count("\n", 0, pos) + 1
            self.col = pos - (source.rfind("\n", 0, pos) + 1) + 1
            message = f"template:{self.line}:{self.col}: {message}"
        else:
            message = f"template: {message}"
        super().__init__(message)


class Struct:
    """A Go struct value: named fields in declaration order, with optional ``json`` tags."""

    __slots__ = ("fields", "tags")

    def __init__(self, fields: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        self.fields = fields
        self.tags = tags or {}

    def __go_json__(self) -> str:
        parts = []
        for name, value in self.fields.items():
            key, _, opts = self.tags.get(name, name).partition(",")
            if key == "-" or ("omitempty" in opts.split(",") and _is_empty(value)):
                continue
            parts.append(_json_str(key or name) + ":" + go_json(value))
        return "{" + ",".join(parts) + "}"

    def __repr__(self) -> str:
        return f"Struct({self.fields!r})"


class NilSlice(list):
    """A nil Go slice: ranges, tests and counts as empty; prints ``text`` (Go's ``[]`` unless
    the type has a ``String()`` method, e.g. Ollama's ``templateTools`` prints ``null``);
    marshals as ``null``."""

    def __init__(self, text: str = "[]", go_type: str = "[]interface {}") -> None:
        super().__init__()
        self._text, self.__go_type__ = text, go_type

    def __go_str__(self) -> str:
        return self._text

    def __go_json__(self) -> str:
        return "null"

    def __go_empty__(self) -> bool:
        return True


class NilMap(dict):
    """A nil Go map: like :class:`NilSlice`; Go prints ``map[]`` unless the type has a
    ``String()`` method (Ollama's ``templateProperties``/``templateArgs`` print ``{}``)."""

    def __init__(self, text: str = "map[]", go_type: str = "map[string]interface {}") -> None:
        super().__init__()
        self._text, self.__go_type__ = text, go_type

    def __go_str__(self) -> str:
        return self._text

    def __go_json__(self) -> str:
        return "null"

    def __go_empty__(self) -> bool:
        return True


# ---------------------------------------------------------------------------- values


def truth(v: Any) -> bool:
    """Go template truthiness: false, 0, nil and empty string/slice/map are false."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _is_empty(v: Any) -> bool:
    """encoding/json's ``omitempty`` test."""
    if hasattr(v, "__go_empty__"):
        return v.__go_empty__()
    return v is None or (not isinstance(v, Struct) and not truth(v))


def go_type(v: Any) -> str:
    """The Go type name ``%T`` prints for a value (JSON data decodes to interface{} values)."""
    named = getattr(v, "__go_type__", None)
    if isinstance(named, str):
        return named
    if v is None:
        return "<nil>"
    for t, name in ((bool, "bool"), (int, "int"), (float, "float64"), (str, "string")):
        if isinstance(v, t):
            return name
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, Struct):
        return "struct {}"
    if callable(v):
        return "func(...interface {}) interface {}"
    return type(v).__name__


_go_type = go_type


def _float_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |f| and the decimal point position."""
    sign, digits, exp = Decimal(repr(abs(f))).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    dp = len(digits) + int(exp) if ds != "0" else 1
    return ds, dp


def _fmt_e(ds: str, dp: int) -> str:
    exp = dp - 1
    mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    return f"{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def _fmt_f(ds: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * -dp + ds
    if dp >= len(ds):
        return ds + "0" * (dp - len(ds))
    return ds[:dp] + "." + ds[dp:]


def _special_float(f: float) -> str | None:
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    return None


def _go_float(f: float) -> str:
    """fmt's %v for float64 (strconv 'g', shortest)."""
    special = _special_float(f)
    if special:
        return special
    ds, dp = _float_digits(f)
    sign = "-" if str(f).startswith("-") else ""
    exp = dp - 1
    return sign + (_fmt_e(ds, dp) if exp < -4 or exp >= 6 else _fmt_f(ds, dp))


def _json_float(f: float) -> str:
    """encoding/json's float64 form (``1`` not ``1.0``; exponent only outside [1e-6, 1e21))."""
    if _special_float(f):
        raise TemplateError(f"json: unsupported value: {_go_float(f)}")
    ds, dp = _float_digits(f)
    sign = "-" if str(f).startswith("-") else ""
    if f != 0 and (abs(f) < 1e-6 or abs(f) >= 1e21):
        return sign + re.sub(r"e([+-])0(\d)$", r"e\1\2", _fmt_e(ds, dp))
    return sign + _fmt_f(ds, dp)


_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_str(s: str) -> str:
    """encoding/json string form, including its HTML-safe escaping of < > &."""
    out = json.dumps(s, ensure_ascii=False)
    out = re.sub(r"[<>&\u2028\u2029]", lambda m: _HTML_ESCAPES[m.group()], out)
    return re.sub(r"[\ud800-\udfff]", "\ufffd", out)


def go_json(v: Any) -> str:
    """Marshal like Go's json.Marshal: maps with sorted keys, structs in field order."""
    if hasattr(v, "__go_json__"):
        return v.__go_json__()
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: str(kv[0]))
        return "{" + ",".join(_json_str(str(k)) + ":" + go_json(x) for k, x in items) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    raise TemplateError(f"json: unsupported type: {_go_type(v)}")


def go_sprint(v: Any) -> str:
    """fmt's %v: ``[a b]`` for slices, ``map[k:v]`` for maps, ``{a b}`` for structs."""
    if hasattr(v, "__go_str__"):
        return v.__go_str__()
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_sprint(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=str)
        return "map[" + " ".join(f"{go_sprint(k)}:{go_sprint(v[k])}" for k in keys) + "]"
    if isinstance(v, Struct):
        return "{" + " ".join(go_sprint(x) for x in v.fields.values()) + "}"
    return str(v)


# ---------------------------------------------------------------------------- functions

_MISSING_ARG = object()


def _num_kind(v: Any) -> str | None:
    if v is None:
        return "nil"
    for t, name in ((bool, "bool"), (int, "number"), (float, "number"), (str, "string")):
        if isinstance(v, t):
            return name
    return None


def _equal(a: Any, b: Any) -> bool:
    ka, kb = _num_kind(a), _num_kind(b)
    if ka is None or kb is None:
        if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
            raise ValueError("non-comparable types")
        return a is b or (a is not None and b is not None and a == b)
    if ka != kb:
        if "nil" in (ka, kb):
            return False
        raise ValueError("incompatible types for comparison")
    return a == b


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise ValueError("missing argument for comparison")
    return any(_equal(a, b) for b in others)


def _ne(a: Any, b: Any) -> bool:
    return not _equal(a, b)


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """lt/le/gt/ge: numbers with numbers, strings with strings."""

    def compare(a: Any, b: Any) -> bool:
        ka, kb = _num_kind(a), _num_kind(b)
        if ka not in ("number", "string") or kb not in ("number", "string"):
            raise ValueError("invalid type for comparison")
        if ka != kb:
            raise ValueError("incompatible types for comparison")
        return op(a, b)

    return compare


def _len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())  # Go counts bytes
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    raise ValueError(f"len of type {_go_type(v)}")


def _int_arg(i: Any) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, float)) or int(i) != i:
        raise ValueError(f"cannot index slice/array with type {_go_type(i)}")
    return int(i)


def _index(item: Any, *indexes: Any) -> Any:
    for idx in indexes:
        if item is None:
            raise ValueError("index of untyped nil")
        if isinstance(item, dict):
            item = item.get(idx)
        elif isinstance(item, (list, tuple, str)):
            seq = item.encode() if isinstance(item, str) else item
            i = _int_arg(idx)
            if not 0 <= i < len(seq):
                raise ValueError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise ValueError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise ValueError(f"can't slice item of type {_go_type(item)}")
    if len(indexes) > 3 or (isinstance(item, str) and len(indexes) > 2):
        raise ValueError("too many slice indexes")
    seq: Any = item.encode() if isinstance(item, str) else item
    idx = [_int_arg(i) for i in indexes]
    for i in idx:
        if not 0 <= i <= len(seq):
            raise ValueError(f"index out of range: {i}")
    lo, hi = (idx + [0, len(seq)][len(idx):])[:2]
    if lo > hi:
        raise ValueError(f"invalid slice index: {lo} > {hi}")
    out = seq[lo:hi]
    return out.decode(errors="replace") if isinstance(item, str) else out


def _sprint(*args: Any) -> str:
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_sprint(a))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(go_sprint(a) for a in args) + "\n"


def _go_quote(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x80 else f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d*|\*))?([a-zA-Z%])")


def _sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the common verbs (v s q d t f e g x X c %)."""
    argi = 0

    def star() -> str | None:
        """A ``*`` width/precision: the next argument, an int (else Go's BADWIDTH/BADPREC)."""
        nonlocal argi
        if argi < len(args) and isinstance(args[argi], int) and not isinstance(args[argi], bool):
            argi += 1
            return str(args[argi - 1])
        argi += argi < len(args)
        return None

    def one(m: re.Match[str]) -> str:
        nonlocal argi
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        bad = ""
        if width == "*":
            width = star()
            if width is None:
                bad += "%!(BADWIDTH)"
            elif width.startswith("-"):
                flags, width = flags + "-", width[1:]
        if prec == "*":
            prec = star()
            if prec is None or prec.startswith("-"):  # Go: a negative precision is bad too
                bad += "%!(BADPREC)"
                prec = None
        if argi >= len(args):
            return f"{bad}%!{verb}(MISSING)"
        a = args[argi]
        argi += 1
        p = int(prec) if prec else (0 if prec == "" else None)
        if verb == "T":
            s = go_type(a)
        elif verb == "v":
            s = go_sprint(a)
        elif verb == "s" and not isinstance(a, (bool, int, float)):
            s = go_sprint(a)[:p] if p is not None else go_sprint(a)
        elif verb == "q" and isinstance(a, str):
            s = _go_quote(a)
        elif verb == "t" and isinstance(a, bool):
            s = go_sprint(a)
        elif verb in "dxXc" and isinstance(a, int) and not isinstance(a, bool):
            s = {"d": str, "x": lambda n: format(n, "x"), "X": lambda n: format(n, "X"), "c": chr}[verb](a)
            s = ("+" + s if "+" in flags and a >= 0 and verb == "d" else s)
        elif verb in "xX" and isinstance(a, str):
            s = a.encode().hex() if verb == "x" else a.encode().hex().upper()
        elif verb in "feEgG" and isinstance(a, (int, float)) and not isinstance(a, bool):
            if verb in "gG" and p is None:
                s = _go_float(float(a))
            else:
                s = format(float(a), ("+" if "+" in flags else "") + f".{6 if p is None else p}{verb}")
        else:
            s = f"%!{verb}({_go_type(a)}={go_sprint(a)})"
        if width and len(s) < int(width):
            pad = int(width) - len(s)
            if "-" in flags:
                s = s + " " * pad
            elif "0" in flags and verb in "dfeEgGxX" and not isinstance(a, str):
                sign = s[0] if s[:1] in "+-" else ""
                s = sign + "0" * pad + s[len(sign):]
            else:
                s = " " * pad + s
        return bad + s

    out = _VERB.sub(one, fmt)
    if argi < len(args):
        extra = ", ".join(f"{_go_type(a)}={go_sprint(a)}" for a in args[argi:])
        out += f"%!(EXTRA {extra})"
    return out


def _json(v: Any) -> str:
    """Ollama's ``json`` helper: json.Marshal, with "" for unencodable values (NaN, Inf)."""
    try:
        return go_json(v)
    except TemplateError:
        return ""


def _eval_args(args: tuple[Any, ...]) -> str:
    """text/template's evalArgs: a lone string as is, else fmt.Sprint of the arguments."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(*args)


_HTML_ESC = {"\0": "\ufffd", '"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
_JS_ESC = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026",
           "=": "\\u003D"}


def _html(*args: Any) -> str:
    """Go's ``html``: template.HTMLEscapeString of the arguments."""
    return re.sub("[\0\"'&<>]", lambda m: _HTML_ESC[m.group()], _eval_args(args))


def _js_char(ch: str) -> str:
    if ch in _JS_ESC:
        return _JS_ESC[ch]
    if ch < " ":
        return f"\\u00{ord(ch):02X}"
    return ch if ch.isprintable() else f"\\u{ord(ch):04X}"


def _js(*args: Any) -> str:
    """Go's ``js``: template.JSEscapeString of the arguments."""
    return "".join(_js_char(ch) if ch in _JS_ESC or ch < " " or ch >= "\x80" else ch for ch in _eval_args(args))


def _urlquery(*args: Any) -> str:
    """Go's ``urlquery``: url.QueryEscape of the arguments."""
    return urllib.parse.quote_plus(_eval_args(args), safe="")


def _call(fn: Any = _MISSING_ARG, *args: Any) -> Any:
    """Go's ``call``: call a function value (a Python callable in the data) with the arguments."""
    if fn is _MISSING_ARG:
        raise ValueError("wrong number of args for call: want at least 1 got 0")
    if fn is None:
        raise ValueError("call of nil")
    if not callable(fn) or isinstance(fn, type):
        raise ValueError(f"non-function of type {go_type(fn)}")
    return fn(*args)


def _current_date(*_args: Any) -> str:
    return datetime.date.today().strftime("%Y-%m-%d")


def _yesterday_date(*_args: Any) -> str:
    return (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


def _and(*args: Any) -> Any:  # evaluated lazily by the executor; this is the eager fallback
    for a in args[:-1]:
        if not truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args[:-1]:
        if truth(a):
            return a
    return args[-1]


BUILTINS: dict[str, Callable[..., Any]] = {
    "and": _and, "or": _or, "not": lambda a: not truth(a),
    "eq": _eq, "ne": _ne, "lt": _ordered(operator.lt), "le": _ordered(operator.le),
    "gt": _ordered(operator.gt), "ge": _ordered(operator.ge),
    "len": _len, "index": _index, "slice": _slice,
    "print": _sprint, "printf": _sprintf, "println": _sprintln,
    "html": _html, "js": _js, "urlquery": _urlquery, "call": _call,
    "json": _json, "currentDate": _current_date, "yesterdayDate": _yesterday_date,
}


# ---------------------------------------------------------------------------- nodes


@dataclass
class Node:
    pos: int


@dataclass
class TextNode(Node):
    text: str


@dataclass
class ListNode(Node):
    nodes: list[Node]


@dataclass
class CommandNode(Node):
    args: list[Node]


@dataclass
class PipeNode(Node):
    decl: list[str]
    is_assign: bool
    cmds: list[CommandNode]


@dataclass
class ActionNode(Node):
    pipe: PipeNode


@dataclass
class BranchNode(Node):
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None


class IfNode(BranchNode):
    pass


class WithNode(BranchNode):
    pass


class RangeNode(BranchNode):
    pass


@dataclass
class BreakNode(Node):
    pass


@dataclass
class ContinueNode(Node):
    pass


@dataclass
class FieldNode(Node):
    idents: list[str]  # .A.B -> ["A", "B"]


@dataclass
class VariableNode(Node):
    idents: list[str]  # $x.A -> ["$x", "A"]


@dataclass
class ChainNode(Node):
    node: Node  # (pipeline).A.B
    fields: list[str]


@dataclass
class IdentifierNode(Node):
    name: str  # a function name


@dataclass
class DotNode(Node):
    pass


@dataclass
class NilNode(Node):
    pass


@dataclass
class LiteralNode(Node):
    value: Any  # bool, int, float or str


@dataclass
class _End(Node):
    pass


@dataclass
class _Else(Node):
    pass


# ---------------------------------------------------------------------------- lexer


@dataclass
class _Tok:
    kind: str  # text ldelim rdelim space field dot var ident keyword literal nil pipe ( ) := = , eof
    val: Any
    pos: int


_SPACE = " \t\r\n"
_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)"
)
_CHAR = re.compile(r"'(\\(?:[0-7]{3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|[^\\'\n])'")
_SIMPLE_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "'": 39}


def _unquote(body: str) -> str:
    """Decode the escapes of a Go interpreted string literal (without its quotes)."""
    out, i = bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        e = body[i + 1] if i + 1 < len(body) else ""
        if e in _SIMPLE_ESC:
            out.append(_SIMPLE_ESC[e])
            i += 2
        elif e in "01234567" and e:
            out.append(int(body[i + 1:i + 4], 8) & 0xFF)
            i += 4
        elif e in ("x", "u", "U"):
            n = {"x": 2, "u": 4, "U": 8}[e]
            code = int(body[i + 2:i + 2 + n], 16)
            out += bytes([code]) if e == "x" else chr(code).encode(errors="replace")
            i += 2 + n
        else:
            raise ValueError(f"invalid escape \\{e}")
    return out.decode(errors="replace")


def _go_number(text: str) -> int | float:
    t = text.replace("_", "")
    sign = -1 if t.startswith("-") else 1
    t = t.lstrip("+-")
    low = t.lower()
    if low.startswith("0x") and ("." in low or "p" in low):
        return sign * float.fromhex(t)
    if low.startswith(("0x", "0o", "0b")):
        return sign * int(t, 0)
    if any(c in low for c in ".e"):
        return sign * float(t)
    if len(t) > 1 and t.startswith("0"):
        return sign * int(t, 8)
    return sign * int(t)


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalnum()


def _lex(src: str) -> list[_Tok]:
    """Tokenise a whole template; trim markers are applied here, comments dropped."""
    toks: list[_Tok] = []
    n, pos = len(src), 0

    def err(msg: str, at: int) -> TemplateError:
        return TemplateError(msg, src, at)

    def right_delim(p: int) -> tuple[int, bool] | None:
        if src.startswith("}}", p):
            return p + 2, False
        if p + 1 < n and src[p] in _SPACE and src.startswith("-}}", p + 1):
            return p + 4, True
        return None

    def skip_space(p: int) -> int:
        while p < n and src[p] in _SPACE:
            p += 1
        return p

    while pos < n:
        start = src.find("{{", pos)
        if start < 0:
            toks.append(_Tok("text", src[pos:], pos))
            break
        text = src[pos:start]
        trim = src.startswith("-", start + 2) and start + 3 < n and src[start + 3] in _SPACE
        if trim:
            text = text.rstrip(_SPACE)
        if text:
            toks.append(_Tok("text", text, pos))
        p = start + (4 if trim else 2)
        if src.startswith("/*", p):
            end = src.find("*/", p + 2)
            if end < 0:
                raise err("unclosed comment", start)
            rd = right_delim(end + 2)
            if rd is None:
                raise err("comment ends before closing delimiter", start)
            pos = skip_space(rd[0]) if rd[1] else rd[0]
            continue
        toks.append(_Tok("ldelim", "{{", start))
        depth = 0
        while True:
            if p >= n:
                raise err("unclosed action", start)
            rd = right_delim(p)
            if rd is not None:
                if depth:
                    raise err("unclosed left paren", p)
                toks.append(_Tok("rdelim", "}}", p))
                pos = skip_space(rd[0]) if rd[1] else rd[0]
                break
            c = src[p]
            if c in _SPACE:
                q = skip_space(p)
                if src.startswith("-}}", q):  # leave " -}}" for right_delim
                    q -= 1
                if q > p:
                    toks.append(_Tok("space", src[p:q], p))
                p = q
                continue
            if c in "|(),=":
                depth += {"(": 1, ")": -1}.get(c, 0)
                if depth < 0:
                    raise err("unexpected right paren", p)
                toks.append(_Tok("pipe" if c == "|" else c, c, p))
                p += 1
            elif c == ":":
                if not src.startswith(":=", p):
                    raise err("expected :=", p)
                toks.append(_Tok(":=", ":=", p))
                p += 2
            elif c == '"':
                q = p + 1
                while q < n and src[q] != '"':
                    if src[q] == "\n":
                        break
                    q += 2 if src[q] == "\\" else 1
                if q >= n or src[q] != '"':
                    raise err("unterminated quoted string", p)
                try:
                    toks.append(_Tok("literal", _unquote(src[p + 1:q]), p))
                except ValueError as e:
                    raise err(str(e), p) from None
                p = q + 1
            elif c == "`":
                q = src.find("`", p + 1)
                if q < 0:
                    raise err("unterminated raw quoted string", p)
                toks.append(_Tok("literal", src[p + 1:q].replace("\r", ""), p))
                p = q + 1
            elif c == "'":
                m = _CHAR.match(src, p)
                if not m:
                    raise err("unterminated character constant", p)
                try:
                    toks.append(_Tok("literal", ord(_unquote(m.group(1))[0]), p))
                except ValueError as e:
                    raise err(str(e), p) from None
                p = m.end()
            elif c in "$." or _is_alnum(c) and not c.isdigit():
                if c == "." and p + 1 < n and src[p + 1].isdigit():
                    m = _NUMBER.match(src, p)  # .5
                    assert m
                    toks.append(_Tok("literal", _go_number(m.group()), p))
                    p = m.end()
                    continue
                q = p + 1 if c in "$." else p
                while q < n and _is_alnum(src[q]):
                    q += 1
                word = src[p:q]
                if q < n and src[q] not in _SPACE + ".,|:)(=" and right_delim(q) is None:
                    raise err(f"bad character {src[q]!r}", q)
                if word == ".":
                    toks.append(_Tok("dot", word, p))
                elif c == ".":
                    toks.append(_Tok("field", word[1:], p))
                elif c == "$":
                    toks.append(_Tok("var", word, p))
                elif word in ("true", "false"):
                    toks.append(_Tok("literal", word == "true", p))
                elif word == "nil":
                    toks.append(_Tok("nil", word, p))
                else:
                    toks.append(_Tok("keyword" if word in _KEYWORDS else "ident", word, p))
                p = q
            elif c.isdigit() or c in "+-":
                m = _NUMBER.match(src, p)
                end = m.end() if m else p
                try:
                    if not m or (end < n and (_is_alnum(src[end]) or src[end] == ".")):
                        raise ValueError
                    toks.append(_Tok("literal", _go_number(m.group()), p))
                except ValueError:
                    raise err(f"bad number syntax: {src[p:end + 1]!r}", p) from None
                p = end
            else:
                raise err(f"unexpected {c!r} in action", p)
    toks.append(_Tok("eof", "", n))
    return toks


# ---------------------------------------------------------------------------- parser


def _describe(t: _Tok) -> str:
    if t.kind == "eof":
        return "EOF"
    if t.kind == "keyword":
        return f"<{t.val}>"
    return repr(t.val) if t.kind == "literal" else f'"{t.val}"'


class _Parser:
    def __init__(self, src: str, funcs: dict[str, Callable[..., Any]]) -> None:
        self.src, self.funcs = src, funcs
        self.toks = _lex(src)
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def error(self, msg: str, pos: int) -> TemplateError:
        return TemplateError(msg, self.src, pos)

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        self.i += 1
        return self.toks[self.i - 1]

    def next_ns(self) -> _Tok:
        while self.toks[self.i].kind == "space":
            self.i += 1
        return self.next()

    def peek_ns(self) -> _Tok:
        t = self.next_ns()
        self.i -= 1
        return t

    def expect(self, kind: str, context: str) -> _Tok:
        t = self.next_ns()
        if t.kind != kind:
            raise self.error(f"unexpected {_describe(t)} in {context}", t.pos)
        return t

    def parse(self) -> ListNode:
        root = ListNode(0, [])
        while self.peek().kind != "eof":
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                raise self.error(f"unexpected {{{{{'end' if isinstance(n, _End) else 'else'}}}}}", n.pos)
            root.nodes.append(n)
        return root

    def item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self.peek().pos, [])
        while self.peek_ns().kind != "eof":
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                return lst, n
            lst.nodes.append(n)
        raise self.error("unexpected EOF", len(self.src))

    def text_or_action(self) -> Node:
        t = self.next_ns()
        if t.kind == "text":
            return TextNode(t.pos, t.val)
        if t.kind == "ldelim":
            return self.action()
        raise self.error(f"unexpected {_describe(t)} in input", t.pos)

    def action(self) -> Node:
        t = self.next_ns()
        if t.kind == "keyword":
            kw = t.val
            if kw in ("define", "template", "block"):
                raise self.error(f"{{{{{kw}}}}} is not supported", t.pos)
            if kw in ("break", "continue"):
                self.expect("rdelim", f"{{{{{kw}}}}}")
                if not self.range_depth:
                    raise self.error(f"{{{{{kw}}}}} outside {{{{range}}}}", t.pos)
                return BreakNode(t.pos) if kw == "break" else ContinueNode(t.pos)
            if kw == "else":
                nxt = self.peek_ns()
                if nxt.kind == "keyword" and nxt.val in ("if", "with"):
                    return _Else(t.pos)
                self.expect("rdelim", "else")
                return _Else(t.pos)
            if kw == "end":
                self.expect("rdelim", "end")
                return _End(t.pos)
            return self.control(kw, t.pos)
        self.i -= 1
        return ActionNode(t.pos, self.pipeline("command", "rdelim"))

    def control(self, context: str, pos: int) -> BranchNode:
        cls = {"if": IfNode, "with": WithNode, "range": RangeNode}[context]
        nvars = len(self.vars)
        try:
            pipe = self.pipeline(context, "rdelim")
            self.range_depth += context == "range"
            lst, nxt = self.item_list()
            self.range_depth -= context == "range"
            else_list = None
            if isinstance(nxt, _Else):
                t = self.peek()
                if context in ("if", "with") and t.kind == "keyword" and t.val == context:
                    self.next()  # "else if" / "else with" == else + nested control without its own end
                    else_list = ListNode(nxt.pos, [self.control(context, t.pos)])
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, _End):
                        raise self.error("expected end; found {{else}}", nxt.pos)
            return cls(pos, pipe, lst, else_list)
        finally:
            del self.vars[nvars:]

    def pipeline(self, context: str, end: str) -> PipeNode:
        start = self.peek_ns()
        pipe = PipeNode(start.pos, [], False, [])
        while self.peek_ns().kind == "var":
            mark = self.i
            v = self.next()
            nxt = self.peek_ns()
            if nxt.kind in (":=", "="):
                self.next_ns()
                pipe.is_assign = nxt.kind == "="
                pipe.decl.append(v.val)
                self.vars.append(v.val)
                break
            if nxt.kind == ",":
                self.next_ns()
                pipe.decl.append(v.val)
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_ns().kind in ("var", "rdelim", ")"):
                        continue
                    raise self.error("range can only initialize variables", nxt.pos)
                raise self.error(f"too many declarations in {context}", nxt.pos)
            self.i = mark
            break
        while True:
            t = self.next_ns()
            if t.kind == end:
                if not pipe.cmds:
                    raise self.error(f"missing value for {context}", t.pos)
                for stage, cmd in enumerate(pipe.cmds[1:], 2):
                    if isinstance(cmd.args[0], (LiteralNode, DotNode, NilNode)):
                        raise self.error(f"non executable command in pipeline stage {stage}", cmd.pos)
                return pipe
            if t.kind in ("literal", "dot", "field", "ident", "nil", "var", "("):
                self.i -= 1
                pipe.cmds.append(self.command())
            else:
                raise self.error(f"unexpected {_describe(t)} in {context}", t.pos)

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_ns().pos, [])
        while True:
            self.peek_ns()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            t = self.next()
            if t.kind == "space":
                continue
            if t.kind in ("rdelim", ")"):
                self.i -= 1
            elif t.kind != "pipe":
                raise self.error(f"unexpected {_describe(t)} in operand", t.pos)
            break
        if not cmd.args:
            raise self.error("empty command", cmd.pos)
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        fields = []
        while self.peek().kind == "field":
            fields.append(self.next().val)
        if isinstance(node, FieldNode):
            return FieldNode(node.pos, node.idents + fields)
        if isinstance(node, VariableNode):
            return VariableNode(node.pos, node.idents + fields)
        if isinstance(node, (LiteralNode, NilNode, DotNode)):
            raise self.error("unexpected . after term", node.pos)
        return ChainNode(node.pos, node, fields)

    def term(self) -> Node | None:
        t = self.next_ns()
        if t.kind == "ident":
            if t.val not in self.funcs:
                raise self.error(f'function "{t.val}" not defined', t.pos)
            return IdentifierNode(t.pos, t.val)
        if t.kind == "dot":
            return DotNode(t.pos)
        if t.kind == "nil":
            return NilNode(t.pos)
        if t.kind == "var":
            if t.val not in self.vars:
                raise self.error(f'undefined variable "{t.val}"', t.pos)
            return VariableNode(t.pos, [t.val])
        if t.kind == "field":
            return FieldNode(t.pos, [t.val])
        if t.kind == "literal":
            return LiteralNode(t.pos, t.val)
        if t.kind == "(":
            return self.pipeline("parenthesized pipeline", ")")
        self.i -= 1
        return None


# ---------------------------------------------------------------------------- executor


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING = object()


class _Exec:
    def __init__(self, tmpl: Template, data: Any) -> None:
        self.src, self.funcs = tmpl.source, tmpl.funcs
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []

    def error(self, msg: str, node: Node) -> TemplateError:
        return TemplateError(msg, self.src, node.pos)

    def walk(self, dot: Any, node: Node) -> None:
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, ActionNode):
            value = self.eval_pipe(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append("" if value is None else go_sprint(value))
        elif isinstance(node, RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, BranchNode):
            mark = len(self.vars)
            value = self.eval_pipe(dot, node.pipe)
            if truth(value):
                self.walk(value if isinstance(node, WithNode) else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
            del self.vars[mark:]
        elif isinstance(node, BreakNode):
            raise _Break
        elif isinstance(node, ContinueNode):
            raise _Continue
        else:
            raise self.error(f"unknown node {type(node).__name__}", node)

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        mark = len(self.vars)
        value = self.eval_pipe(dot, replace(node.pipe, decl=[]))
        if value is None:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value, key=lambda k: (not isinstance(k, (int, float)), k))]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [(i, i) for i in range(value)]
        else:
            raise self.error(f"range can't iterate over {go_sprint(value)}", node)
        for key, elem in items:
            decl = node.pipe.decl
            if node.pipe.is_assign:
                for name, v in zip(decl, (key, elem) if len(decl) == 2 else (elem,)):
                    self.set_var(name, v, node)
            elif decl:
                self.vars += [[decl[0], key], [decl[1], elem]] if len(decl) == 2 else [[decl[0], elem]]
            try:
                self.walk(elem, node.list)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not items and node.else_list is not None:
            self.walk(dot, node.else_list)
        del self.vars[mark:]

    def set_var(self, name: str, value: Any, node: Node) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(f"undefined variable: {name}", node)

    def eval_pipe(self, dot: Any, pipe: PipeNode) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_cmd(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def eval_cmd(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, IdentifierNode):
            return self.call(dot, first, cmd.args[1:], final)
        if len(cmd.args) > 1 or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {self.describe(first)}", first)
        if isinstance(first, NilNode):
            raise self.error("nil is not a command", first)
        return self.eval_arg(dot, first)

    def eval_arg(self, dot: Any, node: Node) -> Any:
        if isinstance(node, FieldNode):
            return self.fields(dot, node.idents, node)
        if isinstance(node, VariableNode):
            for name, value in reversed(self.vars):
                if name == node.idents[0]:
                    return self.fields(value, node.idents[1:], node)
            raise self.error(f"undefined variable: {node.idents[0]}", node)
        if isinstance(node, ChainNode):
            return self.fields(self.eval_arg(dot, node.node), node.fields, node)
        if isinstance(node, PipeNode):
            return self.eval_pipe(dot, node)
        if isinstance(node, IdentifierNode):
            return self.call(dot, node, [], _MISSING)
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, LiteralNode):
            return node.value
        if isinstance(node, NilNode):
            return None
        raise self.error(f"can't evaluate {type(node).__name__}", node)

    def fields(self, value: Any, names: list[str], node: Node) -> Any:
        for name in names:
            if value is None:
                return None
            if isinstance(value, Struct):
                value = value.fields.get(name)
            elif isinstance(value, dict):
                value = value.get(name)
            else:
                raise self.error(f"can't evaluate field {name} in type {_go_type(value)}", node)
        return value

    def call(self, dot: Any, ident: IdentifierNode, args: list[Node], final: Any) -> Any:
        fn = self.funcs.get(ident.name)
        if fn is None:
            raise self.error(f'function "{ident.name}" not defined', ident)
        if fn is _and or fn is _or:  # short-circuit, like Go 1.18+
            nodes: list[Any] = list(args) + ([] if final is _MISSING else [final])
            if not nodes:
                raise self.error(f"wrong number of args for {ident.name}: want at least 1 got 0", ident)
            value = None
            for n in nodes:
                value = self.eval_arg(dot, n) if isinstance(n, Node) else n
                if truth(value) != (fn is _and):
                    break
            return value
        values = [self.eval_arg(dot, a) for a in args] + ([] if final is _MISSING else [final])
        try:
            return fn(*values)
        except TemplateError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
            raise self.error(f"error calling {ident.name}: {e}", ident) from None

    @staticmethod
    def describe(node: Node) -> str:
        if isinstance(node, FieldNode):
            return "." + ".".join(node.idents)
        if isinstance(node, VariableNode):
            return ".".join(node.idents)
        if isinstance(node, LiteralNode):
            return repr(node.value)
        return type(node).__name__.removesuffix("Node").lower()


# ---------------------------------------------------------------------------- API


class Template:
    """A parsed template; ``root`` may be edited (Ollama appends/cuts nodes)."""

    def __init__(self, root: ListNode, source: str = "", funcs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.root = root
        self.source = source
        self.funcs = funcs if funcs is not None else BUILTINS

    def execute(self, data: Any) -> str:
        ex = _Exec(self, data)
        ex.walk(data, self.root)
        return "".join(ex.out)


class _AnyFuncs(dict):
    def __contains__(self, name: object) -> bool:
        return True


def parse(text: str, funcs: dict[str, Callable[..., Any]] | None = None, *, any_func: bool = False) -> Template:
    """Parse ``text``; ``funcs`` adds to (or overrides) :data:`BUILTINS`.

    ``any_func``: accept calls of unknown functions too (to inspect a template's tree;
    executing such a call fails)."""
    all_funcs = {**BUILTINS, **(funcs or {})}
    parser_funcs = _AnyFuncs(all_funcs) if any_func else all_funcs
    return Template(_Parser(text, parser_funcs).parse(), text, all_funcs)
