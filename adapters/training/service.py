"""TrainingService: training jobs, as HTTP (server/api/train.py), the tools and the CLI call them.

`submit` checks everything a request can get wrong before a job exists (the spec's values, the name,
the base and its match with the GGUF, every dataset line, the target modules; each a 400 naming what is
wrong), copies the dataset into the job's folder (`<data_dir>/training/<id>/`), records the job and
queues it. One runner thread (runner.py) trains the jobs one at a time; `follow` streams a job's
progress lines (its whole history, then the live ones) until it ends, and leaving it does nothing to
the job; `cancel` stops it between two steps. Jobs a stopped server left running resume from their last
checkpoint when the service starts.

Knows nothing of HTTP. torch, transformers and peft are imported only by the work that needs them;
without them `submit` raises TrainingUnavailable (501, naming the `adapters` extra).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server import local_paths
from server.config import Settings
from server.errors import NotFound
from server.store.model import Model
from server.store.names import InvalidName, ModelName
from server.store.store import InvalidDigest, Store, parse_digest

from . import base_model
from . import dataset as ds
from .errors import TrainingError, TrainingUnavailable, check_installed, require
from .jobs import ACTIVE, QUEUED, RUNNING, Job, JobStore, new_id
from .runner import JobContext, JobRunner
from .spec import CAUSAL_LM, TrainSpec
from .workspace import Workspace

log = logging.getLogger("corral.training")

NEEDED = ("torch", "transformers", "peft", "safetensors")
STOP_WAIT = 10.0  # seconds a stopping server gives the running job to reach its next check
CANCEL_WAIT = 30.0  # seconds `cancel` waits for a running job to stop


class TrainingService:
    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.root = settings.data_dir / "training"
        self.jobs: JobStore | None = None
        self.runner: JobRunner | None = None
        self.unavailable = ""  # why jobs cannot be kept (the database could not be opened)
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._waiters_lock = threading.Lock()
        self._submit_lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self.jobs = await asyncio.to_thread(JobStore.open, self.settings.data_dir, self.settings.database_url)
        except Exception as exc:  # the server goes on serving; training answers why it cannot run
            self.unavailable = f"training jobs cannot be kept: {exc}"
            log.error("%s", self.unavailable)
            return
        self.runner = JobRunner(self.jobs, self._execute, self._notify, self.directory)
        for job in await asyncio.to_thread(self.jobs.list, (RUNNING,)):
            await asyncio.to_thread(self.jobs.requeue, job.id, {"status": "resuming after a restart"})
        queued = await asyncio.to_thread(self.jobs.list, (QUEUED,))
        for job in reversed(queued):  # oldest first
            self.runner.submit(job.id)
        if queued:
            log.info("%d training job(s) queued from before the restart", len(queued))
        self.runner.start()

    async def close(self) -> None:
        if self.runner is not None:
            stopped = await asyncio.to_thread(self.runner.stop, STOP_WAIT)
            if not stopped:  # its thread still holds the database: leave it to the process's end
                log.warning("the training job did not stop within %.0f s: it resumes at the next start", STOP_WAIT)
                return
        if self.jobs is not None:
            await asyncio.to_thread(self.jobs.close)
        self.jobs = self.runner = None

    def _store(self) -> JobStore:
        if self.jobs is None:
            raise TrainingError(self.unavailable or "the training service is not started")
        return self.jobs

    def directory(self, job_id: str) -> Path:
        return self.root / job_id

    # ---- jobs -----------------------------------------------------------------------------------

    async def submit(self, spec: TrainSpec) -> Job:
        """Check the request (TrainingError / NotFound / TrainingUnavailable before anything is kept),
        then record and queue the job."""
        check_installed(NEEDED, "training")
        jobs = self._store()
        job = await asyncio.to_thread(self._prepare, jobs, spec)
        self.runner.submit(job.id)
        return job

    async def get(self, job_id: str) -> Job:
        job = await asyncio.to_thread(self._store().get, job_id)
        if job is None:
            raise NotFound(f"training job '{job_id}' not found")
        return job

    async def list(self) -> list[Job]:
        return await asyncio.to_thread(self._store().list)

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job (a running one at its next step); a finished job is left as it is."""
        jobs = self._store()
        job = await self.get(job_id)
        if job.finished:
            return job
        if await asyncio.to_thread(jobs.cancel_queued, job_id, {"status": "cancelled"}):
            self._notify(job_id)
        else:
            self.runner.cancel(job_id)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANCEL_WAIT
            while loop.time() < deadline:
                job = await self.get(job_id)
                if job.finished:
                    break
                await asyncio.sleep(0.1)
        return await self.get(job_id)

    async def remove(self, job_id: str) -> None:
        """A finished job's record, progress lines and folder (the model it made stays)."""
        job = await self.get(job_id)
        if not job.finished:
            raise TrainingError(f"training job '{job_id}' is {job.status}: cancel it first")
        await asyncio.to_thread(self._store().remove, job_id)
        await asyncio.to_thread(shutil.rmtree, self.directory(job_id), True)

    async def follow(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every progress line of the job, then the new ones as they come, until it has ended."""
        await self.get(job_id)
        jobs = self._store()
        loop = asyncio.get_running_loop()
        waiter = (loop, asyncio.Event())
        with self._waiters_lock:
            self._waiters.setdefault(job_id, set()).add(waiter)
        after = 0
        try:
            while True:
                waiter[1].clear()
                lines = await asyncio.to_thread(jobs.events, job_id, after)
                for seq, line in lines:
                    after = seq
                    yield line
                job = await asyncio.to_thread(jobs.get, job_id)
                if job is None or job.finished:
                    for seq, line in await asyncio.to_thread(jobs.events, job_id, after):
                        yield line
                    return
                if not lines:
                    try:  # woken by the runner; the timeout covers a job another server runs
                        await asyncio.wait_for(waiter[1].wait(), 1.0)
                    except TimeoutError:
                        pass
        finally:
            with self._waiters_lock:
                self._waiters.get(job_id, set()).discard(waiter)
                if not self._waiters.get(job_id):
                    self._waiters.pop(job_id, None)

    def _notify(self, job_id: str) -> None:
        """Wake the job's followers (called from the runner's thread)."""
        with self._waiters_lock:
            waiters = list(self._waiters.get(job_id, ()))
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed
                pass

    # ---- checking a request ------------------------------------------------------------------------

    def _prepare(self, jobs: JobStore, spec: TrainSpec) -> Job:
        spec = spec.checked()
        try:
            name = ModelName.parse(spec.model)
        except InvalidName:
            raise TrainingError(f"invalid model name {spec.model!r}") from None
        self._check_name(jobs, name, spec.model)
        if spec.qlora:
            torch = require("torch", "training")
            if not torch.cuda.is_available():
                raise TrainingError("qlora needs a CUDA device (a 4-bit base through bitsandbytes): this server has "
                                    "none; train with plain LoRA (qlora false)")
            check_installed(("bitsandbytes",), "qlora")
        source = self._dataset_path(spec.dataset)
        resolved, names = (self._resolve_lm if spec.task == CAUSAL_LM else self._resolve_classifier)(spec, source)
        resolved["target_modules"] = base_model.check_targets(spec.task, spec.lora.target_modules, names)
        with self._submit_lock:  # two requests for one name: the second is refused
            self._check_name(jobs, name, spec.model)
            job_id = new_id()
            directory = self.directory(job_id)
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / ".tmp-dataset.jsonl"
            shutil.copyfile(source, tmp)
            os.replace(tmp, directory / "dataset.jsonl")
            return jobs.create(job_id, spec.model, spec.task, {"spec": spec.to_dict(), "resolved": resolved},
                               {"status": "queued", "id": job_id, "model": spec.model})

    def _resolve_lm(self, spec: TrainSpec, source: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The stored base (and HF folder), every line rendered with the served template, the linear layers."""
        from server.template.prompt import render_chat

        resolved = base_model.resolve_lm_base(self.store, spec)
        served = Model(self.store, self.store.get(resolved["model"]))
        before = list(served.messages)
        if served.system:
            before.insert(0, {"role": "system", "content": served.system})
        markers = ds.end_markers(None, served.parameters.get("stop"))
        for chat in ds.read_chats(source):
            ds.render_chat(chat, lambda m: render_chat(served, m), markers, before)
        skeleton = base_model.skeleton(spec.task, resolved["model_type"], resolved["hf_dir"])
        return resolved, base_model.linear_names(skeleton)

    def _resolve_classifier(self, spec: TrainSpec, source: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """The HF folder (with a fast tokenizer), the labels, the linear layers."""
        hf_dir = base_model.resolve_hf_dir(spec.base)
        _, labels = ds.read_labelled(source, spec.labels)
        skeleton = base_model.skeleton(spec.task, "", str(hf_dir), len(labels))
        transformers = require("transformers", "training")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        except ImportError as exc:
            raise TrainingUnavailable("training", exc.name or "") from None
        except Exception as exc:
            raise TrainingError(f"base {spec.base}: its tokenizer cannot be loaded ({type(exc).__name__})") from None
        if not getattr(tokenizer, "is_fast", False):
            raise TrainingError(f"base {spec.base}: its tokenizer has no fast form (tokenizer.json), which serving "
                                "the classifier needs")
        return {"hf_dir": str(hf_dir), "labels": labels}, base_model.linear_names(skeleton)

    def _check_name(self, jobs: JobStore, name: ModelName, raw: str) -> None:
        if self.store.find(name) is not None:
            raise TrainingError(f"a model named '{raw}' exists already: choose another name, or delete that model")
        for job in jobs.list(ACTIVE):
            try:
                taken = ModelName.parse(job.model).key == name.key
            except InvalidName:
                continue
            if taken:
                raise TrainingError(f"training job {job.id} makes a model named '{raw}' already")

    def _dataset_path(self, ref: str) -> Path:
        """An uploaded blob (`sha256:<hex>`) or a file in an allowed server directory."""
        if ref.startswith("sha256"):
            try:
                digest = parse_digest(ref)
            except InvalidDigest:
                raise TrainingError(f"invalid dataset digest {ref!r}: expected sha256:<64 hex digits>") from None
            if not self.store.has_blob(digest):
                raise TrainingError(f"dataset blob {digest} not found: upload it first (POST /api/blobs/{digest})")
            return self.store.blob_path(digest)
        try:
            real = local_paths.resolve(ref, is_path=True)
            local_paths.check_readable(real, ref)
        except local_paths.LocalPathError as exc:
            raise TrainingError(str(exc)) from None
        return real

    # ---- running (the runner's thread) -------------------------------------------------------------

    def _execute(self, job: Job, ctx: JobContext) -> dict[str, Any]:
        try:
            torch = require("torch", "training")
        except TrainingUnavailable as exc:
            raise TrainingError(str(exc)) from None
        threads = self.settings.train_threads or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ws = Workspace(self.store, device, self.settings.num_threads, self.root / "cache")
        ctx.emit("running", device=device)
        if job.task == CAUSAL_LM:
            from .lm import train_causal_lm

            return train_causal_lm(job, ctx, ws)
        from .classifier_trainer import train_classifier

        return train_classifier(job, ctx, ws)
