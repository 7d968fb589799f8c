"""The trainer's Prometheus metrics (rank 0 serves them; values are aggregated over ranks first).

Names: ``dspark_train_*`` for training, ``dspark_eval_*`` for the held-out
evaluation, ``dspark_transport_*`` for the Mooncake fetches of the trainer ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOSS_TERMS = ("total", "ce", "l1", "confidence")
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GET_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class QualityGauges:
    """Loss terms and acceptance metrics under one prefix (``dspark_train`` or ``dspark_eval``)."""

    def __init__(self, prefix: str, what: str, registry: CollectorRegistry) -> None:
        self.loss = Gauge(f"{prefix}_loss", f"{what} loss by term (total, ce, l1, confidence).", ["term"],
                          registry=registry)
        self.accept_rate = Gauge(f"{prefix}_accept_rate", f"{what} expected acceptance rate per draft position.",
                                 ["position"], registry=registry)
        self.tau = Gauge(f"{prefix}_tau", f"{what} expected acceptance length per block (tau).", registry=registry)
        self.acc = Gauge(f"{prefix}_acc", f"{what} top-1 agreement with the label per draft position.", ["position"],
                         registry=registry)
        self.sim_acc_len = Gauge(f"{prefix}_sim_acc_len", f"{what} simulated accepted length from top-1 agreement.",
                                 registry=registry)
        for term in LOSS_TERMS:  # expose every series from the start
            self.loss.labels(term=term)

    def update(self, loss: Mapping[str, float], accept_rate: Sequence[float], tau: float,
               acc: Sequence[float], sim_acc_len: float) -> None:
        for term, value in loss.items():
            self.loss.labels(term=term).set(value)
        for j, value in enumerate(accept_rate):
            self.accept_rate.labels(position=str(j)).set(value)
        for j, value in enumerate(acc):
            self.acc.labels(position=str(j)).set(value)
        self.tau.set(tau)
        self.sim_acc_len.set(sim_acc_len)


class TrainerMetrics:
    """Every metric the trainer exports, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step = Gauge("dspark_train_step", "Optimizer steps done.", registry=r)
        self.total_steps = Gauge("dspark_train_total_steps", "Optimizer steps planned.", registry=r)
        self.epoch = Gauge("dspark_train_epoch", "Passes over the training split (fractional).", registry=r)
        self.samples = Counter("dspark_train_samples", "Training samples consumed (all ranks).", registry=r)
        self.tokens = Counter("dspark_train_tokens", "Training tokens consumed (all ranks).", registry=r)
        self.skipped = Counter("dspark_train_skipped_samples",
                               "Samples skipped for having too few assistant tokens (all ranks).", registry=r)
        self.train = QualityGauges("dspark_train", "Training", r)
        self.grad_norm = Gauge("dspark_train_grad_norm", "Global gradient norm before clipping.", registry=r)
        self.learning_rate = Gauge("dspark_train_learning_rate", "Learning rate of the last step.", registry=r)
        self.samples_per_second = Gauge("dspark_train_samples_per_second", "Recent training throughput.", registry=r)
        self.gpu_memory_peak_bytes = Gauge(
            "dspark_train_gpu_memory_peak_bytes",
            "Peak GPU memory allocated by torch on any rank since the start (0 on CPU).", registry=r)
        self.step_seconds = Histogram("dspark_train_step_seconds", "Wall time of one optimizer step.",
                                      buckets=STEP_BUCKETS, registry=r)
        self.data_wait_seconds = Histogram(
            "dspark_train_data_wait_seconds",
            "Time one step waited for captured hidden states (the slowest rank).",
            buckets=WAIT_BUCKETS, registry=r)
        self.last_checkpoint_step = Gauge("dspark_train_last_checkpoint_step", "Step of the newest checkpoint.",
                                          registry=r)
        self.completed = Gauge("dspark_train_completed", "1 once training is done and the draft exported.",
                               registry=r)
        self.transport_bytes = Counter("dspark_transport_bytes", "Bytes fetched from Mooncake (all ranks).",
                                       registry=r)
        self.transport_get_seconds = Histogram(
            "dspark_transport_get_seconds", "Time of one Mooncake fetch of a sample's hidden states.",
            buckets=GET_BUCKETS, registry=r)
        self.eval = QualityGauges("dspark_eval", "Held-out", r)
        self.eval_step = Gauge("dspark_eval_step", "Training step of the last evaluation.", registry=r)
        self.eval_samples = Gauge("dspark_eval_samples", "Held-out samples in the last evaluation.", registry=r)
