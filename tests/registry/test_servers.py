"""The server roster: who an operator's command waits for, and for how long."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from datamoat.registry.core import Registry
from datamoat.registry.servers import LIVE_WITHIN_S
from datamoat.registry.tables import servers


def _age(reg: Registry, server_id: str, seconds: float) -> None:
    """Make `server_id`'s last heartbeat `seconds` old, as if it had stopped beating then."""
    with reg.transaction() as conn:
        conn.execute(servers.update().where(servers.c.id == server_id).values(last_seen=time.time() - seconds))


def test_a_server_that_falls_silent_during_the_wait_stays_missing(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    reg.heartbeat("quiet", "http://a", "production", acked_generation=0)
    reg.heartbeat("gone", "http://b", "production", acked_generation=0)
    _age(reg, "quiet", LIVE_WITHIN_S - 0.2)  # live when the wait begins, silent from 0.2 s into it
    _age(reg, "gone", LIVE_WITHIN_S + 5)  # silent before the command: fenced, not waited for
    out = reg.wait_for_acks(1, timeout=1.0)
    # A silent server may be paused or cut off and still answering: it is reported, never dropped.
    assert out == {"acked": [], "missing": ["quiet"]}


def test_a_server_live_when_the_change_was_made_is_waited_for_though_silent_when_the_wait_begins(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    reg.heartbeat("srv", "http://h", "production", acked_generation=0)
    gen = reg.suppress("cat", actor="oncall", reason="incident")["generation"]
    made = max(e["ts"] for e in reg.audit_log() if e["generation"] == gen)
    _age(reg, "srv", time.time() - (made - LIVE_WITHIN_S + 0.5))  # live at the change, 0.5 s later not
    time.sleep(max(0.0, made + 0.6 - time.time()))  # the operator's process paused before it waited
    assert reg.wait_for_acks(gen, timeout=0.5) == {"acked": [], "missing": ["srv"]}


def test_a_server_that_left_is_not_waited_for_and_one_that_acks_is_acked(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    for sid in ("leaving", "applying"):
        reg.heartbeat(sid, "http://h", "production", acked_generation=0)

    def servers_act():
        time.sleep(0.3)
        reg.forget_server("leaving")  # a clean shutdown
        reg.heartbeat("applying", "http://h", "production", acked_generation=1)

    t = threading.Thread(target=servers_act)
    t.start()
    start = time.monotonic()
    out = reg.wait_for_acks(1, timeout=30)
    t.join()
    assert out == {"acked": ["applying"], "missing": []}
    assert time.monotonic() - start < 20  # it returned on the ack, not at the timeout


WAITER = """
import json, sys
from datamoat.registry.core import Registry
reg = Registry(sys.argv[1])
print("waiting", flush=True)
print(json.dumps(reg.wait_for_acks(1, timeout=float(sys.argv[2]))), flush=True)
"""


def test_a_pause_of_the_waiter_is_not_charged_to_the_servers(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    reg = Registry(url)
    reg.heartbeat("srv", "http://h", "production", acked_generation=0)
    p = subprocess.Popen([sys.executable, "-c", WAITER, url, "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGSTOP)  # the operator's machine stalls longer than the whole timeout
        time.sleep(2.5)
        os.kill(p.pid, signal.SIGCONT)
        time.sleep(0.5)  # the server acks only after the waiter ran again
        reg.heartbeat("srv", "http://h", "production", acked_generation=1)
        out, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert json.loads(out) == {"acked": ["srv"], "missing": []}
