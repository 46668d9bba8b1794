"""The composition root: builds Corral's service objects once per process.

Settings → Store → Scheduler → Inference → artifact store → tool registry (built-in tools, packages'
entry points, outside MCP servers) → agents (agents/service.py; LangGraph is loaded only when installed)
→ training jobs and ONNX classifiers (adapters/training/, adapters/classifier.py; torch only when a job runs).
The HTTP app, the MCP endpoint, agents and tools are all callers of these same objects; a script, a
notebook or a test builds them the same way, without HTTP:

    async with build_services() as services:
        answer = await services.inference.chat_once(ChatParams(model="gemma3:270m", messages=[...]))
        result = await services.call_tool("calculator", {"expression": "6 * 7"})

Knows nothing of HTTP: `server/app.py` wraps a Services in routes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from adapters.catalog import AdapterCatalog
from adapters.classifier import ClassifierService
from adapters.training import TrainingService
from agents.service import AgentService
from tools import ArtifactStore, ToolRegistry, ToolResult
from tools.builtin import BUILTIN_TOOLS
from tools.entry_points import discover
from tools.mcp_import import McpImports
from tools.registry import OnProgress

from .config import Settings
from .imaging.service import ImageService
from .inference import Inference
from .retrieval.service import RetrievalService
from .scheduler import Scheduler
from .store.store import Store

log = logging.getLogger("corral")


@dataclass
class Services:
    settings: Settings
    store: Store
    scheduler: Scheduler
    inference: Inference
    artifacts: ArtifactStore
    tools: ToolRegistry
    mcp: McpImports = field(repr=False)
    images: ImageService = field(default=None, repr=False)  # type: ignore[assignment]  # set by build_services
    agents: AgentService = field(default=None, repr=False)  # type: ignore[assignment]  # set by build_services
    retrieval: RetrievalService = field(default=None, repr=False)  # type: ignore[assignment]  # collections, rerank
    training: TrainingService = field(default=None, repr=False)  # type: ignore[assignment]  # training jobs
    classifier: ClassifierService = field(default=None, repr=False)  # type: ignore[assignment]  # ONNX classifiers
    started: bool = False

    async def start(self) -> None:
        """What needs the event loop: the default model's registration, outside MCP servers, then the
        agents (their checkpointer and the users' graphs), which may use the imported tools."""
        if self.started:
            return
        self.started = True
        self.artifacts.remove_leftovers()
        if self.settings.embed_default_model:
            from .store.default_model import ensure_default_model

            ensure_default_model(self.store)
        await self.mcp.connect(self.tools)
        if self.agents is not None:
            await self.agents.start()
        if self.training is not None:
            await self.training.start()

    async def close(self) -> None:
        if self.training is not None:
            await self.training.close()
        if self.agents is not None:
            await self.agents.close()
        await self.mcp.close()
        await self.scheduler.close()
        if self.retrieval is not None:
            self.retrieval.close()
        self.started = False

    async def __aenter__(self) -> "Services":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def call_tool(self, name: str, arguments: Any, on_progress: OnProgress | None = None) -> ToolResult:
        return await self.tools.run(name, arguments, services=self, on_progress=on_progress)


def build_services(settings: Settings | None = None) -> Services:
    settings = settings or Settings.from_env()
    store = Store(settings.models_dir)
    scheduler = Scheduler(settings)
    inference = Inference(settings, store, scheduler, AdapterCatalog(store))
    artifacts = ArtifactStore(settings.data_dir / "artifacts")
    tools = ToolRegistry(artifacts, default_timeout=settings.tool_timeout)
    tools.add_all(BUILTIN_TOOLS)
    tools.add_all(discover())
    services = Services(settings=settings, store=store, scheduler=scheduler, inference=inference,
                        artifacts=artifacts, tools=tools, mcp=McpImports(settings.mcp_config_path))
    services.agents = AgentService(services)
    services.images = ImageService(settings, store, scheduler)
    services.retrieval = inference.retrieval = RetrievalService(settings, store, inference)
    services.training = TrainingService(settings, store)
    services.classifier = ClassifierService(store, settings.num_threads)
    return services
