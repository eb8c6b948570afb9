"""The edge runtime's core: install, self-test, swap, roll back, predict.

`EdgeRuntime` owns a device's state directory (`DeviceStore`) and the model
it serves. Everything that changes what the device answers with goes
through one lock and ends in `_recompute`, which builds the immutable
`Serving` state that predictions read with one attribute access.

- `install_bytes` verifies a bundle (signature, hashes), refuses a
  downgrade the operator did not allow, stages it, self-tests it (loads the
  model and compares its outputs with the bundle-time ones), and only then
  commits the swap. A bundle that fails verification is *rejected*; one that
  fails its self-test is *rolled back* (its staged copy deleted before it
  ever answered); either way the running model never stops serving.
- After a swap the next `health_window` predictions are watched: an error
  rate over `max_error_rate`, or a low-confidence abstain rate over
  `max_abstain_rate`, rolls the device back to its last known good bundle.
  (Abstentions caused by an operator's suppression do not count.)
- The policy overlay from the control server (suppressions, takedowns) is
  persisted, so a device restarted offline still refuses a version it knows
  is taken down. A takedown with a fallback is served from the last known
  good bundle when that is the fallback version; otherwise the device
  answers 503.
- An answer that needs review or abstains keeps its input (uint8 (C, H, W)),
  top-3, model version and time in the bounded on-disk `Outbox`
  (`upload_low_confidence`); the `SyncAgent` uploads it to the control
  server, where it waits in the review queue for a person's label.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np

from datamoat.edge.bundle import Bundle, BundleError, load_bundle_model, read_bundle, self_test
from datamoat.edge.config import EdgeConfig
from datamoat.edge.drift import DeviceDrift
from datamoat.edge.keys import load_trust
from datamoat.edge.perf import Perf
from datamoat.edge.store import DeviceStore, Outbox
from datamoat.errors import Unavailable
from datamoat.inference.engine import LoadedVersion, decide
from datamoat.inference.inputs import Prepare
from datamoat.registry.answer_rows import as_uint8, input_hash

__all__ = ["EdgeRuntime", "Serving"]

log = logging.getLogger("datamoat.edge")

MAX_REMEMBERED = 100  # rejected and refused bundle hashes kept in state.json, newest last
COUNTERS = (
    "predictions",
    "errors",
    "abstained",
    "polls",
    "poll_failures",
    "downloads",
    "resumed_downloads",
    "installs",
    "rejected",
    "refused",
    "rolled_back",
)


@dataclasses.dataclass
class _Slot:
    bundle: Bundle
    model: LoadedVersion | None = None  # loaded on demand for the last known good


@dataclasses.dataclass(frozen=True)
class Serving:
    """What the device answers with right now."""

    model: LoadedVersion | None  # None: answer 503 with `reason`
    bundle: Bundle | None
    reason: str
    suppressed: dict[str, str]
    threshold: float | None  # review threshold
    abstain_threshold: float | None
    generation: int
    per_class: dict[str, float | None] | None = None  # per-class review thresholds (the bundle's policy)


class EdgeRuntime:
    """A device's model lifecycle over its state directory.

    >>> rt = EdgeRuntime(EdgeConfig(state_dir="state", trust=("release.pub",)))  # doctest: +SKIP
    >>> rt.install_bytes(open("model.dmb", "rb").read(), source="usb")["status"]  # doctest: +SKIP
    'installed'
    """

    def __init__(self, config: EdgeConfig, trusted: list[Any] | None = None):
        self.cfg = config
        self.trusted = trusted if trusted is not None else load_trust(config.trust)
        self.store = DeviceStore(config.state_dir)
        self.install_token = self.store.install_token()
        self.outbox = Outbox(config.state_dir, config.upload_max_items, config.upload_max_bytes)
        self.state = self.store.load_state()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.perf = Perf()  # latency of the recent predictions, for the heartbeat
        self.drift = DeviceDrift(config.drift_window or 1, lambda v, r: self.event("drift_window", version=v, **r))
        self.lock = threading.RLock()
        self.active: _Slot | None = None
        self.lkg: _Slot | None = None
        self.window: dict[str, int] | None = None  # post-swap health counts
        self.last_error: str | None = None
        self.started = time.time()
        self.serving = Serving(None, None, "starting", {}, None, None, -1)
        with self.lock:
            self._boot()

    def close(self) -> None:
        self.drift.close()
        self.store.close()

    # -- events ---------------------------------------------------------------------------
    def event(self, kind: str, **detail: Any) -> dict[str, Any]:
        """Append to the device's log (persisted; sent with the next heartbeat)."""
        with self.lock:
            e = {"n": self.state["next_event"], "ts": time.time(), "kind": kind, **detail}
            self.state["next_event"] += 1
            self.state["events"] = [*self.state["events"], e][-200:]
            self.store.save_state(self.state)
            return e

    # -- boot -----------------------------------------------------------------------------
    def _open(self, slot: str, load: bool) -> _Slot | None:
        data = self.store.read(slot)
        if data is None:
            return None
        try:
            b = read_bundle(data, self.trusted)
            return _Slot(b, load_bundle_model(b, self.cfg.ort_threads, self.cfg.drift_window > 0) if load else None)
        except Exception as e:  # a file damaged on disk, or a key no longer trusted
            self.event("disk_rejected", slot=slot, reason=str(e))
            self.store.path(slot).unlink(missing_ok=True)
            return None

    def _boot(self) -> None:
        pending = self.state["pending"]
        if self.store.recover(pending) == "undone":
            why = "the device stopped while installing it (crash during the self-test?)"
            self._outcome("rolled_back", pending, why, self.state.get("pending_rollout"), "boot")
        self.state["pending"] = None
        # The trust list may have changed since (a key rotation): let such bundles be tried again.
        self.state["rejected"] = {k: v for k, v in self.state["rejected"].items() if "trusted key" not in v}
        self.active = self._open("active", load=True)
        if self.active is None and self.store.restore_lkg():
            self.active = self._open("active", load=True)
        self.lkg = self._open("lkg", load=False)
        self._recompute()

    # -- installs -------------------------------------------------------------------------
    def _outcome(self, status: str, sha: str, reason: str, rollout_id: str | None, source: str) -> dict[str, Any]:
        kept = "rejected" if status in ("rejected", "rolled_back") else "refused" if status == "refused" else None
        if kept:
            seen = self.state[kept]
            seen.pop(sha, None)
            seen[sha] = reason
            while len(seen) > MAX_REMEMBERED:  # junk sent by anyone must not grow state.json without bound
                del seen[next(iter(seen))]
        self.counters[status if status in COUNTERS else "installs"] += 1
        if status != "installed":
            self.last_error = reason
        self.event(status, sha256=sha, reason=reason, rollout_id=rollout_id, source=source)
        return {"status": status, "reason": reason, "sha256": sha}

    def install_bytes(
        self, data: bytes, *, source: str, allow_downgrade: bool = False, rollout_id: str | None = None
    ) -> dict[str, Any]:
        """Verify, self-test and swap in a bundle; returns {status, reason, sha256}.

        status: installed | rejected (verification) | refused (downgrade) | rolled_back (self-test).
        """
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            try:
                if len(data) > self.cfg.max_bundle_bytes:
                    raise BundleError(
                        f"bundle rejected: {len(data)} bytes is over this device's "
                        f"{self.cfg.max_bundle_bytes}-byte limit"
                    )
                b = read_bundle(data, self.trusted)
            except BundleError as e:
                return self._outcome("rejected", sha, str(e), rollout_id, source)
            cur = self.active
            if cur is not None and cur.bundle.sha256 == sha:
                return {"status": "installed", "reason": "already active", "sha256": sha}
            why: str | None
            if cur is not None and b.sequence <= cur.bundle.sequence and not allow_downgrade:
                why = (
                    f"downgrade refused: bundle sequence {b.sequence} is not newer than the running "
                    f"{cur.bundle.sequence}, and the operator did not allow a rollback"
                )
                return self._outcome("refused", sha, why, rollout_id, source)
            self.store.stage(data)
            self.state.update(pending=sha, pending_rollout=rollout_id)
            self.store.save_state(self.state)
            try:
                model = load_bundle_model(b, self.cfg.ort_threads, self.cfg.drift_window > 0)
                why = self_test(model, b.part_json("selftest.json"))
            except Exception as e:  # a model this device's runtime cannot load fails its self-test
                why = f"self-test failed: the model does not load here ({type(e).__name__}: {e})"
            if why:
                self.store.discard_staged()
                self.state["pending"] = None
                return self._outcome("rolled_back", sha, why, rollout_id, source)
            self.store.commit()
            if cur is not None:
                self.lkg = _Slot(cur.bundle)  # its session is dropped: reloaded only if needed
            self.active = _Slot(b, model)
            self.state.update(pending=None, active_rollout=rollout_id)
            self.window = {"n": 0, "errors": 0, "abstained": 0}
            self.store.clear_downloads()
            self._recompute()
            return self._outcome("installed", sha, f"sequence {b.sequence}, version {b.version_id}", rollout_id, source)

    def rollback(self, reason: str) -> None:
        """Back to the last known good bundle (after a bad post-swap health window)."""
        with self.lock:
            bad = self.active
            if bad is None:
                return
            restored = self.store.restore_lkg()
            self.active = self.lkg if restored else None
            if self.active is not None and self.active.model is None:
                self.active.model = load_bundle_model(
                    self.active.bundle, self.cfg.ort_threads, self.cfg.drift_window > 0
                )
            self.lkg, self.window = None, None
            rollout = self.state.get("active_rollout")
            self.state["active_rollout"] = None
            self._recompute()
            self._outcome("rolled_back", bad.bundle.sha256, reason, rollout, "health")

    def local_copy(self, sha: str) -> bytes | None:
        """The bundle with this hash if the device still has it (its last known good)."""
        if self.lkg is not None and self.lkg.bundle.sha256 == sha:
            return self.store.read("lkg")
        return None

    # -- policy ---------------------------------------------------------------------------
    def apply_policy(self, overlay: dict[str, Any]) -> None:
        """Take the control server's suppressions and takedowns (persisted for offline restarts)."""
        with self.lock:
            if overlay != self.state["policy"]:
                self.state["policy"] = overlay
                self._recompute()
                # The poll number lets a test check the bound without a clock: applied on the first poll after.
                self.event("policy", generation=overlay.get("generation"), poll=self.counters["polls"])

    def _recompute(self) -> None:
        ov = self.state["policy"] or {}
        td_all = ov.get("takedowns", {})
        if self.active is None:
            self.serving = Serving(
                None,
                None,
                "no bundle installed yet: wait for the control server, or run `datamoat edge install FILE`",
                {},
                None,
                None,
                ov.get("generation", -1),
            )
            return
        slot, reason = self.active, "active bundle"
        td = td_all.get(slot.bundle.version_id)
        if td:
            fb, lkg = td.get("fallback"), self.lkg
            if fb and lkg is not None and lkg.bundle.version_id == fb and fb not in td_all:
                if lkg.model is None:
                    lkg.model = load_bundle_model(lkg.bundle, self.cfg.ort_threads, self.cfg.drift_window > 0)
                slot, reason = lkg, f"fallback for taken-down {self.active.bundle.version_id}"
            else:
                reason = f"version {slot.bundle.version_id} is taken down: {td.get('reason')}"
                self.serving = Serving(None, None, reason, {}, None, None, ov.get("generation", -1))
                return
        pol = slot.bundle.part_json("policy.json")
        newer = ov and ov.get("generation", -1) >= pol.get("generation", -1)
        self.serving = Serving(
            slot.model,
            slot.bundle,
            reason,
            dict(ov["suppressed"] if newer else pol["suppressed"]),
            pol.get("threshold"),
            pol.get("abstain_threshold"),
            ov["generation"] if newer else pol.get("generation", -1),
            pol.get("per_class"),
        )

    # -- predictions ----------------------------------------------------------------------
    def predict(self, prepare: Prepare) -> tuple[dict[str, Any], str | None]:
        """Answers in the cloud API's shape, and a rollback reason if the health window failed."""
        t0 = time.perf_counter()
        s = self.serving
        if s.model is None:
            raise Unavailable(s.reason)
        assert s.bundle is not None  # a serving model comes with its bundle
        x = prepare(s.model.input_shape, s.model.photo)  # (N, C, H, W)
        try:
            probs, emb = s.model.run(x)  # (N, K), (N, D) when the bundle carries a drift profile
        except Exception:
            self._observe(s, len(x), len(x), 0)
            raise
        if emb is not None:
            self.drift.observe(s.bundle, probs, emb, x)
        answers = decide(probs, s.model.classes, s.suppressed, self.cfg.top_k, s.threshold, s.per_class)
        low = 0
        if s.abstain_threshold is not None:
            for a in answers:
                top = a["top_k"][0]["probability"] if a["top_k"] else 0.0
                if not a["abstained"] and top < s.abstain_threshold:
                    a.update(
                        label=None,
                        label_index=None,
                        abstained=True,
                        needs_review=True,
                        reason=f"confidence {top:.3f} is below the abstain threshold {s.abstain_threshold:g}",
                    )
                    low += 1
        self.counters["abstained"] += sum(a["abstained"] for a in answers)
        verdict = self._observe(s, len(x), 0, low)
        answers = [{"prediction_id": str(uuid.uuid4()), **a} for a in answers]
        if self.cfg.upload_low_confidence:
            self._keep(s, answers, x)
        out = {
            "model_version": s.model.version_id,
            "model_name": s.model.name,
            "alias": f"edge:{self.cfg.group}",
            "generation": s.generation,
            "device_id": self.cfg.device_id,
            "bundle_sequence": s.bundle.sequence,
            "predictions": answers,
        }
        self.perf.add((time.perf_counter() - t0) * 1000)
        return out, verdict

    def _keep(self, s: Serving, answers: list[dict[str, Any]], x: np.ndarray) -> None:
        """Put the answers that need review, with their inputs x (N, C, H, W), in the outbox."""
        assert s.model is not None and s.bundle is not None  # `predict` answered with them
        now = time.time()
        for a, xi in zip(answers, x):
            if not (a["needs_review"] or a["abstained"]):
                continue
            u, exact = as_uint8(xi)  # (C, H, W)
            item = {
                "prediction_id": a["prediction_id"],
                "ts": now,
                "model_version": s.model.version_id,
                "bundle_sequence": s.bundle.sequence,
                "generation": s.generation,
                "label": a["label"],
                "abstained": a["abstained"],
                "needs_review": a["needs_review"],
                "reason": a["reason"],
                "top_k": a["top_k"][:3],
                "shape": list(u.shape),
                "pixels": base64.b64encode(u.tobytes()).decode(),
                # The cloud's input hash (float32 of what the model saw), so a reviewer's label matches it.
                "input_sha256": input_hash(xi),
                "exact": exact,
            }
            try:
                self.outbox.add(item)
            except OSError as e:  # a full disk must not fail the prediction
                log.warning("could not keep a low-confidence sample for upload: %s", e)

    def _observe(self, s: Serving, n: int, errors: int, abstained: int) -> str | None:
        self.counters["predictions"] += n
        self.counters["errors"] += errors
        w = self.window
        if w is None or self.active is None or s.bundle is not self.active.bundle:
            return None
        w["n"] += n
        w["errors"] += errors
        w["abstained"] += abstained
        if w["n"] < self.cfg.health_window:
            return None
        self.window = None  # judged once per swap
        err, abst = w["errors"] / w["n"], w["abstained"] / w["n"]
        if err > self.cfg.max_error_rate:
            return (
                f"error rate {err:.0%} over {w['n']} predictions after the swap exceeds {self.cfg.max_error_rate:.0%}"
            )
        if abst > self.cfg.max_abstain_rate:
            return f"abstain rate {abst:.0%} over {w['n']} predictions after the swap exceeds {self.cfg.max_abstain_rate:.0%}"
        return None

    # -- reporting ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The heartbeat body, minus events: version, health, counters."""
        s, a, lkg = self.serving, self.active, self.lkg
        health = (
            "ok" if s.model is not None and s.reason == "active bundle" else ("fallback" if s.model else "unavailable")
        )
        return {
            "device_id": self.cfg.device_id,
            "group": self.cfg.group,
            "health": health,
            "reason": s.reason,
            "version_id": a.bundle.version_id if a else None,
            "bundle_sequence": a.bundle.sequence if a else None,
            "bundle_sha256": a.bundle.sha256 if a else None,
            "serving_version": s.model.version_id if s.model else None,
            "lkg": {"version_id": lkg.bundle.version_id, "sequence": lkg.bundle.sequence} if lkg else None,
            "policy_generation": s.generation,
            "counters": dict(self.counters),
            "last_error": self.last_error,
            "watching_health": self.window is not None,
            "uptime_s": round(time.time() - self.started, 3),
            "uploads": self.outbox.stats(),
            "drift": self.drift.last,  # the last window tested against the bundle's profile
            "perf": self.perf.snapshot({"name": s.model.name, "version": s.model.version_id} if s.model else None),
        }

    def heartbeat(self) -> dict[str, Any]:
        with self.lock:
            outbox = [e for e in self.state["events"] if e["n"] > self.state["acked_event"]]
        return {**self.status(), "events": outbox}

    def ack_events(self, n: int) -> None:
        with self.lock:
            if n > self.state["acked_event"]:
                self.state["acked_event"] = n
                self.store.save_state(self.state)
