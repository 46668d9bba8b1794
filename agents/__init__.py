"""Corral agents: LangGraph graphs that call Corral's tools, run in the server's process.

`AgentService` (agents/service.py) is what the composition root builds; `AgentSpec` (agents/spec.py)
is a stored agent; the events of `AgentService.run` are in agents/events.py. Nothing here imports
LangGraph at import time: without the `agents` extra the service still constructs, and every use of it
raises `AgentsUnavailable`.
"""

from .errors import AgentsUnavailable
from .events import AgentEvent, Approval, Content, Done, Thinking
from .spec import AgentSpec

__all__ = ["AgentEvent", "AgentSpec", "AgentsUnavailable", "Approval", "Content", "Done", "Thinking"]
