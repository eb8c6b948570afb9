"""`EdgeConfig`: one device's identity, trust, state folder, polling and limits."""

from __future__ import annotations

import dataclasses

from datamoat.configs import Config, check

__all__ = ["EdgeConfig"]


@dataclasses.dataclass
class EdgeConfig(Config):
    """One device: who it is, what it trusts, where it keeps state, how it polls.

    >>> EdgeConfig(device_id="cam-01", state_dir="/var/lib/datamoat", trust=("release.pub",)).poll_interval_s
    5.0
    """

    device_id: str = "edge"
    state_dir: str = "edge-state"
    trust: tuple[str, ...] = ()
    server: str = ""  # empty: offline only (hand-carried bundles)
    token: str = ""
    group: str = "default"
    poll_interval_s: float = 5.0
    request_timeout_s: float = 5.0
    health_window: int = 20  # predictions watched after a swap
    max_error_rate: float = 0.2
    max_abstain_rate: float = 0.5
    top_k: int = 3
    ort_threads: int = 1
    max_upload_bytes: int = 16 << 20  # a phone photo is 2-8 MB
    max_bundle_bytes: int = 256 << 20  # a bundle over this is refused before it is downloaded or read
    max_image_pixels: int = 24_000_000  # a phone photo; about 16 bytes a pixel while it is prepared
    upload_low_confidence: bool = True  # keep low-confidence inputs for a person to label in /review
    upload_max_items: int = 500  # outbox cap: the oldest samples are dropped first
    upload_max_bytes: int = 32 << 20
    upload_batch: int = 32  # samples per upload request
    require_https: bool = False  # refuse a control server that is not https:// (the README recommends it)
    ca_cert: str = ""  # PEM CA bundle for the control server's certificate; empty: the system's
    control_trust: tuple[str, ...] = ()  # public keys whose signed control answers this device acts on
    insecure_control: bool = False  # act on unsigned control answers (tests, a lab bench): never in the field
    # Answers per drift window tested on the device against the bundle's profile (0: off); only the
    # result leaves the device, in its heartbeat.
    drift_window: int = 200

    def validate(self) -> None:
        check(bool(self.device_id) and len(self.device_id) <= 100, f"invalid device id {self.device_id!r}")
        check(self.poll_interval_s > 0, f"poll_interval_s must be positive, got {self.poll_interval_s}")
        check(self.request_timeout_s > 0, f"request_timeout_s must be positive, got {self.request_timeout_s}")
        check(self.health_window >= 1, f"health_window must be at least 1, got {self.health_window}")
        for name in ("max_error_rate", "max_abstain_rate"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be in 0..1, got {getattr(self, name)}")
        check(self.top_k >= 1, f"top_k must be at least 1, got {self.top_k}")
        check(
            self.drift_window == 0 or self.drift_window >= 10,
            f"drift_window must be 0 or >= 10, got {self.drift_window}",
        )
        check(not self.server or bool(self.token), "a device polling a server needs its --token")
        check(
            not (self.require_https and self.server) or self.server.startswith("https://"),
            f"control server {self.server!r} is not https:// and --require-https is set: use its https:// URL",
        )
        check(
            not self.server or bool(self.control_trust) or self.insecure_control,
            "a device polling a control server needs --control-trust CONTROL.pub (the public half of the server's "
            "--control-key), or --insecure-control to act on unsigned answers",
        )
        for name in ("upload_max_items", "upload_max_bytes", "upload_batch", "max_bundle_bytes"):
            check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
