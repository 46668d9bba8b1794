"""Building blocks of llama.cpp GBNF grammar text: literals, character classes, repetitions,
integer ranges, and the error every grammar converter raises."""

from __future__ import annotations

from typing import Iterable


class SchemaError(ValueError):
    """The schema is invalid or uses a feature the converter cannot enforce."""


def _unsupported(feature: str) -> SchemaError:
    return SchemaError(f"unsupported JSON schema feature: {feature}")


def _lit(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\x%02X" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _class_char(ch: str) -> str:
    """One character for use inside a GBNF character class."""
    if ch.isalnum() and ord(ch) < 0x80:
        return ch
    if ord(ch) < 0x80:
        return "\\x%02X" % ord(ch)
    return ch


# llama.cpp refuses a repetition minimum above 2000 and silently treats a maximum
# above 2000 as unbounded; larger upper bounds (maxLength, maxItems) are therefore
# not enforced, larger lower bounds are refused.
_MAX_REP = 2000


def _rep(item: str, lo: int, hi: int | None, what: str = "repetition") -> str:
    """GBNF repetition of ``item`` (an atom) lo..hi times ('' when it can only be empty)."""
    if hi is not None and hi <= 0:
        return ""
    if hi is not None and hi < lo:
        raise SchemaError(f"empty repetition {lo}..{hi}")
    if lo > _MAX_REP:
        raise _unsupported(f"{what} above {_MAX_REP} ({lo})")
    if hi is not None and hi > _MAX_REP:
        hi = None
    if hi is None:
        if lo == 0:
            return f"{item}*"
        if lo == 1:
            return f"{item}+"
        return f"{item}{{{lo},}}"
    if lo == hi:
        return item if lo == 1 else f"{item}{{{lo}}}"
    if lo == 0 and hi == 1:
        return f"{item}?"
    return f"{item}{{{lo},{hi}}}"


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------
# integer / number ranges


def _same_len_range(lo: str, hi: str) -> list[str]:
    """Alternatives matching decimal strings of equal length in [lo, hi]."""
    if not lo:
        return [""]
    if lo == hi:
        return [_lit(lo)]
    a, b = int(lo[0]), int(hi[0])
    rest = len(lo) - 1
    if a == b:
        inner = _same_len_range(lo[1:], hi[1:])
        return [_seq(_lit(lo[0]), _group(inner))]
    alts: list[str] = []
    lo_all_zero = set(lo[1:]) <= {"0"}
    hi_all_nine = set(hi[1:]) <= {"9"}
    start = a if lo_all_zero else a + 1
    end = b if hi_all_nine else b - 1
    if not lo_all_zero:
        alts.append(_seq(_lit(lo[0]), _group(_same_len_range(lo[1:], "9" * rest))))
    if start <= end:
        cls = f"[{start}]" if start == end else f"[{start}-{end}]"
        alts.append(_seq(cls, _rep("[0-9]", rest, rest)))
    if not hi_all_nine:
        alts.append(_seq(_lit(hi[0]), _group(_same_len_range("0" * rest, hi[1:]))))
    return alts


def _group(alts: list[str]) -> str:
    if len(alts) == 1:
        return alts[0]
    return "( " + " | ".join(a if a else '""' for a in alts) + " )"


_MAX_DIGITS = 16


def _nonneg_range(lo: int, hi: int | None) -> list[str]:
    """Alternatives for canonical decimal integers n with lo <= n <= hi (hi None: unbounded)."""
    alts: list[str] = []
    if hi is not None and hi < lo:
        return alts
    lo_len = len(str(lo))
    hi_len = len(str(hi)) if hi is not None else max(_MAX_DIGITS, lo_len)
    for length in range(lo_len, hi_len + 1):
        first = 0 if length == 1 else 10 ** (length - 1)
        last = 10 ** length - 1
        a = max(lo, first)
        if hi is None and a == first and length > 1:
            # every longer length is unconstrained: one alternative for all of them
            alts.append(_seq("[1-9]", _rep("[0-9]", length - 1, max(_MAX_DIGITS, length) - 1)))
            break
        b = last if hi is None else min(hi, last)
        if a > b:
            continue
        alts.extend(_same_len_range(str(a), str(b)))
    return alts


def _int_range(lo: int | None, hi: int | None) -> str:
    """GBNF expression for integers in [lo, hi] (None: unbounded)."""
    alts: list[str] = []
    if lo is None or lo < 0:  # negative part: "-" m with m in [max(1, -hi), -lo]
        m_lo = 1 if hi is None or hi >= 0 else -hi
        m_hi = None if lo is None else -lo
        neg = _nonneg_range(m_lo, m_hi)
        if neg:
            alts.append(_seq('"-"', _group(neg)))
    if hi is None or hi >= 0:
        pos = _nonneg_range(max(lo, 0) if lo is not None else 0, hi)
        alts.extend(pos)
    if not alts:
        raise SchemaError(f"empty integer range: minimum {lo} > maximum {hi}")
    return _group(alts)


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------
# checking a grammar before llama.cpp sees it


class _Parser:
    """Reads the GBNF the converters write into (kind, ...) nodes: ("lit", empty), ("term",),
    ("ref", name), ("seq", [nodes]), ("alt", [nodes]), ("rep", node, lo)."""

    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def _skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1

    def _until(self, close: str) -> None:
        """Past the closing character of a literal or class (backslash escapes skipped)."""
        while self.i < len(self.text) and self.text[self.i] != close:
            self.i += 2 if self.text[self.i] == "\\" else 1
        if self.i >= len(self.text):
            raise SchemaError("internal error: unterminated literal in grammar")
        self.i += 1

    def parse(self) -> tuple:
        node = self.alt()
        self._skip()
        if self.i != len(self.text):
            raise SchemaError(f"internal error: unexpected {self.text[self.i]!r} in grammar")
        return node

    def alt(self) -> tuple:
        alts = [self.seq()]
        while True:
            self._skip()
            if self.i < len(self.text) and self.text[self.i] == "|":
                self.i += 1
                alts.append(self.seq())
            else:
                return alts[0] if len(alts) == 1 else ("alt", alts)

    def seq(self) -> tuple:
        items = []
        while True:
            self._skip()
            if self.i >= len(self.text) or self.text[self.i] in "|)":
                return ("seq", items)
            items.append(self.quantified(self.atom()))

    def atom(self) -> tuple:
        c = self.text[self.i]
        if c == '"':
            start = self.i
            self.i += 1
            self._until('"')
            return ("lit", self.i - start == 2)
        if c == "[":
            self.i += 1
            self._until("]")
            return ("term",)
        if c == ".":
            self.i += 1
            return ("term",)
        if c == "(":
            self.i += 1
            node = self.alt()
            self._skip()
            if self.i >= len(self.text) or self.text[self.i] != ")":
                raise SchemaError("internal error: unbalanced parenthesis in grammar")
            self.i += 1
            return node
        start = self.i
        while self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] == "-"):
            self.i += 1
        if start == self.i:
            raise SchemaError(f"internal error: unexpected {c!r} in grammar")
        return ("ref", self.text[start:self.i])

    def quantified(self, node: tuple) -> tuple:
        while self.i < len(self.text) and self.text[self.i] in "*+?{":
            c = self.text[self.i]
            if c == "{":
                end = self.text.index("}", self.i)
                lo = int(self.text[self.i + 1:end].split(",")[0])
                self.i = end + 1
            else:
                lo = 1 if c == "+" else 0
                self.i += 1
            node = ("rep", node, lo)
        return node


def _nullable(node: tuple, rules: dict[str, bool]) -> bool:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "term":
        return False
    if kind == "ref":
        return rules.get(node[1], False)
    if kind == "seq":
        return all(_nullable(n, rules) for n in node[1])
    if kind == "alt":
        return any(_nullable(n, rules) for n in node[1])
    return node[2] == 0 or _nullable(node[1], rules)


def _productive(node: tuple, rules: dict[str, bool]) -> bool:
    kind = node[0]
    if kind in ("lit", "term"):
        return True
    if kind == "ref":
        return rules.get(node[1], False)
    if kind == "seq":
        return all(_productive(n, rules) for n in node[1])
    if kind == "alt":
        return any(_productive(n, rules) for n in node[1])
    return node[2] == 0 or _productive(node[1], rules)


def _left(node: tuple, nullable: dict[str, bool], out: set[str]) -> None:
    """The rules that can begin what `node` matches (llama.cpp refuses left recursion)."""
    kind = node[0]
    if kind == "ref":
        out.add(node[1])
    elif kind == "seq":
        for n in node[1]:
            _left(n, nullable, out)
            if not _nullable(n, nullable):
                break
    elif kind == "alt":
        for n in node[1]:
            _left(n, nullable, out)
    elif kind == "rep":
        _left(node[1], nullable, out)


RECURSION_ERROR = "a recursive $ref that cannot be expanded finitely"


def check_grammar(rules: dict[str, str]) -> None:
    """Refuse a grammar llama.cpp could not use, before it gets there: a rule that refers to one not
    defined, a left-recursive rule (a schema that refers back to itself before any object or array
    opens: `{"$ref": "#"}`), or a reachable rule no finite text matches (a schema that requires itself
    inside itself: `{"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}`)."""
    nodes = {name: _Parser(body).parse() for name, body in rules.items()}
    refs: dict[str, set[str]] = {}
    for name, node in nodes.items():
        refs[name] = set()
        _refs(node, refs[name])
    defined = set(nodes)
    for name, used in refs.items():
        if not used <= defined:
            raise SchemaError(f"internal error: grammar rule {name!r} refers to undefined {sorted(used - defined)}")
    nullable = {name: False for name in nodes}
    productive = {name: False for name in nodes}
    changed = True
    while changed:
        changed = False
        for name, node in nodes.items():
            if not nullable[name] and _nullable(node, nullable):
                nullable[name] = changed = True
            if not productive[name] and _productive(node, productive):
                productive[name] = changed = True
    left = {}
    for name, node in nodes.items():
        out: set[str] = set()
        _left(node, nullable, out)
        left[name] = out
    if _has_cycle(left):  # a rule that can begin with itself, directly or through others
        raise SchemaError(f"{RECURSION_ERROR}: it refers back to itself before any object or array opens")
    reachable, todo = set(), ["root"]
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        todo.extend(refs[name])
    if not all(productive[name] for name in reachable):
        raise SchemaError(f"{RECURSION_ERROR}: no finite JSON value matches it (it requires itself inside "
                          "itself)")


def _refs(node: tuple, out: set[str]) -> None:
    kind = node[0]
    if kind == "ref":
        out.add(node[1])
    elif kind in ("seq", "alt"):
        for n in node[1]:
            _refs(n, out)
    elif kind == "rep":
        _refs(node[1], out)


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    """Whether a directed graph has a cycle (iterative depth-first search, linear time)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(graph[start]))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    return True
                if child not in state:
                    state[child] = 1
                    stack.append((child, iter(graph[child])))
                    break
            else:
                state[node] = 2
                stack.pop()
    return False
