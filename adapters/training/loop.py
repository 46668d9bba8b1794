"""The training loop both trainers share: batches, gradient accumulation, the learning-rate schedule,
evaluation, checkpoints, resume, progress and the stop checks.

Deterministic given the seed: epoch e visits the training examples in the order of a permutation
seeded with (seed, e), and optimizer step s reads micro-batches s·A … s·A+A-1 of that sequence (A the
gradient accumulation), so a job resumed from the checkpoint of step s continues with exactly the
batches it would have seen. A checkpoint (`checkpoints/step-<s>/`) holds the trainable weights
(safetensors), the optimizer's state and the random generators' states; it is written to a temporary
folder and renamed into place, so a crash never leaves half a checkpoint; the newest two are kept.

Progress lines (`status: "training"`): step, total, loss (the step's mean), learning_rate (the rate the
step used), tokens_per_second, eta_seconds, epoch; evaluations add eval_loss and the trainer's metrics.
A line is written at most every LINE_EVERY seconds, and always for the first and last step and with
every evaluation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import require
from .runner import JobContext
from .spec import TrainingSettings

LINE_EVERY = 0.25  # seconds between two progress lines
KEEP_CHECKPOINTS = 2
SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class StepOutput:
    loss: Any  # the micro-batch's loss tensor (mean over its trained tokens or examples)
    tokens: int  # tokens the micro-batch computed (without padding), for tokens/s


def plan_steps(settings: TrainingSettings, n_train: int) -> tuple[int, int]:
    """(micro-batches per epoch, optimizer steps in all)."""
    per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    if settings.max_steps is not None:
        return per_epoch, settings.max_steps
    return per_epoch, max(1, math.ceil(per_epoch * settings.epochs / settings.gradient_accumulation_steps))


class TrainLoop:
    def __init__(self, ctx: JobContext, model: Any, settings: TrainingSettings, n_train: int,
                 step_fn: Callable[[list[int]], StepOutput], evaluate: Callable[[], dict[str, float]] | None,
                 checkpoint_dir: Path):
        self.torch = require("torch", "training")
        self.ctx = ctx
        self.model = model
        self.s = settings
        self.n_train = n_train
        self.step_fn = step_fn
        self.evaluate = evaluate
        self.checkpoints = checkpoint_dir
        self.per_epoch, self.total = plan_steps(settings, n_train)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = self.torch.optim.AdamW(self.params, lr=settings.learning_rate,
                                                weight_decay=settings.weight_decay)
        warmup = settings.warmup_steps or math.ceil(settings.warmup_ratio * self.total)
        transformers = require("transformers", "training")
        self.scheduler = transformers.get_scheduler(SCHEDULER_NAMES[settings.lr_scheduler], self.optimizer,
                                                    num_warmup_steps=warmup, num_training_steps=self.total)
        self._orders: dict[int, list[int]] = {}
        self.history: list[dict[str, Any]] = []  # one entry per evaluation
        self.losses: list[float] = []  # every step's loss (this run's steps, and those before a resume)

    # ---- data order --------------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = self.torch.Generator().manual_seed(self.s.seed * 100_003 + epoch)
            self._orders = {epoch: self.torch.randperm(self.n_train, generator=g).tolist()}
        return self._orders[epoch]

    def micro_batch(self, index: int) -> tuple[list[int], float]:
        """The example indices of micro-batch `index` (counted over the whole run) and its epoch."""
        epoch, within = divmod(index, self.per_epoch)
        order = self._order(epoch)
        size = self.s.batch_size
        return order[within * size:(within + 1) * size], index / self.per_epoch

    # ---- running ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        torch = self.torch
        start = self._resume()
        if start:
            self.ctx.emit("resuming", step=start, total=self.total, completed=start)
        self.model.train()
        times: deque[float] = deque(maxlen=20)
        last_line = 0.0
        accumulation = self.s.gradient_accumulation_steps
        for step in range(start, self.total):
            began = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            loss_sum, tokens, epoch = 0.0, 0, 0.0
            for k in range(accumulation):
                self.ctx.check()
                indices, epoch = self.micro_batch(step * accumulation + k)
                out = self.step_fn(indices)
                (out.loss / accumulation).backward()
                loss_sum += float(out.loss.detach())
                tokens += out.tokens
            if self.s.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.s.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - began
            times.append(elapsed)
            loss = loss_sum / accumulation
            self.losses.append(loss)
            done = step + 1
            evaluating = self.evaluate is not None and (done == self.total or (self.s.eval_steps and
                                                                                done % self.s.eval_steps == 0))
            metrics = self._evaluate(done) if evaluating else {}
            now = time.monotonic()
            if metrics or done in (start + 1, self.total) or now - last_line >= LINE_EVERY:
                per_step = sum(times) / len(times)
                self.ctx.emit("training", step=done, total=self.total, completed=done, loss=round(loss, 6),
                              learning_rate=lr, tokens_per_second=round(tokens / elapsed, 1) if elapsed else None,
                              eta_seconds=round(per_step * (self.total - done), 1), epoch=round(epoch, 4),
                              **metrics)
                last_line = now
            if done % self.s.save_steps == 0 or done == self.total:
                self.ctx.check()
                self._save(done)
        return {"steps": self.total, "loss": self.losses[-1] if self.losses else None,
                "first_loss": self.losses[0] if self.losses else None, "evaluations": self.history}

    def _evaluate(self, step: int) -> dict[str, float]:
        self.model.eval()
        try:
            with self.torch.no_grad():
                metrics = self.evaluate()
        finally:
            self.model.train()
        self.history.append({"step": step, **metrics})
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------------

    def _save(self, step: int) -> None:
        torch = self.torch
        st = require("safetensors.torch", "training")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step-{step:08d}"
        if final.exists():
            return
        tmp = self.checkpoints / f".tmp-step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {n: p.detach().to("cpu").contiguous() for n, p in zip(self.names, self.params)}
        st.save_file(weights, str(tmp / "trainable.safetensors"))
        state = {"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": step, "total": self.total, "losses": self.losses,
                                                       "evaluations": self.history}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        for old in sorted(self.checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        found = sorted(self.checkpoints.glob("step-*")) if self.checkpoints.is_dir() else []
        return found[-1] if found else None

    def _resume(self) -> int:
        """Load the newest checkpoint, if any; the step it was written after (0 without one)."""
        torch = self.torch
        found = self.latest()
        if found is None:
            return 0
        st = require("safetensors.torch", "training")
        weights = st.load_file(str(found / "trainable.safetensors"))
        by_name = dict(zip(self.names, self.params))
        with torch.no_grad():
            for name, value in weights.items():
                by_name[name].copy_(value.to(by_name[name].device, by_name[name].dtype))
        state = torch.load(found / "state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        progress = json.loads((found / "progress.json").read_text())
        step = int(progress["step"])
        self.losses = list(progress.get("losses", []))
        self.history = list(progress.get("evaluations", []))
        for _ in range(step):  # the schedule, where it stood
            self.scheduler.step()
        return step
