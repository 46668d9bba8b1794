"""Tool calls in the model's own output format (Hermes tags, Llama 3, Mistral, bare JSON, a template's
own tag): detecting the format from a chat template and parsing calls out of streamed text."""

from .parser import (FORMATS, TAG_PREFIX, Content, Event, ToolCallParser, detect_format, parse_tool_calls,
                     tag_format, template_tool_tag)

__all__ = ["FORMATS", "TAG_PREFIX", "Content", "Event", "ToolCallParser", "detect_format", "parse_tool_calls",
           "tag_format", "template_tool_tag"]
