r"""JSON Schema `pattern` (ECMA-262 regular expressions) -> GBNF for a JSON string's content.

Supported: literals and escapes, character classes (ranges, negation, \d \w \s and their
negations), ``.``, groups (plain, ``(?:``, named), alternation, quantifiers ``* + ? {n} {n,}
{n,m}`` (lazy or not), and ``^`` / ``$`` at the start / end of a top-level alternative. JSON
Schema patterns are not implicitly anchored, so an alternative without ``^`` (``$``) may be
preceded (followed) by any characters. What cannot be translated (backreferences, lookarounds,
word boundaries, inline flags, anchors elsewhere, unicode property escapes, a repetition minimum
above 2000) makes the converter fall back to a string the pattern does not constrain.

The regex describes the decoded string; the grammar describes its JSON encoding: ``"`` and
``\`` only as ``\"`` and ``\\``, control characters as their short escape or ``\u00XX``,
everything else raw.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .gbnf import _MAX_REP, SchemaError, _dedupe, _group, _lit, _rep, _seq


class _RegexFallback(Exception):
    """The pattern uses something the translator cannot express."""


_MAX_CP = 0x10FFFF
_SURROGATES = [(0xD800, 0xDFFF)]
_MUST_ESCAPE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_SHORT_ESCAPES = {0x08: "b", 0x09: "t", 0x0A: "n", 0x0C: "f", 0x0D: "r"}
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029),
          (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
_LINE_TERMINATORS = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}


def _iv_norm(ivs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ivs):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _iv_complement(ivs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for a, b in _iv_norm(ivs):
        if a > nxt:
            out.append((nxt, a - 1))
        nxt = b + 1
    if nxt <= _MAX_CP:
        out.append((nxt, _MAX_CP))
    return out


def _iv_minus(ivs: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    keep = _iv_complement(minus)
    out = []
    for a, b in _iv_norm(ivs):
        for c, d in keep:
            lo, hi = max(a, c), min(b, d)
            if lo <= hi:
                out.append((lo, hi))
    return out


def _iv_has(ivs: list[tuple[int, int]], cp: int) -> bool:
    return any(a <= cp <= b for a, b in ivs)


def _gbnf_class_char(cp: int) -> str:
    if cp < 0x80:
        ch = chr(cp)
        return ch if ch.isalnum() else "\\x%02X" % cp
    return "\\u%04X" % cp if cp <= 0xFFFF else "\\U%08X" % cp


def _gbnf_class(ivs: list[tuple[int, int]]) -> str:
    """A GBNF character class for the code points in ``ivs`` (non-empty, no surrogates)."""
    def body(xs: list[tuple[int, int]]) -> str:
        parts = []
        for a, b in xs:
            if a == b:
                parts.append(_gbnf_class_char(a))
            elif b == a + 1:
                parts.append(_gbnf_class_char(a) + _gbnf_class_char(b))
            else:
                parts.append(_gbnf_class_char(a) + "-" + _gbnf_class_char(b))
        return "".join(parts)
    comp = _iv_minus(_iv_complement(ivs), _SURROGATES)  # surrogates never occur in text
    if comp and len(comp) < len(ivs):
        return "[^" + body(comp) + "]"
    return "[" + body(ivs) + "]"


def _hex_nibbles(nibbles: list[int]) -> str:
    chars = []
    for n in nibbles:
        chars.append("%x" % n)
        if n >= 10:
            chars.append("%X" % n)
    return "[" + "".join(chars) + "]"


def _json_set(ivs: list[tuple[int, int]]) -> str:
    """GBNF for the JSON encoding of one character from the set ``ivs``."""
    ivs = _iv_minus(ivs, _SURROGATES)
    alts = []
    raw = _iv_minus(ivs, _MUST_ESCAPE)
    if raw:
        alts.append(_gbnf_class(raw))
    if _iv_has(ivs, 0x22):
        alts.append(_lit('\\"'))
    if _iv_has(ivs, 0x5C):
        alts.append(_lit("\\\\"))
    controls = [c for c in [*range(0x20), 0x7F] if _iv_has(ivs, c)]
    if controls:
        short = [_SHORT_ESCAPES[c] for c in controls if c in _SHORT_ESCAPES]
        if short:
            alts.append(_seq(_lit("\\"), "[" + "".join(short) + "]"))
        by_high: dict[int, list[int]] = {}
        for c in controls:
            by_high.setdefault(c >> 4, []).append(c & 0xF)
        longs = [_seq(_lit("%x" % hi), _hex_nibbles(lows)) for hi, lows in by_high.items()]
        alts.append(_seq(_lit("\\u00"), _group(longs)))
    if not alts:
        raise _RegexFallback("empty character class")
    return _group(alts)


def _json_text_of(cp: int) -> str | None:
    """The single JSON encoding of ``cp`` inside a string, or None (several or none)."""
    if cp < 0x20 or cp == 0x7F or 0xD800 <= cp <= 0xDFFF:
        return None
    if cp == 0x22:
        return '\\"'
    if cp == 0x5C:
        return "\\\\"
    return chr(cp)


_QUANT_RE = re.compile(r"\{(\d+)(,(\d*))?\}")


class _RegexParser:
    """Recursive-descent parser of an ECMA-262 pattern into a small AST.

    Nodes: ("set", intervals), ("seq", [node]), ("alt", [node]), ("rep", node, lo, hi),
    ("bol",), ("eol",).
    """

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    def parse(self) -> tuple:
        node = self.alt()
        if self.i != len(self.p):  # an unmatched ')'
            raise _RegexFallback("unbalanced parenthesis")
        return node

    def alt(self) -> tuple:
        branches = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.seq())
        return ("alt", branches)

    def seq(self) -> tuple:
        items: list[tuple] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return ("seq", items)

    def quantified(self, atom: tuple) -> tuple:
        q = self.quantifier()
        if q is None:
            return atom
        if atom[0] in ("bol", "eol"):
            raise _RegexFallback("quantified anchor")
        if self.peek() == "?":  # lazy: same language
            self.i += 1
        if self.quantifier() is not None:
            raise _RegexFallback("nothing to repeat")
        lo, hi = q
        if hi is not None and hi < lo:
            raise _RegexFallback("numbers out of order in quantifier")
        if lo > _MAX_REP:
            raise _RegexFallback("repetition above the grammar engine's limit")
        return ("rep", atom, lo, hi)

    def quantifier(self) -> tuple[int, int | None] | None:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        if c == "{":
            m = _QUANT_RE.match(self.p, self.i)
            if m:
                self.i = m.end()
                lo = int(m.group(1))
                hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                return lo, hi
        return None

    def atom(self) -> tuple:
        c = self.peek()
        if c == "(":
            self.i += 1
            if self.peek() == "?":
                if self.p.startswith("?:", self.i):
                    self.i += 2
                elif re.match(r"\?P?<[A-Za-z_][A-Za-z0-9_]*>", self.p[self.i:]):
                    self.i = self.p.index(">", self.i) + 1
                else:
                    raise _RegexFallback("lookaround or inline flag")
            node = self.alt()
            if self.peek() != ")":
                raise _RegexFallback("unbalanced parenthesis")
            self.i += 1
            return node
        if c in ("*", "+", "?") or (c == "{" and _QUANT_RE.match(self.p, self.i)):
            raise _RegexFallback("nothing to repeat")
        self.i += 1
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == ".":
            return ("set", _iv_complement(_LINE_TERMINATORS))
        if c == "[":
            return ("set", self.char_class())
        if c == "\\":
            kind, val = self.escape(in_class=False)
            return ("set", val if kind == "set" else [(val, val)])
        return ("set", [(ord(c), ord(c))])

    def char_class(self) -> list[tuple[int, int]]:
        neg = self.peek() == "^"
        if neg:
            self.i += 1
        ivs: list[tuple[int, int]] = []
        while True:
            c = self.peek()
            if c == "":
                raise _RegexFallback("unterminated character class")
            if c == "]":
                self.i += 1
                break
            kind, lo = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("", "]"):
                self.i += 1
                kind2, hi = self.class_atom()
                if kind == "cp" and kind2 == "cp":
                    if hi < lo:
                        raise _RegexFallback("range out of order in character class")
                    ivs.append((lo, hi))
                    continue
                ivs.append((ord("-"), ord("-")))  # Annex B: [\d-z] is \d, '-' or 'z'
                for k, v in ((kind, lo), (kind2, hi)):
                    ivs.extend(v if k == "set" else [(v, v)])
                continue
            ivs.extend(lo if kind == "set" else [(lo, lo)])
        ivs = _iv_norm(ivs)
        return _iv_complement(ivs) if neg else ivs

    def class_atom(self) -> tuple[str, Any]:
        c = self.peek()
        self.i += 1
        if c == "\\":
            if self.peek() == "b":  # backspace inside a class
                self.i += 1
                return "cp", 0x08
            if self.peek() == "-":
                self.i += 1
                return "cp", ord("-")
            return self.escape(in_class=True)
        return "cp", ord(c)

    def escape(self, in_class: bool) -> tuple[str, Any]:
        """After a backslash: ("cp", code point) or ("set", intervals)."""
        c = self.peek()
        if c == "":
            raise _RegexFallback("trailing backslash")
        self.i += 1
        sets = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
        if c.lower() in sets:
            ivs = sets[c.lower()]
            return "set", (_iv_complement(ivs) if c.isupper() else list(ivs))
        if c in _CONTROL_ESCAPES:
            return "cp", _CONTROL_ESCAPES[c]
        if c == "0" and not self.peek().isdigit():
            return "cp", 0
        if c.isdigit():
            raise _RegexFallback("backreference")
        if c in ("b", "B", "k", "p", "P"):
            raise _RegexFallback(f"\\{c}")
        if c == "c" and re.match(r"[A-Za-z]", self.peek()):
            self.i += 1
            return "cp", ord(self.p[self.i - 1]) % 32
        if c == "x" and re.match(r"[0-9A-Fa-f]{2}", self.p[self.i:self.i + 2]):
            self.i += 2
            return "cp", int(self.p[self.i - 2:self.i], 16)
        if c == "u":
            if self.peek() == "{":
                raise _RegexFallback("\\u{...} needs the u flag")
            if re.match(r"[0-9A-Fa-f]{4}", self.p[self.i:self.i + 4]):
                cp = int(self.p[self.i:self.i + 4], 16)
                self.i += 4
                m = re.match(r"\\u([dD][c-fC-F][0-9A-Fa-f]{2})", self.p[self.i:self.i + 6])
                if 0xD800 <= cp <= 0xDBFF and m:  # a surrogate pair: one character
                    low = int(m.group(1), 16)
                    self.i += 6
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                return "cp", cp
        return "cp", ord(c)  # identity escape (\. \/ \- ...; \x \u \c without digits: the letter)


def _strip_anchors(branch: tuple) -> tuple[bool, tuple, bool]:
    """(anchored at start, the branch without its edge anchors, anchored at end)."""
    items = list(branch[1])
    start = end = False
    while items and items[0] == ("bol",):
        items.pop(0)
        start = True
    while items and items[-1] == ("eol",):
        items.pop()
        end = True

    def check(node: tuple) -> None:
        if node[0] in ("bol", "eol"):
            raise _RegexFallback("anchor inside the pattern")
        if node[0] in ("seq", "alt"):
            for sub in node[1]:
                check(sub)
        elif node[0] == "rep":
            check(node[1])

    for item in items:
        check(item)
    return start, ("seq", items), end


def _regex_expr(node: tuple) -> str:
    """GBNF for the JSON encoding of the strings ``node`` matches ('' for the empty string)."""
    kind = node[0]
    if kind == "set":
        ivs = node[1]
        if len(ivs) == 1 and ivs[0][0] == ivs[0][1]:
            text = _json_text_of(ivs[0][0])
            if text is not None:
                return _lit(text)
        return _json_set(ivs)
    if kind == "seq":
        parts: list[str] = []
        run = ""
        for item in node[1]:
            if item[0] == "alt" and len(item[1]) == 1:
                item = item[1][0]
            if item[0] == "set" and len(item[1]) == 1 and item[1][0][0] == item[1][0][1]:
                text = _json_text_of(item[1][0][0])
                if text is not None:
                    run += text
                    continue
            if run:
                parts.append(_lit(run))
                run = ""
            parts.append(_regex_expr(item))
        if run:
            parts.append(_lit(run))
        return _seq(*parts)
    if kind == "alt":
        alts = _dedupe(_regex_expr(b) for b in node[1])
        return _group(alts) if len(alts) > 1 else alts[0]
    # rep
    inner = _regex_expr(node[1])
    if not inner:
        return ""
    if not _ATOM_RE.fullmatch(inner):
        inner = f"( {inner} )"
    return _rep(inner, node[2], node[3])


# a single GBNF class or literal (the classes and literals built here never hold a raw ']' or space)
_ATOM_RE = re.compile(r'\[\^?[^\s\]]*\]|"(?:[^"\\]|\\.)*"')


def _pattern_ast(pattern: Any) -> tuple:
    if not isinstance(pattern, str):
        raise SchemaError("'pattern' must be a string")
    return _RegexParser(pattern).parse()


def _pattern_content(pattern: str, char: str) -> str | None:
    """GBNF for the content (between the quotes) of a JSON string matching ``pattern``.

    ``char`` is the rule for any JSON string character; None: not translatable.
    """
    try:
        tree = _pattern_ast(pattern)
        branches = []
        for branch in tree[1]:
            start, body, end = _strip_anchors(branch)
            expr = _regex_expr(body)
            if not expr and not start and not end:
                branches.append(f"{char}*")
            else:
                branches.append(_seq("" if start else f"{char}*", expr, "" if end else f"{char}*"))
    except (_RegexFallback, RecursionError):
        return None
    branches = _dedupe(branches)
    return _group(branches) if len(branches) > 1 else branches[0]


def _pattern_single_class(pattern: str) -> tuple[list[tuple[int, int]], int, int | None] | None:
    """(set, lo, hi) when ``pattern`` is exactly ``^[set]{lo,hi}$`` (then minLength and
    maxLength can be enforced together with it); otherwise None."""
    try:
        tree = _pattern_ast(pattern)
        if len(tree[1]) != 1:
            return None
        start, body, end = _strip_anchors(tree[1][0])
    except (_RegexFallback, RecursionError):
        return None
    items = body[1]
    if not (start and end and len(items) == 1):
        return None
    node = items[0]
    lo, hi = 1, 1
    if node[0] == "rep":
        node, lo, hi = node[1], node[2], node[3]
    while node[0] == "alt" and len(node[1]) == 1 and len(node[1][0][1]) == 1:
        node = node[1][0][1][0]
    if node[0] != "set":
        return None
    return node[1], lo, hi


def _regex_search(pattern: str, text: str) -> bool:
    """Best-effort: does ``pattern`` (ECMA-262, read as a Python regex) match within ``text``?"""
    try:
        return re.search(pattern, text) is not None
    except (re.error, TypeError, RecursionError):
        return False
