"""The job runner: one thread that runs training jobs one at a time, off the serving threads.

Jobs are queued by id; the thread claims each in the database (queued → running), runs it, and
records how it ended with its last progress line: `{"status": "success", "result": {…}}`, `{"status":
"cancelled"}` or `{"error": "…"}`. A job reports progress through its `JobContext` (each line stored,
then the followers woken) and calls `ctx.check()` between steps: a cancel (DELETE /api/train/<id>)
ends it there with JobCancelled; the server stopping ends it with JobInterrupted, and the job goes back
to queued, to resume from its last checkpoint at the next start. A client that stops following a job
does nothing to it.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.errors import BadRequest

from .errors import JobCancelled, JobInterrupted
from .jobs import CANCELLED, FAILED, SUCCEEDED, Job, JobStore

log = logging.getLogger("corral.training")

Notify = Callable[[str], None]


class JobContext:
    """What a running job gets: its record, its working directory, progress lines and the stop checks."""

    def __init__(self, job: Job, directory: Path, store: JobStore, notify: Notify, runner: "JobRunner"):
        self.job = job
        self.directory = directory
        self._store = store
        self._notify = notify
        self._runner = runner

    def emit(self, status: str, **fields: Any) -> dict[str, Any]:
        """Store a progress line (fields that are None are left out) and wake the job's followers."""
        line = {"status": status, **{k: v for k, v in fields.items() if v is not None}}
        self._store.append(self.job.id, line)
        self._notify(self.job.id)
        return line

    def check(self) -> None:
        """Between two steps: JobCancelled if the job was cancelled, JobInterrupted if the server stops."""
        if self._runner.cancel_requested(self.job.id):
            raise JobCancelled()
        if self._runner.stopping:
            raise JobInterrupted()


Execute = Callable[[Job, JobContext], dict[str, Any]]


class JobRunner:
    def __init__(self, store: JobStore, execute: Execute, notify: Notify, job_dir: Callable[[str], Path]):
        self._store = store
        self._execute = execute
        self._notify = notify
        self._job_dir = job_dir
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: str | None = None  # the id of the job running now

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="corral-training", daemon=True)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def stop(self, timeout: float) -> bool:
        """Ask the running job to stop at its next check; True if the thread ended within `timeout`."""
        self._stop.set()
        self._queue.put(None)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stop.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # the database itself failed: the job stays as it was, the thread goes on
                log.exception("training job %s could not be recorded", job_id)

    def _run(self, job_id: str) -> None:
        if not self._store.claim(job_id):  # cancelled (or taken) while it waited
            return
        job = self._store.get(job_id)
        self.current = job_id
        ctx = JobContext(job, self._job_dir(job_id), self._store, self._notify, self)
        try:
            result = self._execute(job, ctx)
        except JobCancelled:
            log.info("training job %s cancelled", job_id)
            self._store.finish(job_id, CANCELLED, {"status": "cancelled"})
        except JobInterrupted:
            log.info("training job %s interrupted by the server stopping: it resumes at the next start", job_id)
            self._store.requeue(job_id, {"status": "interrupted: the job resumes from its last checkpoint "
                                                   "when the server starts again"})
        except BadRequest as exc:  # TrainingError, AdapterError, …: a message meant for the client
            self._store.finish(job_id, FAILED, {"error": str(exc)}, error=str(exc))
        except Exception as exc:
            log.exception("training job %s failed", job_id)
            message = f"training failed: {type(exc).__name__}: {exc}"
            self._store.finish(job_id, FAILED, {"error": message}, error=message)
        else:
            self._store.finish(job_id, SUCCEEDED, {"status": "success", "model": result.get("model"), "result": result},
                               result=result)
            shutil.rmtree(ctx.directory / "checkpoints", ignore_errors=True)  # recorded as done: not resumed again
        finally:
            self.current = None
            with self._lock:
                self._cancelled.discard(job_id)
            self._notify(job_id)
