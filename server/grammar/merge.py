"""Merging JSON schemas into one (allOf, a $ref with sibling keywords, anyOf branches sharing keywords):
the converter expands a schema only after its parts are merged, and a conflict that no value can
satisfy is a SchemaError naming the keyword."""

from __future__ import annotations

from typing import Any

from .gbnf import SchemaError, _unsupported
from .keywords import _ANNOTATIONS, _KNOWN, _is_int, _is_num


def _merge(a: dict, b: dict, where: str = "allOf") -> dict:
    out = dict(a)
    for key, bv in b.items():
        if key in _ANNOTATIONS or key not in _KNOWN:  # ignored keywords never conflict
            out.setdefault(key, bv)
            continue
        if key not in out:
            out[key] = bv
            continue
        av = out[key]
        if av == bv:
            continue
        if key == "type":
            at = av if isinstance(av, list) else [av]
            bt = bv if isinstance(bv, list) else [bv]
            both = [t for t in at if t in bt or (t == "integer" and "number" in bt)]
            both += [t for t in bt if t == "integer" and "number" in at and t not in both]
            if not both:
                raise _unsupported(f"{where} with conflicting 'type'")
            out[key] = both if len(both) > 1 else both[0]
        elif key in ("properties", "patternProperties"):
            if not isinstance(av, dict) or not isinstance(bv, dict):
                raise SchemaError(f"'{key}' must be an object")
            props = dict(av)
            for name, ps in bv.items():
                if name in props and props[name] != ps:
                    pa, pb = props[name], ps
                    if pa is True or pa == {}:
                        props[name] = pb
                    elif pb is True or pb == {}:
                        pass
                    elif isinstance(pa, dict) and isinstance(pb, dict):
                        props[name] = {"allOf": [pa, pb]}
                    else:
                        raise _unsupported(f"{where} with conflicting property '{name}'")
                else:
                    props[name] = ps
            out[key] = props
        elif key == "required":
            if not isinstance(av, list) or not isinstance(bv, list):
                raise SchemaError("'required' must be an array of strings")
            out[key] = list(av) + [r for r in bv if r not in av]
        elif key == "enum":
            if not isinstance(av, list) or not isinstance(bv, list):
                raise SchemaError("'enum' must be a non-empty array")
            both = [v for v in av if v in bv]
            if not both:
                raise _unsupported(f"{where} with conflicting 'enum'")
            out[key] = both
        elif key in ("minimum", "minLength", "minItems", "exclusiveMinimum") and _is_num(av) and _is_num(bv):
            out[key] = max(av, bv)
        elif key in ("maximum", "maxLength", "maxItems", "exclusiveMaximum") and _is_num(av) and _is_num(bv):
            out[key] = min(av, bv)
        elif key == "additionalProperties" and (av is True or av == {}):
            out[key] = bv
        elif key == "additionalProperties" and (bv is True or bv == {}):
            pass
        elif key in ("$defs", "definitions") and isinstance(av, dict) and isinstance(bv, dict):
            out[key] = {**av, **bv}
        elif key == "pattern":
            # two patterns: a grammar cannot intersect them in general; the first one is
            # enforced, the other is not
            pass
        else:
            raise _unsupported(f"{where} with conflicting '{key}'")
    return out


def _constraint_keys(schema: dict) -> list[str]:
    return [k for k in schema if k not in _ANNOTATIONS and k not in ("$defs", "definitions")]


def _value_matches_type(value: Any, typ: str) -> bool:
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: _is_int(v) or (isinstance(v, float) and v.is_integer()),
        "number": _is_num,
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }[typ](value)
