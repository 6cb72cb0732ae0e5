"""`/metrics` for Prometheus: the only module that imports prometheus_client.

Counters and histograms are fed as requests end; gauges (queue length,
workers per node) are read from the node pool at scrape time. Each gateway
app has its own registry, so nothing lives at module level.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rbee_fabric.gateway.pool import NodePool

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rbee_serve_requests", "Requests answered, by model, node and outcome",
            ["model", "node", "outcome"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "rbee_serve_time_to_first_token_seconds", "From request received to first token",
            ["model", "node"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens_per_second = Histogram(
            "rbee_serve_decode_tokens_per_second", "Decode speed after the first token",
            ["model", "node"], buckets=TPS_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Gauge(
            "rbee_serve_queue_length", "Requests waiting for a worker (this gateway's and the workers' queues)",
            ["model", "node"], registry=r,
        )  # fmt: skip
        self.workers = Gauge(
            "rbee_serve_workers", "Workers loaded per node", ["node"], registry=r
        )
        self.node_up = Gauge(
            "rbee_serve_node_up", "1 when the node answers, 0 while it is skipped", ["node"], registry=r
        )

    def observe(
        self, model: str, node: str, outcome: str,
        ttft_s: float | None = None, tokens_per_second: float | None = None,
    ) -> None:  # fmt: skip
        self.requests.labels(model, node, outcome).inc()
        if ttft_s is not None:
            self.ttft.labels(model, node).observe(ttft_s)
        if tokens_per_second is not None:
            self.tokens_per_second.labels(model, node).observe(tokens_per_second)

    def render(self, pool: NodePool) -> bytes:
        self.queue.clear()
        self.workers.clear()
        for h in pool.nodes.values():
            self.node_up.labels(h.name).set(1 if h.up else 0)
            self.workers.labels(h.name).set(len(h.workers))
            waiting: dict[str, int] = {}
            for w in h.workers:
                # The worker's own count (when it has a queue) includes ours.
                extra = max(h.inflight.get(w.id, 0) - 1, w.queued, 0)
                waiting[w.model_reference] = waiting.get(w.model_reference, 0) + extra
            for model, n in waiting.items():
                self.queue.labels(model, h.name).set(n)
        return generate_latest(self.registry)
