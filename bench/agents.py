"""The agent machinery's own cost, outside the model: graph, checkpoint writes, tool dispatch.

    python -m bench.agents [--steps 3] [--runs 20] [--parallel 1,4,8] [--postgres] [--json] [--profile 25]

All in-process, as a test builds it (server/services.py), through `AgentService.run`:
- A scripted agent of `--steps` model calls (tool calls for all but the last, which answers) with two
  trivial registered tools, one call a step. Its chat model is a scripted fake injected through
  `AgentService.model_factory`: it answers at once and times itself. Per step outside the model =
  (wall time of a run - time inside the fake model) / steps, p50 and p95 over `--runs` runs (after
  `--warmup` runs that are not counted). LangChain's chat-model wrapper (callbacks, the `messages`
  stream) is counted as machinery: a real model pays it too.
  Modes: on a thread (persistent: every step's checkpoint is committed, `durability="sync"`) with the
  SQLite checkpointer (data directory in a temporary folder) and, with `--postgres`, the PostgreSQL one
  (a pgserver started here, its data in a `corral-bench-pg-*` temporary folder, stopped at the end);
  and stateless (an in-memory checkpointer that goes with the run, whatever the database).
- Parallel tool calls: a tool that sleeps 0.2 s; a scripted step calling it N times at once, for each N
  of `--parallel`. The step's wall time is from the model's reply with the calls to the next model
  call (the tool node, its dispatch and checkpoint writes); the ratio is to N=1 (concurrent calls: ~1x).

The event loop is uvloop, as `corral serve` runs (`--loop asyncio` for the standard one). A tiny
random-weight model is registered in a temporary store only so that the spec validates: the fake
stands in for it, nothing is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agents import AgentSpec, Done
from agents.graph import steps_in_turn
from server.config import Settings
from server.messages import Message
from server.services import build_services
from server.store.register import register_gguf
from server.store.store import Store
from tools import tool

GOAL_MS = 10.0
SLEEP_S = 0.2
MODEL = "bench-agent"


# ---- the scripted model and the tools ----------------------------------------------------------


class ScriptedModel(BaseChatModel):
    """Answers from a plan at once: the i-th model call of a turn makes plan[i]'s tool calls, and the call
    after the last step answers. Stateless across runs (the step is counted from the messages); it keeps
    the time spent inside itself and when each call began and ended."""

    plan: list = []  # per step: a list of (tool, arguments)
    model_s: float = 0.0
    marks: list = []  # (start, end) of each call, perf_counter seconds

    @property
    def _llm_type(self) -> str:
        return "bench-scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self

    def reset(self) -> None:
        self.model_s = 0.0
        self.marks = []

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        start = time.perf_counter()
        step = steps_in_turn(messages)
        if step < len(self.plan):
            calls = [{"name": n, "args": a, "id": f"call_{step}_{k}", "type": "tool_call"}
                     for k, (n, a) in enumerate(self.plan[step])]
            message = AIMessage("", tool_calls=calls)
        else:
            message = AIMessage("The answer is 42.", response_metadata={"done_reason": "stop"})
        result = ChatResult(generations=[ChatGeneration(message=message)])
        end = time.perf_counter()
        self.model_s += end - start
        self.marks.append((start, end))
        return result

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return self._reply(messages)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return self._reply(messages)  # no executor hop: an async model (CorralChatModel is one) has none


@tool(name="bench_lookup", input={"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]})
async def bench_lookup(args, ctx):
    """Looks a key up in a small table."""
    return {"alpha": "1", "beta": "2"}.get(args["key"], "unknown")


@tool(name="bench_add", input={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                              "required": ["a", "b"]})
async def bench_add(args, ctx):
    """Adds two numbers."""
    return str(args["a"] + args["b"])


@tool(name="bench_sleep", input={"type": "object", "properties": {"i": {"type": "integer"}}})
async def bench_sleep(args, ctx):
    """Sleeps 0.2 s."""
    start = time.perf_counter()
    await asyncio.sleep(SLEEP_S)
    SLEPT.append((start, time.perf_counter()))
    return f"slept {args.get('i')}"


SLEPT: list = []  # (start, end) of each bench_sleep call


TOOLS = [bench_lookup, bench_add, bench_sleep]


def step_plan(steps: int) -> list:
    """`steps` model calls: one call of the two tools in turn at each but the last."""
    calls = [("bench_lookup", {"key": "alpha"}), ("bench_add", {"a": 2, "b": 40})]
    return [[calls[i % 2]] for i in range(steps - 1)]


# ---- measuring ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def one_run(services: Any, agent: str, model: ScriptedModel, thread: bool) -> tuple[float, Done]:
    model.reset()
    thread_id = f"bench-{uuid.uuid4().hex}" if thread else None
    last = None
    start = time.perf_counter()
    async for event in services.agents.run(agent, [Message("user", "What is it?")], thread_id=thread_id):
        last = event
    wall = time.perf_counter() - start
    if not isinstance(last, Done) or last.done_reason != "stop":
        raise RuntimeError(f"agent {agent}: the run ended with {last!r}")
    return wall, last


async def per_step(services: Any, model: ScriptedModel, steps: int, runs: int, warmup: int, thread: bool,
                   profiler: Any = None) -> dict:
    overheads, walls, model_ms = [], [], []
    for i in range(warmup + runs):
        counted = i >= warmup
        if counted and profiler is not None:
            profiler.enable()
        wall, done = await one_run(services, "bench-steps", model, thread)
        if counted and profiler is not None:
            profiler.disable()
        if done.steps != steps:
            raise RuntimeError(f"expected {steps} steps, the run took {done.steps}")
        if counted:
            walls.append(wall * 1000)
            model_ms.append(model.model_s * 1000 / steps)
            overheads.append((wall - model.model_s) * 1000 / steps)
    return {"runs": runs, "run_ms_p50": round(statistics.median(walls), 3),
            "per_step_ms_p50": round(percentile(overheads, 0.5), 3),
            "per_step_ms_p95": round(percentile(overheads, 0.95), 3),
            "per_step_ms_min": round(min(overheads), 3),
            "model_ms_per_step_p50": round(statistics.median(model_ms), 4)}


async def parallel(services: Any, models: dict[int, ScriptedModel], repeat: int) -> list[dict]:
    """Wall time of the tool step calling bench_sleep N times at once, median of `repeat` runs per N."""
    out = []
    for n, model in models.items():
        spans, before, after, slept = [], [], [], []
        for i in range(repeat + 1):  # the first run is a warm-up
            SLEPT.clear()
            await one_run(services, f"bench-parallel-{n}", model, thread=True)
            (_, replied), (next_call, _) = model.marks[0], model.marks[1]
            if i and len(SLEPT) == n:
                first, last = min(s for s, _ in SLEPT), max(e for _, e in SLEPT)
                spans.append((next_call - replied) * 1000)
                before.append((first - replied) * 1000)
                slept.append((last - first) * 1000)
                after.append((next_call - last) * 1000)
        out.append({"calls": n, "step_ms_p50": round(statistics.median(spans), 1),
                    "step_ms_max": round(max(spans), 1),
                    "to_first_call_ms_p50": round(statistics.median(before), 2),
                    "calls_span_ms_p50": round(statistics.median(slept), 1),
                    "after_last_call_ms_p50": round(statistics.median(after), 2)})
    single = next((r["step_ms_p50"] for r in out if r["calls"] == 1), None)
    for r in out:
        r["ratio_to_one"] = round(r["step_ms_p50"] / single, 3) if single else None
    return out


def bench_store(root: Path) -> Path:
    """A store with a tiny random-weight model for the specs to name (never loaded)."""
    from tests.gguf_factory import write_random_llama

    store = Store(root / "models")
    register_gguf(store, MODEL, write_random_llama(root / "tiny.gguf"))
    return root / "models"


async def measure(label: str, models_dir: Path, data_dir: Path, database_url: str, args: argparse.Namespace,
                  profiler: Any = None) -> dict:
    services = build_services(Settings(models_dir=models_dir, data_dir=data_dir, embed_default_model=False,
                                       database_url=database_url))
    services.tools.add_all(TOOLS)
    steps_model = ScriptedModel(plan=step_plan(args.steps))
    par_models = {n: ScriptedModel(plan=[[("bench_sleep", {"i": k}) for k in range(n)]]) for n in args.parallel}
    by_agent = {"bench-steps": steps_model, **{f"bench-parallel-{n}": m for n, m in par_models.items()}}
    services.agents.model_factory = lambda spec: by_agent[spec.name]
    async with services:
        services.agents.create(AgentSpec(name="bench-steps", model=MODEL, tools=["bench_lookup", "bench_add"],
                                         max_steps=max(8, args.steps)))
        for n in args.parallel:
            services.agents.create(AgentSpec(name=f"bench-parallel-{n}", model=MODEL, tools=["bench_sleep"]))
        result = {"checkpointer": label, "modes": {}}
        result["modes"]["thread"] = await per_step(services, steps_model, args.steps, args.runs, args.warmup, True,
                                                   profiler)
        result["modes"]["stateless"] = await per_step(services, steps_model, args.steps, args.runs, args.warmup,
                                                      False)
        if args.parallel:
            result["parallel"] = await parallel(services, par_models, args.parallel_repeat)
    return result


@contextlib.contextmanager
def postgres_server():
    """A pgserver PostgreSQL for the run; its data outside pytest's temporary root, removed at the end."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # platformdirs, under pgserver
    try:
        import pgserver
    except ImportError:
        raise SystemExit("--postgres needs pgserver (pip install pgserver)") from None
    data = Path(tempfile.mkdtemp(prefix="corral-bench-pg-"))
    srv = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def run_loop(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# ---- output ------------------------------------------------------------------------------------


def print_table(out: dict) -> None:
    print(f"agent of {out['steps']} steps ({out['steps'] - 1} with one tool call, then the answer), "
          f"{out['runs']} runs after {out['warmup']} warm-up, {out['loop']} loop")
    print(f"{'checkpointer':<12} {'mode':<10} {'run ms p50':>10} {'step ms p50':>11} {'p95':>8} {'min':>8} "
          f"{'model ms/step':>13}")
    for r in out["results"]:
        for mode, m in r["modes"].items():
            name = r["checkpointer"] if mode == "thread" else "(memory)"
            print(f"{name:<12} {mode:<10} {m['run_ms_p50']:>10.2f} {m['per_step_ms_p50']:>11.2f} "
                  f"{m['per_step_ms_p95']:>8.2f} {m['per_step_ms_min']:>8.2f} {m['model_ms_per_step_p50']:>13.3f}")
    for r in out["results"]:
        if r.get("parallel"):
            print(f"\nparallel tool calls in one step (each sleeps {SLEEP_S * 1000:.0f} ms), "
                  f"{r['checkpointer']} thread, median of {out['parallel_repeat']}:")
            print(f"{'calls':>5} {'step ms p50':>11} {'max':>8} {'ratio to 1':>10} {'to 1st call':>11} "
                  f"{'calls span':>10} {'after last':>10}")
            for p in r["parallel"]:
                ratio = f"{p['ratio_to_one']:.3f}" if p["ratio_to_one"] is not None else "-"
                print(f"{p['calls']:>5} {p['step_ms_p50']:>11.1f} {p['step_ms_max']:>8.1f} {ratio:>10} "
                      f"{p['to_first_call_ms_p50']:>11.2f} {p['calls_span_ms_p50']:>10.1f} "
                      f"{p['after_last_call_ms_p50']:>10.2f}")
    goal = out["goal"]
    print(f"\nper-step overhead with SQLite: {goal['sqlite_per_step_ms_p50']:.2f} ms p50 "
          f"(goal < {GOAL_MS:.0f} ms): {'met' if goal['met'] else 'NOT met'}")


def print_profile(profiler: Any, top: int) -> None:
    import pstats

    print(f"\ncProfile of the counted SQLite thread runs (top {top} by cumulative time):", file=sys.stderr)
    stats = pstats.Stats(profiler, stream=sys.stderr).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    print(f"top {top} by own time:", file=sys.stderr)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="model calls in a run (all but the last call a tool)")
    ap.add_argument("--runs", type=int, default=20, help="counted runs per mode")
    ap.add_argument("--warmup", type=int, default=3, help="runs before the counted ones, per mode")
    ap.add_argument("--parallel", default="1,4,8", help="tool calls in one step, comma-separated; '' skips")
    ap.add_argument("--parallel-repeat", type=int, default=3, help="runs per N (median), after one warm-up")
    ap.add_argument("--postgres", action="store_true", help="also measure the PostgreSQL checkpointer (pgserver)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="cProfile the counted SQLite thread runs; print the TOP functions to stderr")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps < 1 or args.runs < 1:
        ap.error("--steps and --runs must be at least 1")
    args.parallel = sorted({int(x) for x in args.parallel.split(",") if x.strip()})
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()

    root = Path(tempfile.mkdtemp(prefix="corral-bench-agents-"))
    out: dict = {"steps": args.steps, "runs": args.runs, "warmup": args.warmup, "loop": args.loop,
                 "parallel_repeat": args.parallel_repeat, "results": []}
    try:
        models_dir = bench_store(root)
        out["results"].append(run_loop(measure("sqlite", models_dir, root / "data-sqlite", "", args, profiler),
                                       args.loop))
        if args.postgres:
            with postgres_server() as url:
                out["results"].append(run_loop(measure("postgres", models_dir, root / "data-pg", url, args),
                                               args.loop))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sqlite = out["results"][0]["modes"]["thread"]["per_step_ms_p50"]
    out["goal"] = {"sqlite_per_step_ms_p50": sqlite, "goal_ms": GOAL_MS, "met": sqlite < GOAL_MS}
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    if profiler is not None:
        print_profile(profiler, args.profile)


if __name__ == "__main__":
    main()
