"""Prometheus metrics, in a registry of the app's own so several apps (tests) never clash."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# vLLM's buckets for the same two histograms, so dashboards built for it read these alike.
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0),
    *(2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
ITL_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
    *(2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "whetstone_requests",
            "Requests answered, by endpoint, model and HTTP status.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "whetstone_request_latency_seconds",
            "Time from request to last token.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._token_latencies(r)
        self.prompt_tokens = Counter(
            "whetstone_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "whetstone_completion_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "whetstone_batch_size",
            "Requests per forward batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_adapters = Histogram(
            "whetstone_batch_adapters",
            "Distinct adapters (base included) per forward batch.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.adapter_loads = Counter(
            "whetstone_adapter_loads", "Adapters loaded onto the base.", registry=r
        )
        self.adapter_evictions = Counter(
            "whetstone_adapter_evictions", "Adapters evicted (least recently used).", registry=r
        )
        self.capture_written = Counter(
            "whetstone_capture_written", "Records written to the store.", registry=r
        )
        self.capture_failures = Counter(
            "whetstone_capture_failures", "Failed attempts to write records.", registry=r
        )
        self.capture_spooled = Counter(
            "whetstone_capture_spooled",
            "Records spilled to disk while the store was down.",
            registry=r,
        )
        self.capture_poison = Counter(
            "whetstone_capture_poison",
            "Records the store refused for their data, moved to the poison folder.",
            registry=r,
        )
        self.capture_dropped = Counter(
            "whetstone_capture_dropped",
            "Records lost because the disk spool was full.",
            registry=r,
        )
        self._cascade(r)

    def _cascade(self, r: CollectorRegistry) -> None:
        # The cascade (`serve.cascade`): who answered, why the hero was asked, what it cost.
        # Money is counted once per hero answer (its HTTP calls' usage), never per retry.
        self.cascade_answers = Counter(
            "whetstone_cascade_answers",
            "Requests on a cascade or hero route, by task, route and who answered.",
            ["task", "route", "answered_by"],
            registry=r,
        )
        self.cascade_escalations = Counter(
            "whetstone_cascade_escalations",
            "Cascade requests sent to the hero, by task and reason (confidence, check).",
            ["task", "reason"],
            registry=r,
        )
        self.hero_calls = Counter(
            "whetstone_hero_calls", "HTTP calls the hero answered.", ["task"], registry=r
        )
        self.hero_prompt_tokens = Counter(
            "whetstone_hero_prompt_tokens", "Prompt tokens the hero billed.", ["task"], registry=r
        )
        self.hero_completion_tokens = Counter(
            "whetstone_hero_completion_tokens",
            "Completion tokens the hero billed.",
            ["task"],
            registry=r,
        )
        self.hero_cost = Counter(
            "whetstone_hero_cost",
            "Money spent on the hero (hero.price_*_per_1k times its tokens).",
            ["task"],
            registry=r,
        )
        self.hero_failures = Counter(
            "whetstone_hero_failures",
            "Hero calls that failed (timeout, error, unusable answer).",
            ["task"],
            registry=r,
        )

    def _token_latencies(self, r: CollectorRegistry) -> None:
        # Measured by the engine for generated answers (`Engine._observe_latency`): a
        # classify answer by label likelihood or a hero's answer generates no tokens here.
        self.time_to_first_token = Histogram(
            "whetstone_time_to_first_token_seconds",
            "Time from a generation's submission to its first token (vLLM's "
            "vllm:time_to_first_token_seconds).",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "whetstone_inter_token_latency_seconds",
            "Time between two tokens of one generation (vLLM's vllm:inter_token_latency_seconds).",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (queue depths, loaded adapters)."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
