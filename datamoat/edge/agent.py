"""The device's side of the control protocol: poll, download, report.

One poll is one request, ``POST /v1/edge/devices/{id}/sync``: the body is
the heartbeat (version, health, counters, and the events the server has not
acknowledged yet), the answer is the assignment (the bundle to run, whether
a downgrade is allowed, and the policy overlay), signed with the control
key the device trusts (`datamoat.edge.controldoc`): the device acts on the
signed text only, and never on an answer older than one it applied. The overlay is applied
before anything else, so a takedown or suppression reaches the device one
poll after the registry changed, with no new bundle.

Downloads are resumable: bytes go to ``downloads/<sha>.part`` as they
arrive, and the next attempt asks for the rest with an HTTP Range request.
A server that dies mid-download costs only the time it is down. A complete
download must match the advertised size and sha256 before its signature is
even checked; a bundle that fails verification or its self-test is
remembered and not fetched again.

While the server is unreachable the device keeps serving its last good
bundle under its last known policy, and catches up on the first poll that
gets through.

After the sync, the poll flushes the runtime's outbox of low-confidence
samples (``POST /v1/edge/devices/{id}/uploads``, in batches, oldest
first): what the server acknowledges leaves the outbox, the rest waits for
the next poll, so an offline device uploads its backlog when it is back.
An item the server refuses for good (its error names the item) is dropped
and counted as rejected; a 413 halves the batch; a 429 waits a poll.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from typing import Any

import httpx

from datamoat.edge.controldoc import ControlRefused, open_answer
from datamoat.edge.keys import load_public_key
from datamoat.edge.runtime import EdgeRuntime
from datamoat.edge.store import is_sha256

__all__ = ["SyncAgent", "SyncError"]

log = logging.getLogger("datamoat.edge")
_MAX_BAD_DOWNLOADS = 3


class SyncError(Exception):
    """The control server answered, but not with what the device needs."""


class SyncAgent:
    """Polls the control server for one runtime, on a background thread.

    >>> agent = SyncAgent(runtime)  # doctest: +SKIP
    >>> agent.sync_once()["bundle"]["sequence"]  # doctest: +SKIP
    4
    """

    def __init__(self, runtime: EdgeRuntime, client: httpx.Client | None = None):
        cfg = runtime.cfg
        self.rt, self.cfg = runtime, cfg
        self.client = client or httpx.Client(
            base_url=cfg.server,
            timeout=cfg.request_timeout_s,
            headers={"Authorization": f"Bearer {cfg.token}"},
            verify=ssl.create_default_context(cafile=cfg.ca_cert) if cfg.ca_cert else True,
        )
        self.control_trusted = [load_public_key(p) for p in cfg.control_trust]
        self.online: bool | None = None
        self.downloading: dict[str, Any] | None = None
        self.assignment: dict[str, Any] | None = None
        self._bad_downloads: dict[str, int] = {}
        self.upload_batch = cfg.upload_batch
        self.upload_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one poll ---------------------------------------------------------------------------
    def sync_once(self, download: bool = True) -> dict[str, Any]:
        """Heartbeat, apply the overlay, then follow the assignment. Raises on network errors."""
        rt = self.rt
        rt.counters["polls"] += 1
        body = {**rt.heartbeat(), "online_since_last": self.online, "downloading": self.downloading}
        r = self.client.post(f"/v1/edge/devices/{self.cfg.device_id}/sync", json=body)
        if r.status_code != 200:
            raise SyncError(f"sync refused ({r.status_code}): {_error(r)}")
        a = self._open(r.json())
        if self.online is False:
            rt.event("online")
        self.online, self.assignment = True, a
        rt.ack_events(int(a.get("acked_event", 0)))
        rt.apply_policy(a["policy"])
        self.flush_uploads()
        if download:
            self.follow(a)
        return a

    def _open(self, answer: Any) -> dict[str, Any]:
        """The answer this device may act on: the signed document, never older than the last applied."""
        if not isinstance(answer, dict):
            raise SyncError("sync answer is not a JSON object")
        if not self.control_trusted:  # insecure_control: validated in EdgeConfig
            return answer
        try:
            doc = open_answer(answer, self.control_trusted, self.cfg.device_id, self.rt.state["control_floor"])
        except ControlRefused as e:
            if self.rt.last_error != str(e):  # once per cause, not once per poll
                self.rt.last_error = str(e)
                self.rt.event("control_refused", reason=str(e))
            raise SyncError(str(e)) from None
        if doc["seq"] != self.rt.state["control_floor"]:
            with self.rt.lock:
                self.rt.state["control_floor"] = doc["seq"]
                self.rt.store.save_state(self.rt.state)
        return doc

    def flush_uploads(self, max_requests: int = 50) -> int:
        """Send the outbox to the control server; returns how many items it acknowledged.

        Never raises: a failed upload leaves the items for the next poll.

        >>> agent.flush_uploads()  # doctest: +SKIP
        3
        """
        box, url, sent = self.rt.outbox, f"/v1/edge/devices/{self.cfg.device_id}/uploads", 0
        for _ in range(max_requests):
            batch = box.peek(self.upload_batch)
            if not batch:
                self.upload_error = None
                break
            try:
                r = self.client.post(url, json={"items": [item for _, item in batch]})
            except httpx.HTTPError as e:
                self.upload_error = f"{type(e).__name__}: {e}"
                break
            body = _json(r)
            if r.status_code == 200:
                acked = set(body.get("acked", []))
                done = [name for name, item in batch if item.get("prediction_id") in acked]
                box.remove(done, "uploaded")
                sent += len(done)
                if body.get("rate_limited") or not done:
                    self.upload_error = str(body.get("error") or "the server acknowledged nothing")
                    break
                continue
            self.upload_error = f"upload refused ({r.status_code}): {_error(r)}"
            bad = body.get("item")
            if r.status_code == 413 and bad is None and len(batch) > 1:
                self.upload_batch = max(1, len(batch) // 2)  # the server takes smaller batches
                continue
            if r.status_code in (409, 413, 422) and (isinstance(bad, int) or len(batch) == 1):
                # This item can never be accepted (e.g. a version the server does not know): do not retry it.
                name, item = batch[bad if isinstance(bad, int) and 0 <= bad < len(batch) else 0]
                box.remove([name], "rejected")
                self.rt.event("upload_rejected", prediction_id=item.get("prediction_id"), reason=_error(r))
                continue
            break  # 401/403/429/5xx: keep everything for a later poll
        return sent

    def follow(self, a: dict[str, Any]) -> dict[str, Any] | None:
        """Install the assigned bundle if it is new to this device; returns the install outcome."""
        rt, b = self.rt, a.get("bundle")
        if not b:
            return None
        sha = b["sha256"]
        if not is_sha256(sha):
            # The control server is not trusted with paths: the hash names a file on this device.
            raise SyncError(f"assignment refused: bundle sha256 {str(sha)[:80]!r} is not 64 lowercase hex digits")
        cur = rt.active.bundle if rt.active else None
        if (cur is not None and cur.sha256 == sha) or sha in rt.state["rejected"]:
            return None
        if sha in rt.state["refused"] and not a["allow_downgrade"]:
            return None
        if cur is not None and b["sequence"] <= cur.sequence and not a["allow_downgrade"]:
            # Checked again on the signed manifest after download; this saves fetching a replay.
            why = (
                f"downgrade refused: assigned sequence {b['sequence']} is not newer than the running "
                f"{cur.sequence}, and the operator did not allow a rollback"
            )
            return rt._outcome("refused", sha, why, a.get("rollout_id"), "ota")
        data = rt.local_copy(sha) or self._download(b)
        if data is None:
            return None
        return rt.install_bytes(
            data, source="ota", allow_downgrade=a["allow_downgrade"], rollout_id=a.get("rollout_id")
        )

    def _download(self, b: dict[str, Any]) -> bytes | None:
        sha, size = b["sha256"], int(b["size"])
        if not 0 < size <= self.rt.cfg.max_bundle_bytes:  # the server's word sizes nothing on this device
            why = (
                f"assigned bundle of {size} bytes is outside this device's 1..{self.rt.cfg.max_bundle_bytes}-byte limit"
            )
            self.rt._outcome("rejected", sha, why, None, "ota")
            return None
        part = self.rt.store.part(sha)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            if have:
                self.rt.counters["resumed_downloads"] += 1
                self.rt.event("download_resumed", sha256=sha, offset=have, size=size)
            self.downloading = {"sha256": sha, "have": have, "size": size}
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self.client.stream("GET", b["url"], headers=headers) as r:
                if r.status_code not in (200, 206):
                    r.read()
                    raise SyncError(f"download of {sha[:12]} refused ({r.status_code}): {_error(r)}")
                if r.status_code == 200:
                    have = 0  # the server sent the whole file
                with part.open("ab" if have else "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                        f.flush()  # each chunk on disk as it comes: the resume point survives a crash
                        have += len(chunk)
                        self.downloading["have"] = have
                        if have > size:
                            break
            self.rt.counters["downloads"] += 1
        self.downloading = None
        data = part.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            part.unlink(missing_ok=True)
            n = self._bad_downloads[sha] = self._bad_downloads.get(sha, 0) + 1
            why = f"download does not match the advertised size/sha256 ({len(data)} of {size} bytes)"
            if n >= _MAX_BAD_DOWNLOADS:  # the server's copy itself is bad: stop fetching it
                self.rt._outcome("rejected", sha, why, None, "ota")
            else:
                self.rt.event("download_corrupt", sha256=sha, reason=why, attempt=n)
            return None
        return data

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Poll until `stop()`; never raises (offline is a state, not an error)."""
        while not self._stop.is_set():
            installed = False
            try:
                before = self.rt.state["next_event"]
                self.sync_once()
                installed = self.rt.state["next_event"] != before  # report outcomes at once
            except (httpx.HTTPError, SyncError, OSError) as e:
                self.rt.counters["poll_failures"] += 1
                if self.online is not False:
                    self.rt.event("offline", reason=f"{type(e).__name__}: {e}")
                    log.warning("control server unreachable, serving the last good bundle: %s", e)
                self.online = False
            except Exception:  # a bug must not stop the device from serving
                log.exception("sync failed")
            self._stop.wait(0.0 if installed else self.cfg.poll_interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="edge-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.client.close()


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error"))
    except Exception:
        return r.text[:200]
