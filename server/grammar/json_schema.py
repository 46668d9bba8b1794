"""JSON Schema -> llama.cpp GBNF grammars.

Pure Python, no engine coupling.  The grammars produced here are meant for
``llama_sampler_init_grammar(vocab, grammar, "root")``.

Public API
----------
``json_grammar()``                 any JSON value whose top level is an object.
``schema_grammar(schema)``         a value valid for ``schema`` (any top-level type).
``object_schema_grammar(schema)``  like ``schema_grammar`` but the top level must be an object.
``tool_call_grammar(tools, ...)``  (in tool_calls.py) one or more tool calls in a template's style.
``SchemaError``                    raised for malformed schemas (not an object, ``type`` of a
                                   wrong JSON type, unresolvable ``$ref``), a recursive ``$ref``
                                   that cannot be expanded finitely (``{"$ref": "#"}``), and the
                                   few constraints that cannot be met (e.g. conflicting ``allOf``).

Conventions of the generated grammars:

* Whitespace between JSON tokens is allowed but bounded (``ws``: nothing, one
  space/tab, or a newline followed by up to 20 spaces/tabs), so a grammar can
  never let a model loop on whitespace.  No whitespace before or after the
  top-level value.
* Numbers have at most 16 integral and 16 fractional digits (exponent <= 4).
* Object properties come out in the schema's order; required ones are always
  present, optional ones may be skipped (grammar size is linear in the number
  of properties).
* Strings are emitted as-is (non-ASCII allowed raw) with standard JSON escapes.
* ``pattern`` is enforced (translated to GBNF over the string's JSON encoding; a
  regex that cannot be translated constrains nothing); ``patternProperties`` keys
  follow their pattern.
* Like llama.cpp's json-schema-to-grammar (and so Ollama), keywords a grammar
  cannot reasonably enforce (uniqueItems, multipleOf, not, if/then/else,
  dependentRequired, propertyNames, contains, min/maxProperties, unevaluated*, and
  any unknown keyword) are ignored; an unknown ``type`` allows any value; a
  ``required`` name missing from ``properties`` is required with any value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote

from .gbnf import (_MAX_REP, SchemaError, _class_char, _dedupe, _group, _int_range, _lit, _nonneg_range, _rep,
                   _seq, _unsupported, check_grammar)
from .keywords import (_ANNOTATIONS, _ARRAY_KEYS, _FORMAT_RULES, _KNOWN, _MAX_DEPTH, _NUMBER_KEYS, _OBJECT_KEYS,
                       _PRIMITIVES, _STRING_KEYS, _TYPES, _is_int, _is_num, _json_text)
from .merge import _constraint_keys, _merge, _value_matches_type
from .pattern import _ATOM_RE, _RegexFallback, _json_set, _pattern_content, _pattern_single_class, _regex_search

__all__ = [
    "SchemaError",
    "json_grammar",
    "schema_grammar",
    "object_schema_grammar",
]


# --------------------------------------------------------------------------
# the converter


class _Converter:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._refs: dict[tuple[int, str], str] = {}
        self._docs: list[Any] = []  # keep root documents alive (ids are map keys)
        # schemas being expanded inline (a $ref with siblings, allOf, anyOf/oneOf) → the rule that stands
        # for one met again inside its own expansion (None until then): a recursion becomes a rule
        # that refers to itself instead of an endless expansion
        self._active: dict[tuple[int, str], str | None] = {}
        self._depth = 0

    # -- rule bookkeeping ------------------------------------------------
    @staticmethod
    def _sanitize(name: str) -> str:
        name = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")
        return name or "r"

    def _fresh(self, hint: str) -> str:
        base = self._sanitize(hint)
        if base in _PRIMITIVES and base not in self.rules:
            base = base + "-r"
        name, i = base, 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            i += 1
            name = f"{base}-{i}"
        return name

    def add(self, hint: str, body: str) -> str:
        """Add a rule (deduplicated by body) and return its name."""
        if body in self._by_body:
            return self._by_body[body]
        name = self._fresh(hint)
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def prim(self, name: str) -> str:
        if name not in self.rules:
            body, deps = _PRIMITIVES[name]
            self.rules[name] = body
            for dep in deps:
                self.prim(dep)
        return name

    def check(self, root_expr: str) -> None:
        """Refuse rules llama.cpp could not use (see `check_grammar`): a recursion that never ends."""
        try:
            check_grammar({"root": root_expr, **self.rules})
        except RecursionError:  # groups nested hundreds deep (a pattern's): more than llama.cpp should parse
            raise SchemaError("schema too complex: its grammar nests too deeply") from None

    def render(self, root_expr: str) -> str:
        self.check(root_expr)
        lines = [f"root ::= {root_expr}"]
        for name, body in self.rules.items():
            lines.append(f"{name} ::= {body}")
        return "\n".join(lines) + "\n"

    # -- literals --------------------------------------------------------
    def literal(self, value: Any) -> str:
        if isinstance(value, dict):
            ws = self.prim("ws")
            parts = []
            for k, v in value.items():
                if not isinstance(k, str):
                    raise SchemaError("const/enum object keys must be strings")
                parts.append(_seq(_lit(_json_text(k)), ws, '":"', ws, self.literal(v), ws))
            return "( " + _seq('"{"', ws, f' "," {ws} '.join(parts), '"}"') + " )"
        if isinstance(value, list):
            ws = self.prim("ws")
            parts = [_seq(self.literal(v), ws) for v in value]
            return "( " + _seq('"["', ws, f' "," {ws} '.join(parts), '"]"') + " )"
        try:
            return _lit(_json_text(value))
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"const/enum value is not JSON: {value!r}") from exc

    # -- refs ------------------------------------------------------------
    def resolve(self, ref: str, doc: Any) -> tuple[Any, str]:
        if not isinstance(ref, str):
            raise SchemaError("'$ref' must be a string")
        if not ref.startswith("#"):
            raise _unsupported(f"remote $ref '{ref}'")
        pointer = unquote(ref[1:])
        target: Any = doc
        hint = "root"
        if pointer:
            if not pointer.startswith("/"):
                raise _unsupported(f"$ref anchor '{ref}'")
            for part in pointer[1:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise SchemaError(f"unresolvable $ref '{ref}'")
                hint = part
        return target, hint

    def ref_rule(self, ref: str, doc: Any) -> str:
        if not isinstance(ref, str):
            raise SchemaError("'$ref' must be a string")
        key = (id(doc), ref)
        if key in self._refs:
            return self._refs[key]
        target, hint = self.resolve(ref, doc)
        name = self._fresh(hint)
        self.rules[name] = ""  # reserve (recursion)
        self._refs[key] = name
        try:
            body = self.visit(target, doc, name)
        except SchemaError:
            del self.rules[name], self._refs[key]
            raise
        self.rules[name] = body
        return name

    # -- schema visiting ---------------------------------------------------
    def visit(self, schema: Any, doc: Any, hint: str) -> str:
        """Return a GBNF expression (a rule name or an atom/group) for ``schema``."""
        if self._depth >= _MAX_DEPTH:
            raise SchemaError(f"schema nested too deeply: more than {_MAX_DEPTH} levels of subschemas "
                              "($ref targets included), or a recursive $ref that cannot be expanded finitely")
        key = None
        if isinstance(schema, dict) and any(k in schema for k in ("$ref", "allOf", "anyOf", "oneOf")):
            try:
                key = (id(doc), json.dumps(schema, sort_keys=True, default=repr))
            except (TypeError, ValueError):  # not JSON (an in-process caller's schema): no cycle check
                key = None
        if key is not None:
            if key in self._active:  # met again inside its own expansion: refer to its rule
                if self._active[key] is None:
                    name = self._fresh(hint)
                    self.rules[name] = ""  # reserved; the body comes when the outer expansion ends
                    self._active[key] = name
                return self._active[key]
            self._active[key] = None
        self._depth += 1
        try:
            expr = self._visit(schema, doc, hint)
        except BaseException:
            name = self._active.pop(key, None) if key is not None else None
            if name is not None:
                del self.rules[name]
            raise
        finally:
            self._depth -= 1
        name = self._active.pop(key) if key is not None else None
        if name is None:
            return expr
        self.rules[name] = expr
        return name

    def _visit(self, schema: Any, doc: Any, hint: str) -> str:
        if schema is True:
            return self.prim("value")
        if schema is False:
            raise _unsupported("false schema (no value is valid)")
        if not isinstance(schema, dict):
            raise SchemaError(f"schema must be an object or a boolean, got {type(schema).__name__}")

        if any(k not in _KNOWN and k not in _ANNOTATIONS for k in schema):
            schema = {k: v for k, v in schema.items() if k in _KNOWN or k in _ANNOTATIONS}
            if not schema:
                return self.prim("value")

        if "$ref" in schema:
            siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS
                        and k not in ("$defs", "definitions")}
            if not siblings:
                return self.ref_rule(schema["$ref"], doc)
            target, _ = self.resolve(schema["$ref"], doc)
            if target is True:
                target = {}
            if not isinstance(target, dict):
                raise SchemaError(f"$ref '{schema['$ref']}' does not point to a schema")
            if "$ref" in target:
                return self.visit({"allOf": [{"$ref": target["$ref"]}, siblings,
                                             {k: v for k, v in target.items() if k != "$ref"}]}, doc, hint)
            return self.visit(_merge(target, siblings, "$ref"), doc, hint)

        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or not parts:
                raise SchemaError("'allOf' must be a non-empty array")
            merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                part = self._deref(part, doc)
                merged = _merge(merged, part)
            return self.visit(merged, doc, hint)

        if "anyOf" in schema or "oneOf" in schema:
            if "anyOf" in schema and "oneOf" in schema:
                raise _unsupported("anyOf together with oneOf")
            key = "anyOf" if "anyOf" in schema else "oneOf"
            alts = schema[key]
            if not isinstance(alts, list) or not alts:
                raise SchemaError(f"'{key}' must be a non-empty array")
            base = {k: v for k, v in schema.items() if k != key}
            shared = _constraint_keys(base)
            exprs = []
            for i, alt in enumerate(alts):
                if shared:
                    alt = _merge(base, self._deref(alt, doc), key)
                exprs.append(self.visit(alt, doc, f"{hint}-{i}"))
            return self.add(hint, _group(_dedupe(exprs)))

        if "nullable" in schema:
            rest = {k: v for k, v in schema.items() if k != "nullable"}
            if schema["nullable"] is True:
                inner = self.visit(rest, doc, hint)
                return self.add(hint, _group(_dedupe([inner, self.prim("null")])))
            return self.visit(rest, doc, hint)

        typ = schema.get("type")
        types: list[str] | None
        if typ is None:
            types = None
        elif isinstance(typ, str):
            types = [typ]
        elif isinstance(typ, list) and typ and all(isinstance(t, str) for t in typ):
            types = list(dict.fromkeys(typ))
        else:
            raise SchemaError(f"'type' must be a string or a non-empty array of strings, got {typ!r}")
        if types is not None and any(t not in _TYPES for t in types):
            types = None  # an unknown type ("file", "any", ...) allows any value

        if "const" in schema or "enum" in schema:
            if schema.get("enum") is not None and not isinstance(schema["enum"], list):
                raise SchemaError("'enum' must be a non-empty array")
            if "const" in schema:
                values = [schema["const"]]
                if "enum" in schema and schema["const"] not in (schema["enum"] or []):
                    raise _unsupported("const conflicting with enum")
            else:
                values = schema["enum"]
                if not isinstance(values, list) or not values:
                    raise SchemaError("'enum' must be a non-empty array")
            if types is not None:
                values = [v for v in values if any(_value_matches_type(v, t) for t in types)]
                if not values:
                    raise _unsupported("enum/const values conflicting with 'type'")
            return self.add(hint, _group(_dedupe([self.literal(v) for v in values])))

        if types is None:
            types = self._infer_types(schema)
            if types is None:
                return self.prim("value")

        if len(types) > 1:
            exprs = [self.visit_type(t, schema, doc, f"{hint}-{t}") for t in types]
            return self.add(hint, _group(_dedupe(exprs)))
        return self.visit_type(types[0], schema, doc, hint)

    def _deref(self, schema: Any, doc: Any) -> dict:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and len(schema) == 1:
            schema, _ = self.resolve(schema["$ref"], doc)
            seen += 1
            if seen > 32:
                raise _unsupported("circular $ref inside allOf")
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            raise SchemaError(f"schema must be an object or a boolean, got {type(schema).__name__}")
        return schema

    @staticmethod
    def _infer_types(schema: dict) -> list[str] | None:
        if any(k in schema for k in _OBJECT_KEYS):
            return ["object"]
        if any(k in schema for k in _ARRAY_KEYS):
            return ["array"]
        if any(k in schema for k in _STRING_KEYS):
            return ["string"]
        if any(k in schema for k in _NUMBER_KEYS):
            return ["number"]
        return None

    def visit_type(self, typ: str, schema: dict, doc: Any, hint: str) -> str:
        if typ == "object":
            return self.visit_object(schema, doc, hint)
        if typ == "array":
            return self.visit_array(schema, doc, hint)
        if typ == "string":
            return self.visit_string(schema, hint)
        if typ == "integer":
            return self.visit_integer(schema, hint)
        if typ == "number":
            return self.visit_number(schema, hint)
        if typ == "boolean":
            return self.prim("boolean")
        return self.prim("null")

    # -- strings ----------------------------------------------------------
    def visit_string(self, schema: dict, hint: str) -> str:
        lo = schema.get("minLength", 0)
        hi = schema.get("maxLength")
        if not _is_int(lo) or lo < 0 or (hi is not None and (not _is_int(hi) or hi < 0)):
            raise SchemaError("minLength/maxLength must be non-negative integers")
        if hi is not None and hi < lo:
            raise SchemaError(f"minLength {lo} > maxLength {hi}")
        if "pattern" in schema:
            expr = self.visit_pattern(schema["pattern"], lo, hi, hint)
            if expr is not None:
                return expr
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMAT_RULES and lo == 0 and hi is None:
            return self.prim(_FORMAT_RULES[fmt])
        if lo == 0 and hi is None:
            return self.prim("string")
        char = self.prim("char")
        return self.add(hint, _seq(r'"\""', _rep(char, lo, hi, "minLength"), r'"\""'))

    def visit_pattern(self, pattern: Any, lo: int, hi: int | None, hint: str) -> str | None:
        """A JSON string matching ``pattern`` (None: not translatable, no constraint from it).

        The pattern takes precedence over minLength/maxLength/format, except for a
        pattern that is a single repeated character class (``^[a-z0-9_]{3,}$``),
        whose repetition is intersected with the length bounds.
        """
        if not isinstance(pattern, str):
            raise SchemaError("'pattern' must be a string")
        single = _pattern_single_class(pattern)
        if single is not None and (lo > 0 or hi is not None):
            ivs, p_lo, p_hi = single
            r_lo = max(lo, p_lo)
            r_hi = hi if p_hi is None else (p_hi if hi is None else min(hi, p_hi))
            if (r_hi is None or r_lo <= r_hi) and r_lo <= _MAX_REP:
                try:
                    item = _json_set(ivs)
                    body = _rep(item if _ATOM_RE.fullmatch(item) else f"( {item} )", r_lo, r_hi)
                except _RegexFallback:
                    return None
                return self.add(hint, _seq(r'"\""', body, r'"\""'))
        content = self.pattern_content(pattern)
        if content is None:
            return None
        return self.add(hint, _seq(r'"\""', content, r'"\""'))

    def pattern_content(self, pattern: str) -> str | None:
        content = _pattern_content(pattern, "char")
        if content is not None and re.search(r"(?<![\w-])char(?![\w-])", content):
            self.prim("char")
        return content

    # -- numbers ----------------------------------------------------------
    @staticmethod
    def _bounds(schema: dict) -> tuple[Any, bool, Any, bool]:
        """(lower, lower_exclusive, upper, upper_exclusive) from the schema."""
        lo, lo_ex, hi, hi_ex = schema.get("minimum"), False, schema.get("maximum"), False
        emin, emax = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if emin is True:  # draft 4
            lo_ex = True
        elif _is_num(emin) and (lo is None or emin >= lo):
            lo, lo_ex = emin, True
        if emax is True:
            hi_ex = True
        elif _is_num(emax) and (hi is None or emax <= hi):
            hi, hi_ex = emax, True
        for v in (lo, hi):
            if v is not None and (not _is_num(v) or not math.isfinite(v)):
                raise SchemaError(f"numeric bound must be a finite number, got {v!r}")
        return lo, lo_ex, hi, hi_ex

    def visit_integer(self, schema: dict, hint: str) -> str:
        lo, lo_ex, hi, hi_ex = self._bounds(schema)
        if lo is None and hi is None:
            return self.prim("integer")
        ilo = None if lo is None else (math.floor(lo) + 1 if lo_ex else math.ceil(lo))
        ihi = None if hi is None else (math.ceil(hi) - 1 if hi_ex else math.floor(hi))
        return self.add(hint, _int_range(ilo, ihi))

    def visit_number(self, schema: dict, hint: str) -> str:
        lo, lo_ex, hi, hi_ex = self._bounds(schema)
        if lo is None and hi is None:
            return self.prim("number")
        # the grammar draws integer bounds; a fractional one widens to the integer around it (0.5 -> 0),
        # so the output may overstep it by less than one (llama.cpp's converter ignores number bounds)
        if lo is not None and not float(lo).is_integer():
            lo, lo_ex = math.floor(lo), False
        if hi is not None and not float(hi).is_integer():
            hi, hi_ex = math.ceil(hi), False
        lo = None if lo is None else int(lo)
        hi = None if hi is None else int(hi)
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_ex or hi_ex))):
            raise SchemaError("empty number range")
        frac = self.prim("frac-part")
        any_frac = f'("." {frac})?'
        zero_frac = '("." "0"{1,16})?'
        nonzero_frac = '"." [0-9]{0,15} [1-9] [0-9]{0,15}'
        frac_expr = {"any": any_frac, "zero": zero_frac, "nonzero": nonzero_frac}

        def magnitude(a: int, a_ex: bool, b: int | None, b_ex: bool) -> list[str]:
            """Alternatives for y = I.F with y > a (or >=) and y < b (or <=), a >= 0."""
            lows = [(a, a, "nonzero"), (a + 1, None, "any")] if a_ex else [(a, None, "any")]
            if b is None:
                highs = [(0, None, "any")]
            elif b_ex:
                highs = [(0, b - 1, "any")]
            else:
                highs = [(0, b - 1, "any"), (b, b, "zero")]
            out = []
            for l_lo, l_hi, l_kind in lows:
                for h_lo, h_hi, h_kind in highs:
                    r_lo = max(l_lo, h_lo)
                    r_hi = l_hi if h_hi is None else (h_hi if l_hi is None else min(l_hi, h_hi))
                    if r_hi is not None and r_hi < r_lo:
                        continue
                    kinds = {l_kind, h_kind} - {"any"}
                    if len(kinds) > 1:
                        continue
                    kind = kinds.pop() if kinds else "any"
                    ints = _nonneg_range(r_lo, r_hi)
                    if ints:
                        out.append(_seq(_group(ints), frac_expr[kind]))
            return out

        alts: list[str] = []
        # non-negative values
        if hi is None or hi > 0 or (hi == 0 and not hi_ex):
            if lo is None or lo < 0:
                alts += magnitude(0, False, hi, hi_ex)
            else:
                alts += magnitude(lo, lo_ex, hi, hi_ex)
        # negative values: "-" y with y > 0
        if lo is None or lo < 0:
            if hi is None or hi >= 0:
                y_lo, y_lo_ex = 0, True
            else:
                y_lo, y_lo_ex = -hi, hi_ex
            y_hi, y_hi_ex = (None, False) if lo is None else (-lo, lo_ex)
            neg = magnitude(y_lo, y_lo_ex, y_hi, y_hi_ex)
            if neg:
                alts.append(_seq('"-"', _group(neg)))
        if not alts:
            raise SchemaError("empty number range")
        return self.add(hint, _group(alts))

    # -- arrays -----------------------------------------------------------
    def visit_array(self, schema: dict, doc: Any, hint: str) -> str:
        ws = self.prim("ws")
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems")
        if not _is_int(lo) or lo < 0 or (hi is not None and (not _is_int(hi) or hi < 0)):
            raise SchemaError("minItems/maxItems must be non-negative integers")
        if hi is not None and hi < lo:
            raise SchemaError(f"minItems {lo} > maxItems {hi}")
        items = schema.get("items", True)
        prefix: list = []
        if "prefixItems" in schema:
            prefix = schema["prefixItems"]
            if not isinstance(prefix, list):
                raise SchemaError("'prefixItems' must be an array")
        elif isinstance(items, list):  # draft 4-7 tuple form
            prefix = items
            items = schema.get("additionalItems", True)
        if not isinstance(items, (dict, bool)):
            raise SchemaError("'items' must be a schema")

        k = len(prefix)
        if items is False:
            hi = k if hi is None else min(hi, k)
            if lo > hi:
                raise SchemaError("minItems larger than the number of allowed items")
        item_exprs = [self.visit(p, doc, f"{hint}-{i}") for i, p in enumerate(prefix)]
        rest_expr = self.visit(items, doc, f"{hint}-item") if items is not False else ""

        # elements i.. (i > 0 means a comma precedes each element)
        def tail(i: int) -> str:
            sep = f'"," {ws} ' if i > 0 else ""
            if i < k:
                if hi is not None and i >= hi:
                    return ""
                el = f"{sep}{item_exprs[i]} {ws}"
                nxt = tail(i + 1)
                body = _seq(el, nxt)
                return body if i < lo else f"( {body} )?"
            if not rest_expr:
                return ""
            r_lo = max(lo - k, 0)
            r_hi = None if hi is None else hi - k
            if r_hi is not None and r_hi <= 0:
                return ""
            el = f"{rest_expr} {ws}"
            if i > 0:
                return _rep(f'( "," {ws} {el} )', r_lo, r_hi, "minItems")
            # first element of a plain array: no comma before it
            more = _rep(f'( "," {ws} {el} )', max(r_lo - 1, 0), None if r_hi is None else r_hi - 1, "minItems")
            body = _seq(el, more)
            return body if r_lo > 0 else f"( {body} )?"

        return self.add(hint, _seq('"["', ws, tail(0), '"]"'))

    # -- objects ----------------------------------------------------------
    def visit_object(self, schema: dict, doc: Any, hint: str) -> str:
        ws = self.prim("ws")
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError("'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("'required' must be an array of strings")
        patterns = schema.get("patternProperties", {})
        if not isinstance(patterns, dict):
            raise SchemaError("'patternProperties' must be an object")
        addl = schema.get("additionalProperties", None)
        if addl is None:
            # JSON Schema allows any other property; like llama.cpp, the grammar allows
            # none once 'properties' (or here 'patternProperties') name some
            addl = False if "properties" in schema or patterns else True
        if not isinstance(addl, (bool, dict)):
            raise SchemaError("'additionalProperties' must be a boolean or a schema")

        def with_patterns(name: str, ps: Any) -> Any:
            """A named property's schema, joined with the patternProperties its name matches."""
            extra = [pv for pat, pv in patterns.items() if pv is not True and pv != {}
                     and _regex_search(pat, name)]
            if not extra or not isinstance(ps, (dict, bool)):
                return ps
            if any(pv is False for pv in extra):
                return ps
            parts = ([] if ps is True else [ps]) + extra
            return parts[0] if len(parts) == 1 else {"allOf": parts}

        order: list[tuple[str, Any, bool]] = []
        for name, ps in props.items():
            is_req = name in required
            if ps is False:
                if is_req:
                    raise SchemaError(f"required property '{name}' has a false schema")
                continue
            order.append((name, ps, is_req))
        for name in dict.fromkeys(required):
            if name not in props:
                # required but not described: additionalProperties' schema when it has
                # one, else any value
                order.append((name, addl if isinstance(addl, dict) else True, True))

        kvs = []
        for name, ps, _ in order:
            joined = with_patterns(name, ps)
            try:
                value = self.visit(joined, doc, f"{hint}-{name}")
            except SchemaError:
                if joined is ps:
                    raise
                # the patternProperties schema conflicts with the property's own: keep its own
                value = self.visit(ps, doc, f"{hint}-{name}")
            kvs.append(self.add(f"{hint}-{name}-kv",
                                _seq(_lit(_json_text(name)), ws, '":"', ws, value, ws)))

        names = [n for n, _, _ in order]
        extras = []
        if addl is not False:
            value = self.visit(addl, doc, f"{hint}-additional")
            extras.append(self.add(f"{hint}-additional-kv",
                                   _seq(self._key_excluding(names), ws, '":"', ws, value, ws)))
        for i, (pat, pv) in enumerate(patterns.items()):
            if pv is False:
                continue
            if not isinstance(pat, str):
                raise SchemaError("'patternProperties' keys must be strings")
            content = self.pattern_content(pat)
            # keys are the pattern's (a key that equals a named property is not excluded);
            # an untranslatable pattern allows any other key
            key = (self.add(f"{hint}-pattern-key-{i}", _seq(r'"\""', content, r'"\""'))
                   if content is not None else self._key_excluding(names))
            value = self.visit(pv, doc, f"{hint}-pattern-{i}")
            extras.append(self.add(f"{hint}-pattern-kv-{i}", _seq(key, ws, '":"', ws, value, ws)))
        extras = _dedupe(extras)
        extra = ""
        if extras:
            extra = extras[0] if len(extras) == 1 else self.add(f"{hint}-extra-kv", _group(extras))

        n = len(order)
        rest_memo: dict[int, str] = {}
        first_memo: dict[int, str] = {}

        def rest(i: int) -> str:  # properties i.., something already emitted
            if i in rest_memo:
                return rest_memo[i]
            if i == n:
                expr = f'( "," {ws} {extra} )*' if extra else ""
            else:
                el = f'"," {ws} {kvs[i]}'
                nxt = rest(i + 1)
                expr = _seq(el, nxt) if order[i][2] else _seq(f"( {el} )?", nxt)
                if not all(r for _, _, r in order[i:]) and nxt:
                    expr = self.add(f"{hint}-rest-{i}", expr)
            rest_memo[i] = expr
            return expr

        def first(i: int) -> str:  # properties i.., nothing emitted yet
            if i in first_memo:
                return first_memo[i]
            if i == n:
                expr = f'( {extra} ( "," {ws} {extra} )* )?' if extra else ""
            elif order[i][2]:
                expr = _seq(kvs[i], rest(i + 1))
            else:
                alt = first(i + 1)
                expr = self.add(f"{hint}-first-{i}",
                                f"{_seq(kvs[i], rest(i + 1))} | {alt}" if alt else _seq(kvs[i], rest(i + 1)))
                if not alt:
                    expr = f"{expr}?"
            first_memo[i] = expr
            return expr

        # the same rules first(0) makes, computed from the last property back: the recursion of first()
        # and rest() then goes one level deep, not one level per property (thousands of them)
        k = next((i for i, (_, _, req) in enumerate(order) if req), n)
        for i in range(n, k, -1):
            rest(i)
        for i in range(k, -1, -1):
            first(i)
        return self.add(hint, _seq('"{"', ws, first(0), '"}"'))

    def _key_excluding(self, names: list[str]) -> str:
        """A JSON string rule matching any key except the given names."""
        if not names:
            return self.prim("string")
        char = self.prim("char")
        trie: dict = {}
        for name in names:
            node = trie
            for ch in name:
                node = node.setdefault(ch, {})
            node[""] = True  # end marker

        def visit(node: dict) -> str:
            # alternatives for the rest of a key after reaching ``node``
            alts = []
            children = [c for c in node if c]
            if children:
                cls = "".join(_class_char(c) for c in children)
                alts.append(f'( [^"\\\\\\x7F\\x00-\\x1F{cls}] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{{4}}) ) {char}*')
                for c in children:
                    child = node[c]
                    sub = visit(child)
                    alts.append(_seq(_lit(c), sub) if sub else _lit(c))
            else:
                alts.append(f"{char}+")
            if not node.get(""):
                alts.append('""')  # the key may end here (this prefix is not a name)
            return "( " + " | ".join(alts) + " )"

        return self.add("key-other", _seq(r'"\""', visit(trie), r'"\""'))


# --------------------------------------------------------------------------
# public API


def json_grammar() -> str:
    """Any JSON value whose top level is an object."""
    conv = _Converter()
    return conv.render(conv.prim("object"))


def schema_grammar(schema: Any) -> str:
    """A GBNF grammar whose language is JSON text valid for ``schema``."""
    conv = _Converter()
    if not isinstance(schema, (dict, bool)) or schema is False:
        if schema is False:
            raise _unsupported("false schema (no value is valid)")
        raise SchemaError(f"schema must be an object, got {type(schema).__name__}")
    expr = conv.visit(schema, schema, "root-value")
    return conv.render(expr)


def _top_types(conv: _Converter, schema: Any, doc: Any, depth: int = 0) -> set[str] | None:
    """The possible top-level types of ``schema`` (None: unconstrained)."""
    if depth > 32:
        return None
    if schema is True or schema == {}:
        return None
    if not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        target, _ = conv.resolve(schema["$ref"], doc)
        inner = _top_types(conv, target, doc, depth + 1)
        own = _top_types(conv, {k: v for k, v in schema.items() if k != "$ref"}, doc, depth + 1)
        return inner if own is None else own if inner is None else inner & own
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out: set[str] = set()
            for alt in schema[key]:
                t = _top_types(conv, alt, doc, depth + 1)
                if t is None:
                    return None
                out |= t
            return out
    if isinstance(schema.get("allOf"), list):
        acc: set[str] | None = None
        for part in schema["allOf"]:
            t = _top_types(conv, part, doc, depth + 1)
            if t is not None:
                acc = t if acc is None else acc & t
        own = _top_types(conv, {k: v for k, v in schema.items() if k != "allOf"}, doc, depth + 1)
        if own is not None:
            acc = own if acc is None else acc & own
        return acc
    if "const" in schema:
        return {"object"} if isinstance(schema["const"], dict) else {"other"}
    if isinstance(schema.get("enum"), list):
        return {"object" if isinstance(v, dict) else "other" for v in schema["enum"]}
    typ = schema.get("type")
    if isinstance(typ, str) and typ in _TYPES:
        types = {typ}
    elif isinstance(typ, list) and typ and all(t in _TYPES for t in typ):
        types = set(typ)
    else:
        inferred = _Converter._infer_types(schema)
        types = set(inferred) if inferred else None
    if types is not None and schema.get("nullable") is True:
        types.add("null")
    return types


def object_schema_grammar(schema: Any) -> str:
    """Like :func:`schema_grammar`, but the top level must be an object (response_format).

    ``{}`` / ``true`` (no constraint) means any JSON object.
    """
    if schema is True or schema == {}:
        return json_grammar()
    if not isinstance(schema, dict):
        raise SchemaError(f"schema must be an object, got {type(schema).__name__}")
    conv = _Converter()
    types = _top_types(conv, schema, schema)
    if types is None:
        schema = {**schema, "type": "object"}
    elif types != {"object"}:
        shown = ", ".join(sorted(t for t in types)) or "none"
        raise _unsupported(f"top-level type other than object ({shown}); an object is required")
    return schema_grammar(schema)
