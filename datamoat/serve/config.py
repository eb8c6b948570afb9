"""`ServeConfig`: how one server process serves one alias."""

from __future__ import annotations

import dataclasses

from datamoat.configs import Config, check, check_choice

__all__ = ["ServeConfig"]


OPENABLE = ("/v1/model", "/metrics", "/docs")


@dataclasses.dataclass
class ServeConfig(Config):
    """Serving knobs. Empty `server_id`/`url` are derived at startup.

    >>> ServeConfig(max_batch_size=1).max_batch_size   # 1 turns batching off
    1
    """

    alias: str = "production"
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_upload_bytes: int = 16 << 20  # a phone photo is 2-8 MB
    # Decompression-bomb bound, checked before decoding: a 24 MP phone photo passes; decoding and
    # resizing one costs about 16 bytes a pixel while it is prepared.
    max_image_pixels: int = 24_000_000
    top_k: int = 3
    poll_interval_s: float = 0.1  # registry generation watch
    heartbeat_s: float = 1.0
    # No registry read for this long: answer 503, since a takedown may have been missed. It ends before
    # the operator's command stops waiting for this server (see `LIVE_WITHIN_S`). 0 turns it off and
    # gives up the takedown guarantee for a server cut off from its registry.
    fence_s: float = 5.0
    drain_timeout_s: float = 1.0  # longest wait for old-state requests before acknowledging
    require_predict_token: bool = True
    auth_cache_s: float = 5.0  # how long a checked token is trusted without a database read
    ort_threads: int = 0  # 0: ONNX Runtime's default, all cores
    device: str = "auto"  # ONNX Runtime's provider: auto (CUDA where onnxruntime offers it), cpu or cuda
    log_predictions: bool = True
    # Answers that need review go to the review queue (/review). The queue cites the
    # logged prediction, so it is on only while log_predictions is too.
    review_queue: bool = True
    review_max_open: int = 10_000  # open review items the registry may hold; more are counted, not queued
    # Bounds on what one request, one token and the whole queue can cost (M4, L2).
    # Live drift: answers per window tested against the served version's reference profile (0: off).
    drift_window: int = 500
    # The share of automated answers also sent to review, for a version whose policy names a target
    # accuracy (from poc): people's labels on them feed the live guarantee check.
    audit_fraction: float = 0.01
    guarantee_action: str = "review_all"  # when that check fails: review_all | rollback | none
    accuracy_floor: float = 0.0  # a window's label-free accuracy estimate below it sends a webhook (0: never)
    alert_interval_s: float = 600.0  # at most one drift or floor webhook per interval, alias and version
    # Canary and shadow releases: the off-path runner's session threads and queue (inputs; past it,
    # pairs are dropped and counted), and how often the releases' automatic rules are checked (0: never).
    shadow_threads: int = 1
    shadow_queue: int = 1024
    release_check_s: float = 30.0
    max_inputs_per_request: int = 256
    max_queued_inputs: int = 4096  # inputs waiting for the model; past it, 503 with Retry-After
    predict_rate_per_token: float = 0.0  # requests per second per token (0: no quota), burst 10 x rate
    review_rate_per_token: float = 1.0  # review-queue items per second per token, burst 100; more are counted
    feedback_max_per_hour: int = 1000  # /v1/feedback rows per token per hour, across every server
    # Read-only paths served without a token (L6). Closed by default: /v1/model names the
    # takedown reason and suppressions, /metrics the traffic, /docs every endpoint.
    open_paths: tuple[str, ...] = ()
    server_id: str = ""
    url: str = ""

    def validate(self) -> None:
        check(bool(self.alias) and len(self.alias) <= 100, f"invalid alias {self.alias!r}")
        check(self.max_batch_size >= 1, f"max_batch_size must be at least 1, got {self.max_batch_size}")
        check(0 <= self.max_wait_ms <= 1000, f"max_wait_ms must be in 0..1000, got {self.max_wait_ms}")
        check(self.max_upload_bytes >= 1024, f"max_upload_bytes must be at least 1024, got {self.max_upload_bytes}")
        check(self.max_image_pixels >= 1, f"max_image_pixels must be positive, got {self.max_image_pixels}")
        check(self.top_k >= 1, f"top_k must be at least 1, got {self.top_k}")
        check(self.poll_interval_s > 0, f"poll_interval_s must be positive, got {self.poll_interval_s}")
        from datamoat.registry.servers import LIVE_WITHIN_S

        # The registry counts a server live for LIVE_WITHIN_S after its last heartbeat.
        check(0 < self.heartbeat_s <= 5, f"heartbeat_s must be in (0, 5], got {self.heartbeat_s}")
        most = LIVE_WITHIN_S - self.heartbeat_s
        check(
            self.fence_s == 0 or self.poll_interval_s < self.fence_s <= most,
            f"fence_s must be 0 (off) or in (poll_interval_s, {most:g}] so a server cut off from its registry "
            f"stops answering before operators stop waiting for it, got {self.fence_s}",
        )
        check(self.drain_timeout_s >= 0, f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        check(self.auth_cache_s >= 0, f"auth_cache_s must be >= 0, got {self.auth_cache_s}")
        check(self.ort_threads >= 0, f"ort_threads must be >= 0, got {self.ort_threads}")
        from datamoat.inference.hardware import ORT_DEVICES

        check_choice("device", self.device, ORT_DEVICES)
        check(self.review_max_open >= 0, f"review_max_open must be >= 0, got {self.review_max_open}")
        check(0 <= self.audit_fraction <= 1, f"audit_fraction must be in [0, 1], got {self.audit_fraction}")
        check_choice("guarantee_action", self.guarantee_action, ("review_all", "rollback", "none"))
        check(0 <= self.accuracy_floor < 1, f"accuracy_floor must be in [0, 1), got {self.accuracy_floor}")
        check(self.alert_interval_s >= 0, f"alert_interval_s must be >= 0, got {self.alert_interval_s}")
        check(
            self.drift_window == 0 or self.drift_window >= 10,
            f"drift_window must be 0 or >= 10, got {self.drift_window}",
        )
        check(self.release_check_s >= 0, f"release_check_s must be >= 0 (0: never), got {self.release_check_s}")
        for name in (
            "max_inputs_per_request",
            "max_queued_inputs",
            "feedback_max_per_hour",
            "shadow_threads",
            "shadow_queue",
        ):
            check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        self.open_paths = tuple(self.open_paths)
        bad = [p for p in self.open_paths if p not in OPENABLE]
        check(not bad, f"cannot open {bad}: choose from {', '.join(OPENABLE)}")
        for name in ("predict_rate_per_token", "review_rate_per_token"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0 (0: no quota), got {getattr(self, name)}")
