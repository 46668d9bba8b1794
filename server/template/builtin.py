"""Chat templates for models whose GGUF ships none, chosen by model family.

Written as Jinja so they render through the same path as GGUF templates.
"""

from __future__ import annotations

# Gemma turn format: the system prompt is folded into the first user turn; the assistant is "model".
# Newlines are written inside expressions: a `{%-`/`-%}` next to a literal newline would eat it.
GEMMA = (
    "{{ bos_token }}"
    "{%- set system = namespace(text='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set system.text = system.text + (m.content if system.text == '' else '\n\n' + m.content) -%}"
    "{%- endfor -%}"
    "{%- set first = namespace(done=false) -%}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- set role = 'model' if m.role == 'assistant' else 'user' -%}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{%- if role == 'user' and not first.done and system.text -%}{{ system.text + '\\n\\n' }}{%- endif -%}"
    "{%- if role == 'user' %}{% set first.done = true %}{% endif -%}"
    "{{ (m.content | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

BY_FAMILY = {
    "gemma": GEMMA,
    "gemma2": GEMMA,
    "gemma3": GEMMA,
    "gemma3n": GEMMA,
    "llama": LLAMA3,
}


def for_family(family: str) -> str:
    """The built-in template for a model family (ChatML when the family is unknown)."""
    return BY_FAMILY.get(family.lower(), CHATML)
