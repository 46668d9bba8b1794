"""`AgentService`: the agents of one Corral process, built by the composition root (server/services.py).

It holds the agent specs (`<data_dir>/agents/*.json`), the users' graphs (agents/user_graphs.py), the
checkpointer every graph shares (agents/checkpoint.py), and the compiled graphs. The HTTP layers
(the LangGraph API, agents served as models) and scripts all go through it.

Without the `agents` extra (LangGraph) it still constructs and starts, so the server runs; every other
method raises AgentsUnavailable.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from server.errors import BadRequest, NotFound
from server.messages import Message

from .errors import AgentsUnavailable
from .events import AgentEvent
from .spec import AgentSpec, SpecStore

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger("corral.agents")


@functools.cache
def extra_installed() -> bool:
    """Whether the `agents` extra is importable (LangGraph and the SQLite checkpointer)."""
    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("langgraph", "langchain_core", "langgraph.checkpoint.sqlite", "aiosqlite"))
    except ImportError:  # a parent package of a dotted name is missing
        return False


class AgentService:
    def __init__(self, services: "Services"):
        self.services = services
        self.checkpointer: Any = None  # a LangGraph checkpointer, once started
        # builds the chat model of a spec's graph; None: Corral's engine (CorralChatModel). Tests swap in fakes.
        self.model_factory: Callable[[AgentSpec], Any] | None = None
        self._store = SpecStore(services.settings.data_dir / "agents")
        self._specs: dict[str, AgentSpec] | None = None
        self._user_graphs: dict[str, Any] = {}
        self._graphs: dict[str, Any] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    # ---- lifetime -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return extra_installed()

    async def start(self) -> None:
        """Open the checkpointer and load the users' graphs. Without the extra: logged, nothing else."""
        if self._stack is not None:
            return
        if not self.available:
            log.info("agents disabled: LangGraph is not installed (pip install 'corral[agents]')")
            return
        from .checkpoint import open_checkpointer
        from .user_graphs import load_graphs

        settings = self.services.settings
        stack = contextlib.AsyncExitStack()
        try:
            self.checkpointer = await open_checkpointer(settings.data_dir, settings.database_url, stack)
        except BaseException:
            await stack.aclose()
            self.checkpointer = None
            raise
        self._stack = stack
        self._user_graphs = await load_graphs(settings.graphs_config_path, self.checkpointer)

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        self._graphs.clear()
        self._user_graphs = {}
        self.checkpointer = None
        if stack is not None:
            # a run cancelled in the middle of a checkpoint write can leave its cursor referenced from
            # the cancelled frames; SQLite keeps such a connection (and its write lock) alive after
            # close until the statement is finalized, so collect those frames first
            gc.collect()
            await stack.aclose()

    def require(self) -> None:
        """AgentsUnavailable (501 over HTTP) unless the agents extra is installed."""
        if not self.available:
            raise AgentsUnavailable()

    def _require_started(self) -> None:
        self.require()
        if self._stack is None:
            raise RuntimeError("the agent service is not started (Services.start() starts it)")

    # ---- specs ----------------------------------------------------------------------------------

    def _all_specs(self) -> dict[str, AgentSpec]:
        if self._specs is None:
            self._specs = self._store.load_all()
            for name in set(self._specs) & set(self._user_graphs):
                log.warning("agent '%s' is also a graph of the graphs config; the graph wins", name)
        return self._specs

    def names(self) -> list[str]:
        """Every agent: specs and the users' graphs."""
        self.require()
        return sorted(set(self._all_specs()) | set(self._user_graphs))

    def spec(self, name: str) -> AgentSpec | None:
        """The spec of a built-in agent; None for a user's graph or an unknown name."""
        self.require()
        return None if name in self._user_graphs else self._all_specs().get(name)

    def list_specs(self) -> list[AgentSpec]:
        self.require()
        return [s for n, s in sorted(self._all_specs().items()) if n not in self._user_graphs]

    def is_user_graph(self, name: str) -> bool:
        self.require()
        return name in self._user_graphs

    def create(self, spec: AgentSpec | dict) -> AgentSpec:
        """Validate and save (replacing an agent of that name). BadRequest naming what is wrong."""
        self.require()
        spec = AgentSpec.from_dict(spec) if isinstance(spec, dict) else spec
        spec.validate(self.services)
        if spec.name in self._user_graphs:
            raise BadRequest(f"agent '{spec.name}': the name is taken by a graph of the graphs config")
        self._store.save(spec)
        self._all_specs()[spec.name] = spec
        self._graphs.pop(spec.name, None)
        return spec

    def delete(self, name: str) -> None:
        """Remove a spec (its threads stay in the checkpointer). NotFound if there is none."""
        self.require()
        if name in self._user_graphs:
            raise BadRequest(f"agent '{name}' is a graph of the graphs config: remove it there")
        if name not in self._all_specs():
            raise NotFound(f"agent '{name}' not found")
        self._store.delete(name)
        del self._all_specs()[name]
        self._graphs.pop(name, None)

    # ---- graphs and runs ------------------------------------------------------------------------

    async def graph(self, name: str) -> Any:
        """The compiled graph, with the shared checkpointer. NotFound for an unknown name."""
        self._require_started()
        if name in self._user_graphs:
            return self._user_graphs[name]
        spec = self._all_specs().get(name)
        if spec is None:
            raise NotFound(f"agent '{name}' not found")
        if name not in self._graphs:
            from .graph import build_graph

            model = self.model_factory(spec) if self.model_factory else None
            self._graphs[name] = build_graph(self.services, spec, model=model, checkpointer=self.checkpointer)
        return self._graphs[name]

    async def run(self, name: str, messages: list[Message], *, thread_id: str | None = None, resume: Any = None,
                  options: dict | None = None) -> AsyncIterator[AgentEvent]:
        """Run an agent, yielding Thinking / Content / Approval events and a closing Done.

        thread_id None: stateless, `messages` is the whole history. With a thread: the state persists,
        `messages` are the new ones; `resume` (or a plain "yes"/"no" user message) answers an approval.
        Errors (unknown agent, bad resume) are raised at the first iteration, before any event.
        Cancelling the consumer cancels the graph, its model requests and its tools.
        """
        self._require_started()
        graph = await self.graph(name)
        from .turn import run_turn

        async with contextlib.aclosing(run_turn(graph, self.spec(name), messages, thread_id=thread_id,
                                                resume=resume, options=options)) as events:
            async for event in events:
                yield event

    async def delete_thread(self, thread_id: str) -> None:
        """Forget a thread's checkpoints."""
        self._require_started()
        await self.checkpointer.adelete_thread(thread_id)
