"""Prometheus metrics of one app, in its own `CollectorRegistry` (so several
apps in one process, as in tests, do not share counters).

Under `datamoat serve --workers N` each worker is its own process, so the
workers run in prometheus_client's multiprocess mode: the CLI points
PROMETHEUS_MULTIPROC_DIR at a fresh folder, every worker writes its values
there, and whichever worker answers a scrape reports the sum over all of
them (the generation gauge: the lowest any live worker has applied).
"""

from __future__ import annotations

import os

__all__ = ["ServeMetrics", "ENDPOINTS", "MULTIPROC_ENV", "worker_exited"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ENDPOINTS = (
    "/v1/predict",
    "/v1/feedback",
    "/v1/model",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/admin/promote",
    "/v1/admin/rollback",
    "/v1/admin/takedown",
    "/v1/admin/restore",
    "/v1/admin/suppress",
    "/v1/admin/unsuppress",
    "/v2/infer",  # every /v2/models/{name}[/versions/{v}]/infer
)


class ServeMetrics:
    """Requests, latency, predictions per label, abstentions, errors, batch sizes, generation.

    >>> m = ServeMetrics()
    >>> m.batch_size.observe(4)
    >>> b"datamoat_batch_size_count 1.0" in m.render()[0]
    True
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "datamoat_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "datamoat_request_latency_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.errors = Counter("datamoat_errors", "Responses with status >= 400.", ["endpoint", "status"], registry=r)
        self.predictions = Counter(
            "datamoat_predictions", "Answers by output label ('abstain' when abstained).", ["label"], registry=r
        )
        self.abstentions = Counter("datamoat_abstentions", "Answers that abstained on a suppressed label.", registry=r)
        self.needs_review = Counter("datamoat_needs_review", "Answers flagged for human review.", registry=r)
        self.review_skipped = Counter(
            "datamoat_review_skipped", "Flagged answers not queued for review: the queue was full.", registry=r
        )
        self.batch_size = Histogram(
            "datamoat_batch_size", "Inputs per model call.", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        # With several workers: the generation every live worker has applied (a control command is in force
        # on the port only once the slowest worker has it).
        self.generation = Gauge(
            "datamoat_generation",
            "Registry generation applied and acknowledged.",
            registry=r,
            multiprocess_mode="livemin",
        )

        # Live drift (datamoat.serve.monitor): the last window's result per alias and version.
        self.drift_alarm = Gauge(
            "datamoat_drift_alarm",
            "1 when the last drift window alarmed against the version's reference profile.",
            ["alias", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_p_value = Gauge(
            "datamoat_drift_p_value",
            "The last drift window's p-value per test (the window alarms below alpha / tests).",
            ["alias", "version", "test"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.accuracy_estimate = Gauge(
            "datamoat_accuracy_estimate",
            "Label-free accuracy estimate (ATC) of the last drift window.",
            ["alias", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.drift_windows = Counter(
            "datamoat_drift_windows", "Drift windows by result: ok, alarm, unprofiled.", ["alias", "version", "result"],
            registry=r,
        )  # fmt: skip

        # Canary and shadow releases (datamoat.serve.shadow).
        self.release_answers = Counter(
            "datamoat_release_answers", "Answers returned, by release side: primary or canary.", ["role"], registry=r
        )
        self.release_pairs = Counter(
            "datamoat_release_pairs", "Off-path answers logged beside a returned one: shadow or canary.", ["role"],
            registry=r,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "datamoat_shadow_dropped", "Inputs not run off the path: the runner's queue was full.", registry=r
        )

    def drift(self, alias: str, version: str, result: dict | None) -> None:
        """Record one drift window's result (None: the version has no reference profile)."""
        if result is None:
            self.drift_windows.labels(alias, version, "unprofiled").inc()
            return
        self.drift_windows.labels(alias, version, "alarm" if result["alarm"] else "ok").inc()
        self.drift_alarm.labels(alias, version).set(int(result["alarm"]))
        for test, p in result["p_values"].items():
            self.drift_p_value.labels(alias, version, test).set(p)
        self.accuracy_estimate.labels(alias, version).set(result["estimate"]["estimate"])

    def request(self, path: str, status: int, seconds: float) -> None:
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            path = "/v2/infer"  # the model name is the client's: not a label value
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values, whatever clients send
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def answers(self, answers: list[dict]) -> None:
        for a in answers:
            self.predictions.labels("abstain" if a["abstained"] else a["label"]).inc()
            self.abstentions.inc(a["abstained"])
            self.needs_review.inc(a["needs_review"])

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for /metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()  # a fresh one per scrape, as prometheus_client's multiprocess docs say
        MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauge, so it no longer holds the generation minimum back."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
