"""Grammars that constrain what a model may write: JSON Schema (and `pattern` regexes) to llama.cpp GBNF.

Pure Python: the engine takes the grammar text; tools and agents use these without any model.
"""

from .gbnf import SchemaError
from .json_schema import json_grammar, object_schema_grammar, schema_grammar
from .tool_calls import TOOL_CALL_STYLES, tool_call_grammar

__all__ = ["SchemaError", "TOOL_CALL_STYLES", "json_grammar", "object_schema_grammar", "schema_grammar",
           "tool_call_grammar"]
