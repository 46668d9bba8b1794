"""What `AgentService.run` yields: the run as a model-serving layer shows it.

Thinking carries each step's tool calls and a short account of their results, Content the answer
(streamed as it is generated where the model streams), Approval a pause for a person's decision, and
Done closes every run (also a paused one: done_reason "approval").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass
class Thinking:
    text: str  # e.g. '→ calculator({"expression": "6*7"})\n← 42'


@dataclass
class Content:
    text: str


@dataclass
class Approval:
    tool: str
    arguments: dict = field(default_factory=dict)
    question: str = ""


@dataclass
class Done:
    done_reason: str  # "stop"; "length" (max_steps, or the model's num_predict); "approval" (paused)
    steps: int = 0  # model calls in this run
    prompt_tokens: int = 0
    eval_tokens: int = 0


AgentEvent = Union[Thinking, Content, Approval, Done]
