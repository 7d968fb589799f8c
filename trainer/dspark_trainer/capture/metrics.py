"""Prometheus metrics of a capture server (reference server and SGLang plugin alike)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FAILURE_REASONS = (
    "bad_request",
    "queue_full",
    "store_unavailable",
    "store_full",
    "store_error",
    "writer_full",
    "internal",
)

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class CaptureMetrics:
    """`dspark_capture_*` series in their own registry (or the given one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("dspark_capture_requests", "Capture requests received.", registry=r)
        self.records = Counter("dspark_capture_records", "Records written to Mooncake.", registry=r)
        self.tokens = Counter("dspark_capture_tokens", "Tokens captured.", registry=r)
        self.bytes = Counter("dspark_capture_bytes", "Bytes of records written to Mooncake.", registry=r)
        self.put_seconds = Histogram(
            "dspark_capture_put_seconds", "Time of one batched Mooncake write.", buckets=_SECONDS_BUCKETS, registry=r
        )
        self.forward_seconds = Histogram(
            "dspark_capture_forward_seconds", "Time of the prefill forward passes of one batch.",
            buckets=_SECONDS_BUCKETS, registry=r,
        )
        self.request_seconds = Histogram(
            "dspark_capture_request_seconds", "Time from accepting a capture request to its answer.",
            buckets=_SECONDS_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "dspark_capture_batch_size", "Requests served by one batch.", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.failures = Counter(
            "dspark_capture_failures", "Capture requests that failed, by reason.", ["reason"], registry=r
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        self.store_retries = Counter(
            "dspark_capture_store_retries", "Mooncake operations retried with back-off, by reason.", ["reason"],
            registry=r,
        )
        for reason in ("store_unavailable", "store_full", "record_not_found"):
            self.store_retries.labels(reason=reason)
        self.queue_depth = Gauge("dspark_capture_queue_depth", "Requests accepted and not answered yet.", registry=r)
        # The SGLang plugin's asynchronous writer (the reference server writes before it answers).
        self.write_queue_records = Gauge(
            "dspark_capture_write_queue_records", "Records waiting for (or in) the asynchronous write.", registry=r
        )
        self.write_queue_bytes = Gauge(
            "dspark_capture_write_queue_bytes", "Bytes of records waiting for (or in) the asynchronous write.",
            registry=r,
        )
        self.write_wait_seconds = Histogram(
            "dspark_capture_write_wait_seconds",
            "Back-pressure: time a capture waited for room in the full write queue (one sample per wait).",
            buckets=_SECONDS_BUCKETS, registry=r,
        )
        self.write_latency_seconds = Histogram(
            "dspark_capture_write_latency_seconds", "Time from queueing a record to its write completing.",
            buckets=_SECONDS_BUCKETS, registry=r,
        )
