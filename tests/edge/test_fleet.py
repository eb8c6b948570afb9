"""The fleet on loopback: a real control server process (`datamoat fleet
serve`) and five edge runtime processes (`datamoat edge run`), driven
through a staged rollout, an abort at its threshold, a refused downgrade,
corrupt bundles, a failing self-test, takedown and suppression, the control
server killed mid-download, and a device that rejoins after a takedown.

Every step waits on observable state (with a generous deadline, never a
timing threshold) and the timeline is printed (``pytest -s``) for the
closing note.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from dmtest import dm

from datamoat.edge.rollout import selected

from .helpers import bad_selftest_bundle, bundle, flip_model_byte, free_port

POLL = 0.3
DEADLINE = 45.0  # per step; a loaded 2-core CI machine is slow, the steps themselves take ~1 s


class Timeline:
    def __init__(self):
        self.t0, self.rows = time.monotonic(), []

    def mark(self, text: str) -> None:
        self.rows.append(f"{time.monotonic() - self.t0:6.2f}s  {text}")

    def __str__(self) -> str:
        return "\n".join(self.rows)


def _wait(what: str, cond, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while True:
        try:
            out = cond()
            if out:
                return out
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        assert time.monotonic() < end, f"timed out waiting for: {what}"
        time.sleep(0.05)


def _pick_devices(rollout_id: str) -> list[str]:
    """Five device ids, exactly one of them inside `rollout_id` at 20% (deterministic)."""
    names = [f"cam-{i:02d}" for i in range(100)]
    inside = [n for n in names if selected(n, rollout_id, 20)]
    outside = [n for n in names if not selected(n, rollout_id, 20)]
    return sorted([inside[0], *outside[:4]])


class Fleet:
    """The processes, and small probes into them."""

    def __init__(self, env, tl: Timeline):
        self.env, self.tl, self.procs, self.dev = env, tl, {}, {}
        self.url = f"sqlite:///{env.tmp / 'reg.db'}"
        self.ctl_port = free_port()
        self.ctl = f"http://127.0.0.1:{self.ctl_port}"
        self.environ = {**os.environ, "OMP_NUM_THREADS": "1"}

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.env.tmp / f"{name}.log").open("a")
        cmd = [sys.executable, "-m", "datamoat", "--home", str(self.env.tmp / "ws"), *args]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.environ)

    def start_control(self, *throttle: str) -> None:
        self._spawn(
            "control",
            "fleet",
            "serve",
            "--registry",
            self.url,
            "--control-key",
            str(self.env.keys["control"].path),
            "--port",
            str(self.ctl_port),
            *throttle,
        )
        _wait("control server up", lambda: httpx.get(f"{self.ctl}/healthz", timeout=1).status_code == 200)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.pop(name)
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def start_device(self, d: str) -> None:
        info = self.dev[d]
        trust = [a for k in info["trust"] for a in ("--trust", self.env.keys[k].public)]
        self._spawn(
            d,
            "edge",
            "run",
            "--server",
            self.ctl,
            "--device-id",
            d,
            "--token",
            info["token"],
            *trust,
            "--state-dir",
            str(self.env.tmp / d),
            "--group",
            "lab",
            "--port",
            str(info["port"]),
            "--poll-interval",
            str(POLL),
            "--control-trust",
            self.env.keys["control"].public,
        )

    def status(self, d: str) -> dict:
        token = (self.env.tmp / d / "install.token").read_text().strip()  # the device owner's credential
        url = f"http://127.0.0.1:{self.dev[d]['port']}/v1/edge/status"
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=2).json()

    def predict(self, d: str, i: int = 0) -> httpx.Response:
        body = {"inputs": self.env.x[i : i + 1].tolist()}
        return httpx.post(f"http://127.0.0.1:{self.dev[d]['port']}/v1/predict", json=body, timeout=5)

    def serving(self) -> dict[str, str | int]:
        out = {}
        for d in self.dev:
            r = self.predict(d)
            out[d] = r.json()["model_version"] if r.status_code == 200 else r.status_code
        return out

    def sequences(self) -> dict[str, int]:
        return {d: self.status(d)["bundle_sequence"] for d in self.dev}

    def has_event(self, d: str, kind: str, sha: str | None = None) -> dict | None:
        evs = self.status(d)["events"]
        return next((e for e in evs if e["kind"] == kind and (sha is None or e.get("sha256") == sha)), None)

    def close(self) -> None:
        for name in list(self.procs):
            self.procs[name].kill()
            self.procs.pop(name).wait()


@pytest.mark.slow
def test_fleet_end_to_end(fleet_env):
    env, tl = fleet_env, Timeline()
    fleet = env.fleet
    v1, v2, v3 = env.v
    devices = _pick_devices("lab-2")
    f = Fleet(env, tl)
    for i, d in enumerate(devices):  # the first two already trust the rotated key, the rest do not yet
        f.dev[d] = {
            "token": fleet.enroll(d, "lab", actor="ops"),
            "port": free_port(),
            "trust": ("release", "rotated") if i < 2 else ("release",),
        }
    b1 = fleet.publish(bundle(env, 0, 1), actor="ops")
    fleet.start_rollout(b1["sha"], "lab", 100, actor="ops")
    try:
        f.start_control()
        for d in devices:
            f.start_device(d)
        _wait("5 devices serving v1", lambda: f.serving() == dict.fromkeys(devices, v1), 90)
        tl.mark(f"control server + 5 devices up; all serve v1 ({v1}, bundle seq 1)")

        # 1. Staged rollout: 20%, then 100%. -------------------------------------------------------
        b2 = fleet.publish(bundle(env, 1, 2), actor="ops")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "datamoat",
                "rollout",
                v2,
                "--group",
                "lab",
                "--percent",
                "20",
                "--registry",
                f.url,
                "--json",
            ],
            capture_output=True,
            text=True,
            env=f.environ,
        )
        assert out.returncode == 0, out.stderr
        rid = json.loads(out.stdout)["id"]
        assert rid == "lab-2"
        inside = [d for d in devices if selected(d, rid, 20)]
        assert len(inside) == 1
        _wait("the 20% device on seq 2", lambda: all(f.sequences()[d] == 2 for d in inside))
        polls = {d: f.status(d)["counters"]["polls"] for d in devices}
        _wait("3 more polls everywhere", lambda: all(f.status(d)["counters"]["polls"] >= polls[d] + 3 for d in devices))
        assert f.sequences() == {d: 2 if d in inside else 1 for d in devices}
        tl.mark(f"rollout {rid} at 20%: {inside[0]} (stable hash) on v2; the other 4 stay on v1 after 3 more polls")
        fleet.start_rollout(b2["sha"], "lab", 100, actor="ops")
        _wait("all on seq 2", lambda: set(f.sequences().values()) == {2})
        assert sum(e["kind"] == "installed" for e in f.status(inside[0])["events"]) == 2  # never left v2
        tl.mark(f"{rid} raised to 100%: all 5 on v2 ({v2}); the early device kept its install")

        # 2. Abort at threshold: a bundle signed with a key only 2 of 5 devices trust yet. -------------
        bb = fleet.publish(bundle(env, 2, 3, key="rotated"), actor="ops")
        r3 = fleet.start_rollout(bb["sha"], "lab", 100, actor="ops", abort_percent=50)
        _wait(f"{r3['id']} aborted", lambda: fleet.current_rollout("lab")["state"] == "aborted")
        reason = fleet.current_rollout("lab")["reason"]
        assert "3 of 5" in reason  # 2 failures (40%) did not abort; the third (60%) did
        _wait("fleet back on seq 2", lambda: set(f.sequences().values()) == {2})
        assert f.serving() == dict.fromkeys(devices, v2)
        tl.mark(f"rollout {r3['id']} (v3 signed by the rotated key, abort at 50%): {reason}; fleet back on v2")

        # 3. A downgrade the operator did not allow. --------------------------------------------------
        r4 = fleet.start_rollout(b1["sha"], "lab", 100, actor="ops")
        _wait("downgrade refused everywhere", lambda: all(f.has_event(d, "refused", b1["sha"]) for d in devices))
        assert set(f.sequences().values()) == {2}
        tl.mark(f"rollout {r4['id']} back to seq 1 without --allow-downgrade: refused and logged by all 5")

        # 4. Corrupt bundles: unknown key, one tampered byte, truncated. --------------------------------
        good3 = bundle(env, 2, 4)
        corrupt = {
            "signed by an unknown key": (bundle(env, 2, 4, key="rogue"), {}),
            "one tampered byte": (flip_model_byte(good3), {}),
            "truncated": (good3[: len(good3) * 2 // 3], {"sequence": 4, "version_id": v3}),
        }
        for what, (data, claims) in corrupt.items():
            b = fleet.publish(data, actor="ops", **claims)
            fleet.start_rollout(b["sha"], "lab", 100, actor="ops")
            _wait(f"{what} rejected", lambda b=b: all(f.has_event(d, "rejected", b["sha"]) for d in devices))
            assert f.serving() == dict.fromkeys(devices, v2)
            why = f.has_event(devices[0], "rejected", b["sha"])["reason"]
            tl.mark(f"bundle {what}: rejected by all 5, v2 kept serving ({why})")

        # 5. A bundle that fails its self-test on the device. ------------------------------------------
        bs = fleet.publish(bad_selftest_bundle(env, 2, 5, other=0), actor="ops")
        fleet.start_rollout(bs["sha"], "lab", 100, actor="ops")
        _wait("self-test rollback", lambda: all(f.has_event(d, "rolled_back", bs["sha"]) for d in devices))
        assert f.serving() == dict.fromkeys(devices, v2)
        tl.mark(
            f"bundle failing its self-test: rolled back by all 5 ({f.has_event(devices[0], 'rolled_back')['reason']})"
        )

        # 6. Suppression and takedown reach every device within one poll. -------------------------------
        label = f.predict(devices[0]).json()["predictions"][0]["label"]
        changes = [
            (
                f"suppress label {label}",
                lambda: env.reg.suppress(label, actor="ops", reason="label under review"),
                lambda r: r.json()["predictions"][0]["abstained"],
            ),
            (
                "takedown v2",
                lambda: env.reg.takedown(v2, actor="ops", reason="incident 7"),
                lambda r: r.status_code == 503,
            ),
        ]
        for what, change, check in changes:
            t = time.monotonic()
            gen = change()["generation"]
            # Counts read after the change can only be at or past the count at the change, so
            # "applied by the poll in flight or the next one" holds however slowly we read them.
            polls = {d: f.status(d)["counters"]["polls"] for d in devices}
            _wait(f"{what} propagated", lambda check=check: all(check(f.predict(d)) for d in devices))
            took = time.monotonic() - t
            for d in devices:  # applied by the first poll that started after the change
                ev = next(e for e in f.status(d)["events"] if e["kind"] == "policy" and e["generation"] == gen)
                assert ev["poll"] <= polls[d] + 2
            tl.mark(
                f"{what} (registry generation {gen}): applied by all 5 on their next poll; "
                f"every device answered accordingly {took:.2f}s after the change (poll interval {POLL}s)"
            )
        env.reg.restore(v2, actor="ops", reason="fixed")
        env.reg.unsuppress(label, actor="ops", reason="reviewed")
        _wait("serving again", lambda: f.serving() == dict.fromkeys(devices, v2))

        # 7. The control server dies mid-download, and comes back. -------------------------------------
        f.stop("control")
        f.start_control("--chunk-size", "8192", "--chunk-delay", "0.15")  # ~4 s per download
        b3 = fleet.publish(good3, actor="ops")
        fleet.start_rollout(b3["sha"], "lab", 100, actor="ops")
        parts = [env.tmp / d / "downloads" / f"{b3['sha']}.part" for d in devices]
        quarter = b3["size"] // 4
        _wait("every device a quarter in", lambda: all(p.exists() and p.stat().st_size >= quarter for p in parts))
        f.stop("control", signal.SIGKILL)
        got = [p.stat().st_size for p in parts]
        tl.mark(f"control server killed (SIGKILL) mid-download: {min(got)}..{max(got)} of {b3['size']} bytes on disk")
        assert f.serving() == dict.fromkeys(devices, v2)  # offline: the last good bundle keeps serving
        tl.mark("server down: all 5 devices still answer with v2")
        f.start_control()
        _wait("all on v3", lambda: f.serving() == dict.fromkeys(devices, v3))
        for d in devices:
            ev = f.has_event(d, "download_resumed", b3["sha"])
            assert ev is not None and 0 < ev["offset"] < b3["size"]
        tl.mark(f"server back: every device resumed its download (HTTP Range) and serves v3 ({v3}, seq 4)")

        # 8. A device offline during a takedown applies it before serving again. ----------------------
        late = devices[-1]
        f.stop(late)
        gen = env.reg.takedown(v3, actor="ops", reason="incident 8")["generation"]
        others = devices[:-1]
        _wait("online devices 503", lambda: all(f.predict(d).status_code == 503 for d in others))
        f.start_device(late)
        port = f.dev[late]["port"]
        _wait(
            "late device listening",
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
            60,
        )
        first = f.predict(late)
        assert first.status_code == 503 and "incident 8" in first.json()["error"]
        assert f.status(late)["policy_generation"] == gen
        tl.mark(f"{late} restarted after takedown of v3: its very first answer is 503 (polled before serving)")
        env.reg.restore(v3, actor="ops", reason="false alarm")
        _wait("all back on v3", lambda: f.serving() == dict.fromkeys(devices, v3))

        st = dm(None, "fleet", "status", "--registry", f.url, "--json", env=f.environ)
        rows = json.loads(st.stdout)["devices"]
        _wait("heartbeats show v3", lambda: all(r["version"] == v3 for r in fleet.status()))
        assert {r["device_id"] for r in rows} == set(devices) and all(r["online"] for r in rows)
        tl.mark("restored: fleet status shows all 5 online on v3, health ok")
    finally:
        f.close()
        print("\nfleet test timeline\n" + str(tl))
