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
