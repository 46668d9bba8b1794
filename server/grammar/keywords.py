"""The JSON Schema vocabulary the converter knows: primitive GBNF rules, the keywords it reads and those
it ignores, and small value tests shared by the converter and the schema merger."""

from __future__ import annotations

import json
from typing import Any


_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ws": (r'| [ \t] | "\n" [ \t]{0,20}', ()),
    "char": (r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": (r'"\"" char* "\""', ("char",)),
    "int-part": (r'"0" | [1-9] [0-9]{0,15}', ()),
    "frac-part": (r'[0-9]{1,16}', ()),
    "number": (r'"-"? int-part ("." frac-part)? ([eE] [-+]? [0-9]{1,4})?', ("int-part", "frac-part")),
    "integer": (r'"-"? int-part', ("int-part",)),
    "boolean": (r'"true" | "false"', ()),
    "null": (r'"null"', ()),
    "value": (r"object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": (r'"{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"',
               ("ws", "string", "value")),
    "array": (r'"[" ws ( value ws ( "," ws value ws )* )? "]"', ("ws", "value")),
    "uuid": (r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\""', ()),
    "date": (r'[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": (r'( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": (r'date "T" time', ("date", "time")),
    "date-string": (r'"\"" date "\""', ("date",)),
    "time-string": (r'"\"" time "\""', ("time",)),
    "date-time-string": (r'"\"" date-time "\""', ("date-time",)),
}

_FORMAT_RULES = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

# Keywords that only annotate a schema: ignored wherever they appear.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "id", "$comment",
    "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "discriminator",
    "xml", "externalDocs", "$anchor", "strict",
})

# Keywords the converter reads.  Every other keyword (uniqueItems, multipleOf, not,
# if/then/else, dependentRequired, propertyNames, contains, unevaluated*, ... and
# any unknown one) constrains nothing a grammar can reasonably express and is
# ignored, like llama.cpp's json-schema-to-grammar does: the output still
# satisfies the rest of the schema.
_KNOWN = frozenset({
    "type", "enum", "const", "$ref", "allOf", "anyOf", "oneOf", "nullable", "$defs", "definitions",
    "properties", "additionalProperties", "required", "patternProperties",
    "items", "prefixItems", "additionalItems", "minItems", "maxItems",
    "minLength", "maxLength", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
})

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

_OBJECT_KEYS = ("properties", "additionalProperties", "required", "patternProperties")
_ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems", "additionalItems")
_STRING_KEYS = ("minLength", "maxLength", "format", "pattern")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


# How deeply subschemas may nest while converting ($ref targets and merged allOf parts included): far
# beyond real schemas, and far below Python's recursion limit (a level takes up to 4 frames).
_MAX_DEPTH = 100


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
