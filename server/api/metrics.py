"""Prometheus metrics: `GET /metrics` in the text format that prometheus_client writes.

Nothing is counted on the request path: a custom collector reads the scheduler and each
runner's live state when Prometheus scrapes. Names follow llama-server's (`llamacpp:
prompt_tokens_total`, `tokens_predicted_total`, `requests_processing`, `requests_deferred`)
with the `corral_` prefix and a `model` label (the model's name).

- `corral_prompt_tokens_total`, `corral_generated_tokens_total`, `corral_decode_steps_total`,
  `corral_padding_tokens_total`: counters from `Runner.stats` (prompt tokens actually computed,
  i.e. not reused from the KV cache, and generated tokens, both of completed requests; decode
  steps, shared by all sequences of a step; throwaway tokens given to idle sequences between
  running ones so that a step takes fewer passes over the weights, see `Runner._pads`) plus the
  totals of the model's earlier, unloaded runners (`Scheduler.totals`), so they never go back
  when a model unloads.
- `corral_requests_processing`: sequences running a request; `corral_requests_queued`:
  requests waiting for a free sequence.
- `corral_kv_cache_usage_ratio`: KV cells holding tokens / (num_ctx × parallel sequences);
  idle sequences keep their tokens for prefix reuse, so this stays up after requests end.
- `corral_models_loaded`; `corral_model_size_bytes` and `corral_model_vram_bytes`: as in
  /api/ps (weights plus KV cache; the part of it on the GPU).
- `corral_tokens_per_second`: generated tokens of the loaded model divided by the time since
  it loaded during which it had at least one request (prompt processing included): the
  aggregate generation throughput while busy. 0 before its first completed request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..scheduler import Loaded, Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4"  # Litestar appends "; charset=utf-8" to text/ types

COUNTERS = {  # Runner.stats key -> (metric, help)
    "prompt_tokens": ("corral_prompt_tokens_total", "Prompt tokens computed (not reused from the KV cache)."),
    "generated_tokens": ("corral_generated_tokens_total", "Tokens generated."),
    "steps": ("corral_decode_steps_total", "llama_decode calls (one batch of all running sequences)."),
    "padding_tokens": ("corral_padding_tokens_total",
                       "Throwaway tokens given to idle sequences so that a step takes fewer micro-batches."),
}


def busy_seconds(loaded: Loaded) -> float:
    """Seconds since load during which the model had at least one request."""
    current = time.monotonic() - loaded.busy_since if loaded.users > 0 else 0.0
    return loaded.busy_seconds + current


class SchedulerCollector(Collector):
    """Reads the scheduler at scrape time (on the event loop, where the scheduler lives)."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        loaded = list(self.scheduler.loaded.values())

        counters = {key: CounterMetricFamily(name, doc, labels=["model"]) for key, (name, doc) in COUNTERS.items()}
        totals: dict[str, dict[str, int]] = {name: dict(t) for name, t in self.scheduler.totals.items()}
        for l in loaded:
            model = totals.setdefault(l.name, {})
            for key, value in l.runner.stats.items():
                model[key] = model.get(key, 0) + value
        for name in sorted(totals):
            for key, family in counters.items():
                family.add_metric([name], totals[name].get(key, 0))
        yield from counters.values()

        yield GaugeMetricFamily("corral_models_loaded", "Models loaded.", value=len(loaded))
        gauges = {
            "processing": GaugeMetricFamily(
                "corral_requests_processing", "Requests running in a sequence.", labels=["model"]),
            "queued": GaugeMetricFamily(
                "corral_requests_queued", "Requests waiting for a free sequence.", labels=["model"]),
            "kv": GaugeMetricFamily(
                "corral_kv_cache_usage_ratio", "KV cache cells in use / (num_ctx x parallel).", labels=["model"]),
            "size": GaugeMetricFamily(
                "corral_model_size_bytes", "Weights plus KV cache, in bytes.", labels=["model"]),
            "vram": GaugeMetricFamily(
                "corral_model_vram_bytes", "Part of the model size in GPU memory, in bytes.", labels=["model"]),
            "tps": GaugeMetricFamily(
                "corral_tokens_per_second",
                "Generated tokens per second of time with requests, since the model loaded.", labels=["model"]),
        }
        for l in sorted(loaded, key=lambda l: l.name):
            runner, label = l.runner, [l.name]
            gauges["processing"].add_metric(label, sum(1 for s in runner.seqs if s.job is not None))
            gauges["queued"].add_metric(label, len(runner._pending))
            cells = sum(len(s.cache) for s in runner.seqs)
            gauges["kv"].add_metric(label, cells / max(1, runner.n_ctx * runner.n_parallel))
            gauges["size"].add_metric(label, l.size)
            gauges["vram"].add_metric(label, l.size_vram)
            busy = busy_seconds(l)
            gauges["tps"].add_metric(label, runner.stats["generated_tokens"] / busy if busy > 0 else 0.0)
        yield from gauges.values()


def registry_for(scheduler: Scheduler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(scheduler))
    return registry


@get("/metrics", media_type=CONTENT_TYPE)
async def metrics(request: Request) -> Response:
    state = request.app.state
    registry = getattr(state, "metrics_registry", None)
    if registry is None:
        registry = state.metrics_registry = registry_for(state.inference.scheduler)
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE)


ROUTES = [metrics]
