"""Webhooks against a receiver this test runs: signed deliveries, retries, subscriptions by event,
and the CLI's incident commands sending them."""

import json

import pytest
from dmtest import Receiver, dm, dm_ok

from datamoat.errors import BadInput
from datamoat.registry.alerts import send_alert, sign, verify_signature
from datamoat.registry.core import Registry

SECRET = "a-secret-of-24-characters"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def verified(headers, body):
    h = {k.lower(): v for k, v in headers.items()}
    return verify_signature(SECRET.encode(), h["x-datamoat-timestamp"], body, h["x-datamoat-signature"])


def test_a_delivery_is_signed_and_retried_until_accepted(receiver):
    reg = Registry("sqlite://")
    receiver.statuses = [500, 503]
    reg.add_webhook(receiver.url, SECRET, [], actor="t")
    out = send_alert(reg, "takedown", {"version": "abc"}, backoff_s=0.01)
    assert out[0]["ok"] and out[0]["attempts"] == 3 and len(receiver.got) == 3
    for headers, body in receiver.got:
        assert verified(headers, body) and json.loads(body)["data"] == {"version": "abc"}
    headers, body = receiver.got[-1]
    assert not verified(headers, body.replace(b"abc", b"abd"))  # a changed body fails the check


def test_a_receiver_that_never_accepts_is_reported_not_raised(receiver):
    reg = Registry("sqlite://")
    receiver.statuses = [500] * 5
    reg.add_webhook(receiver.url, SECRET, ["drift"], actor="t")
    out = send_alert(reg, "drift", {}, attempts=2, backoff_s=0.01)
    assert out == [{"id": out[0]["id"], "url": receiver.url, "status": 500, "attempts": 2, "ok": False}]
    assert send_alert(reg, "promote", {}) == []  # not subscribed to promote


def test_old_or_forged_signatures_are_refused():
    body, ts = b'{"event": "promote"}', "1700000000"
    good = sign(SECRET.encode(), ts, body)
    assert verify_signature(SECRET.encode(), ts, body, good, now=1700000100)
    assert not verify_signature(SECRET.encode(), ts, body, good, now=1700000000 + 301)  # a replay, later
    assert not verify_signature(b"another-secret-0000", ts, body, good, now=1700000100)
    assert not verify_signature(SECRET.encode(), "not-a-time", body, good)


@pytest.mark.parametrize(
    "url, secret, events, why",
    [
        ("ftp://x/y", SECRET, [], "must be http"),
        ("http://user:pw@host/x", SECRET, [], "no credentials"),
        ("http://host/x", "short", [], "at least 16"),
        ("http://host/x", SECRET, ["everything"], "unknown event"),
    ],
)
def test_bad_subscriptions_are_refused(url, secret, events, why):
    with pytest.raises(BadInput, match=why):
        Registry("sqlite://").add_webhook(url, secret, events, actor="t")


def test_the_cli_subscribes_and_incident_commands_alert(tmp_path, receiver):
    home = tmp_path / "ws"
    dm_ok(home, "init")
    r = dm(home, "alerts", "add", receiver.url, "--json", env={"DATAMOAT_WEBHOOK_SECRET": ""})
    assert r.returncode == 2 and "DATAMOAT_WEBHOOK_SECRET" in r.stderr
    hook = json.loads(
        dm_ok(home, "alerts", "add", receiver.url, "--json", env={"DATAMOAT_WEBHOOK_SECRET": SECRET}).stdout
    )
    listed = json.loads(dm_ok(home, "alerts", "list", "--json").stdout)["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and SECRET not in json.dumps(listed)
    out = json.loads(dm_ok(home, "suppress", "cat", "--reason", "a test", "--wait", "0", "--json").stdout)
    assert out["alerts"][0]["ok"] and receiver.events() == ["suppress"] and verified(*receiver.got[0])
    dm_ok(home, "alerts", "remove", hook["id"])
    dm_ok(home, "unsuppress", "cat", "--reason", "done", "--wait", "0")
    assert receiver.events() == ["suppress"]
