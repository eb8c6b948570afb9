"""The monitoring page: what production looks like against what the served version was validated on.

- ``GET /monitor``: a page shell with no data (inline CSS and JS, the same strict CSP as
  `/review`). The user pastes a token with role monitor or admin, kept in the tab's
  sessionStorage; every ten seconds the page asks for
- ``GET /v1/monitor``: the report, rendered on the server as an HTML fragment (every value
  escaped) with its facts as JSON beside it: the served version and its profile, the drift windows
  of the version (newest first, every server's) with a chart of the accuracy estimate and of the
  smallest p-value against the alarm level, the estimate beside the accuracy people found on
  audited answers, the live guarantee check, the servers on the registry, and the alias's canary
  and shadow, each compared with the served version on the inputs both answered, and each device's
  last drift window by site.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from datamoat.errors import DatamoatError
from datamoat.feedback.guarantee import check_guarantee
from datamoat.feedback.releases import compare_versions
from datamoat.inference.http import bearer
from datamoat.registry.ledger import audit_decisions
from datamoat.serve.review import page_response

__all__ = ["monitor_router", "monitor_report", "PAGE"]

monitor_router = APIRouter(tags=["monitor"])
WINDOWS = 50


async def monitor_actor(request: Request) -> str:
    return await request.app.state.serve.auth.check(bearer(request), ("monitor",))


def monitor_report(reg: Any, alias: str, version: str | None) -> dict[str, Any]:
    """The facts the page shows, for `version` (the one `alias` serves)."""
    out: dict[str, Any] = {"alias": alias, "version": version, "servers": reg.servers()}
    if version is None:
        return out
    prof = reg.profile(version)
    out["profile"] = None if prof is None else {k: prof[k] for k in ("dataset_id", "n", "accuracy", "atc_threshold")}
    wins = reg.drift_windows(version=version, limit=4 * WINDOWS)  # the servers'; devices have their own table
    out["windows"] = [w for w in wins if not w["server_id"].startswith("device:")][:WINDOWS]
    audited = audit_decisions(reg.engine, version)
    out["reviewed"] = {"n": len(audited), "accuracy": sum(audited) / len(audited) if audited else None}
    try:
        out["guarantee"] = check_guarantee(reg, version)
    except DatamoatError as e:  # no poc target: nothing to check
        out["guarantee"] = {"error": str(e)}
    out["devices"] = devices_by_site(reg)
    out["releases"] = []
    for rel in reg.releases(alias):  # the alias's canary and shadow against what it serves
        cmp = compare_versions(reg, version, rel["version_id"], alias)["by_kind"][rel["kind"]]
        out["releases"].append({**{k: rel[k] for k in ("kind", "version_id", "percent", "rules")}, "compare": cmp})
    return out


def devices_by_site(reg: Any, limit: int = 2000) -> dict[str, list[dict[str, Any]]]:
    """Each device's last drift window (as its heartbeats reported it), by site (its fleet group)."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for w in reg.drift_windows(limit=limit):  # newest first
        if w["server_id"].startswith("device:") and w["server_id"] not in seen:
            seen.add(w["server_id"])
            out.setdefault(w["alias"].removeprefix("edge:"), []).append(w)
    return {site: sorted(ws, key=lambda w: w["server_id"]) for site, ws in sorted(out.items())}


def _e(v: Any) -> str:
    return html.escape(str(v))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _chart(windows: list[dict[str, Any]]) -> str:
    """An inline SVG: the estimate (blue, 0..100%) and -log10 of the smallest p-value (red, scaled
    to its range) per window, oldest left, with the alarm level dashed."""
    if len(windows) < 2:
        return "<p><small>The chart appears after two windows.</small></p>"
    ws = list(reversed(windows))
    w, h, n = 600, 160, len(ws)
    xs = [10 + i * (w - 20) / (n - 1) for i in range(n)]
    est = [h - 10 - (h - 20) * x["estimate"]["estimate"] for x in ws]
    score = [-math.log10(max(min(x["p_values"].values()), 1e-12)) for x in ws]
    level = -math.log10(ws[-1]["level"])
    top = max(max(score), level) * 1.1
    sy = [h - 10 - (h - 20) * s / top for s in score]

    def line(ys: list[float], colour: str) -> str:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'

    ly = h - 10 - (h - 20) * level / top
    return (
        f'<svg id="chart" width="{w}" height="{h}" role="img" aria-label="estimate and drift score per window">'
        f'<rect width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>'
        f'<line x1="10" x2="{w - 10}" y1="{ly:.1f}" y2="{ly:.1f}" stroke="#b91c1c" stroke-dasharray="4 3"/>'
        f"{line(est, '#2563eb')}{line(sy, '#b91c1c')}</svg>"
        '<p><small><span style="color:#2563eb">blue</span>: accuracy estimate (ATC); '
        '<span style="color:#b91c1c">red</span>: -log10 of the smallest p-value, alarm above the dashed line.</small></p>'
    )


def render_report(r: dict[str, Any]) -> str:
    """The report as an HTML fragment; every value is escaped."""
    parts = [f'<h2>{_e(r["alias"])} &rarr; <code id="served">{_e(r["version"] or "nothing served")}</code></h2>']
    if r["version"] is None:
        return "".join(parts)
    prof = r["profile"]
    parts.append(
        "<p>No reference profile: <code>datamoat registry profile VERSION</code> records one.</p>"
        if prof is None
        else f"<p>Profile: {_e(prof['n'])} validation samples of <code>{_e(prof['dataset_id'])}</code>, "
        f"accuracy {_pct(prof['accuracy'])}.</p>"
    )
    wins = r["windows"]
    last = wins[0] if wins else None
    state = (
        "no windows yet" if last is None else ("ALARM: " + ", ".join(last["fired"]) if last["alarm"] else "no drift")
    )
    parts.append(
        f'<h3>Drift</h3><p id="drift-state" class="{"bad" if last and last["alarm"] else "ok"}">{_e(state)}</p>'
    )
    parts.append(_chart(wins))
    est = last["estimate"] if last else None
    rev = r["reviewed"]
    parts.append(
        "<h3>Accuracy</h3><table><tr><th>label-free estimate (last window)</th><th>reviewed (audited answers)</th></tr>"
        f'<tr><td id="estimate">{_pct(est and est["estimate"])}'
        + (f" <small>({_pct(est['low'])}-{_pct(est['high'])})</small>" if est else "")
        + f'</td><td id="reviewed">{_pct(rev["accuracy"])} <small>on {_e(rev["n"])}</small></td></tr></table>'
    )
    g = r["guarantee"]
    if "error" in g:
        parts.append(f'<h3>Guarantee</h3><p id="guarantee">{_e(g["error"])}</p>')
    else:
        word = f"FAILED at review {g['failed_at']}" if g["failed"] else "holding"
        parts.append(
            f'<h3>Guarantee</h3><p id="guarantee" class="{"bad" if g["failed"] else "ok"}">{_e(word)}: target '
            f"{_pct(g['target_accuracy'])}, {_e(g['reviews'])} audited reviews, evidence {g['wealth']:.2f} of "
            f"{g['fails_at_wealth']:g}</p>"
        )
    rows = "".join(
        f"<tr><td>{_e(time.strftime('%H:%M:%S', time.localtime(w['ts'])))}</td><td>{_e(w['server_id'])}</td>"
        f"<td>{_e(w['n'])}</td><td>{'ALARM' if w['alarm'] else 'ok'}</td><td>{_e(', '.join(w['fired']))}</td>"
        f"<td>{min(w['p_values'].values()):.2g}</td><td>{_pct(w['estimate']['estimate'])}</td></tr>"
        for w in wins[:20]
    )
    parts.append(
        '<h3>Windows</h3><table id="windows"><tr><th>time</th><th>server</th><th>n</th><th>result</th>'
        f"<th>fired</th><th>min p</th><th>estimate</th></tr>{rows}</table>"
    )
    servers = "".join(
        f"<li>{_e(s['id'])} ({_e(s['alias'])}) {'live' if s['live'] else 'gone'}</li>" for s in r["servers"]
    )
    parts.append(f"<h3>Servers</h3><ul>{servers}</ul>")
    parts.append(_releases(r["releases"]))
    parts.append(_devices(r["devices"]))
    return "".join(parts)


def _devices(sites: dict[str, list[dict[str, Any]]]) -> str:
    """Each device's last window by site; values escaped."""
    if not sites:
        return '<h3>Devices by site</h3><p id="devices">No device has reported a drift window yet.</p>'
    rows = "".join(
        f"<tr><td>{_e(site)}</td><td>{_e(w['server_id'].removeprefix('device:'))}</td><td><code>{_e(w['version_id'])}</code></td>"
        f"<td>{_e(time.strftime('%H:%M:%S', time.localtime(w['ts'])))}</td><td>{_e(w['n'])}</td>"
        f'<td class="{"bad" if w["alarm"] else "ok"}">{"ALARM: " + _e(", ".join(w["fired"])) if w["alarm"] else "ok"}</td>'
        f"<td>{_pct(w['estimate']['estimate'])}</td></tr>"
        for site, ws in sites.items()
        for w in ws
    )
    return (
        '<h3>Devices by site</h3><table id="devices"><tr><th>site</th><th>device</th><th>version</th><th>last window</th>'
        f"<th>n</th><th>result</th><th>estimate</th></tr>{rows}</table>"
    )


def _releases(releases: list[dict[str, Any]]) -> str:
    """The canary and shadow beside the served version, each compared with it on the same inputs.
    Every cell is built escaped: values with `_e`, numbers formatted."""
    if not releases:
        return '<h3>Releases</h3><p id="releases">No canary or shadow: <code>datamoat promote V --canary 10</code>.</p>'
    rows = []
    for rel in releases:
        c, lab = rel["compare"], rel["compare"]["labelled"]
        share = f"{rel['percent']:g}%" if rel["kind"] == "canary" else "off the path"
        cells = [_e(rel["kind"]), f"<code>{_e(rel['version_id'])}</code>", _e(share), _e(c["n"])]
        if c["n"]:
            conf = c["confidence"]
            cells += [_pct(c["agreement"]), f"{conf['mean_a']:.3f} &rarr; {conf['mean_b']:.3f}"]
            cells.append(f"{c['class_mix']['tvd']:.3f}")
        else:
            cells += ["-", "-", "-"]
        if lab:
            p = lab["mcnemar"]["p_value"]
            cells.append(
                f"{_pct(lab['accuracy_a'])} &rarr; {_pct(lab['accuracy_b'])} on {lab['n']} <small>(p={p:.2g})</small>"
            )
        else:
            cells.append("no labels yet")
        cells.append("by its rules" if rel["rules"] else "by a person")
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    return (
        '<h3>Releases</h3><table id="releases"><tr><th>kind</th><th>version</th><th>traffic</th><th>pairs</th>'
        "<th>agreement</th><th>confidence</th><th>class mix moved</th><th>accuracy (labelled)</th><th>decided</th></tr>"
        + "".join(rows)
        + "</table>"
    )


@monitor_router.get("/v1/monitor")
async def monitor_data(request: Request, _: str = Depends(monitor_actor)) -> dict[str, Any]:
    """The page's report: its facts, and the same rendered as an HTML fragment."""
    ctx = request.app.state.serve
    st = ctx.controller.state
    report = await asyncio.to_thread(monitor_report, ctx.registry, st.alias, st.version_id)
    return {"report": report, "html": render_report(report)}


@monitor_router.get("/monitor", response_class=HTMLResponse, include_in_schema=False)
async def monitor_page() -> HTMLResponse:
    """The page shell (it holds no data: the API call carries the token)."""
    return page_response(PAGE)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>datamoat monitor</title><link rel="icon" href="data:,">
<style>
body{font:15px system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1c2330}
header{display:flex;gap:1rem;align-items:baseline;padding:.6rem 1rem;background:#1c2330;color:#fff}
header button{margin-left:auto}
section{padding:1rem 1.25rem}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
.bad{color:#b91c1c;font-weight:700}.ok{color:#15803d}.hidden{display:none}#error{color:#b91c1c}small{color:#555}
</style></head>
<body>
<header><strong>datamoat monitor</strong><span id="updated"></span>
<button id="signout" class="hidden" type="button">sign out</button></header>
<section id="signin"><form id="signin-form"><label for="token">Monitor token</label>
<input id="token" type="password" autocomplete="off" size="50" autofocus> <button type="submit">Sign in</button></form>
<p><small>A token with role monitor or admin (<code>datamoat tokens create --role monitor</code>). It stays in this tab only.</small></p>
</section>
<section id="report"></section>
<section><p id="error" role="alert"></p></section>
<script>
"use strict";
const KEY = "datamoat.monitor.token";
const $ = (id) => document.getElementById(id);
let timer = null;
function signedIn(on, why) {
  $("signin").classList.toggle("hidden", on); $("signout").classList.toggle("hidden", !on);
  if (!on) { clearTimeout(timer); $("report").replaceChildren(); $("error").textContent = why || ""; }
}
async function load() {
  clearTimeout(timer);
  try {
    const r = await fetch("/v1/monitor", {headers: {"Authorization": "Bearer " + sessionStorage.getItem(KEY)}});
    const data = await r.json();
    if (r.status === 401 || r.status === 403) { sessionStorage.removeItem(KEY); signedIn(false, data.error); return; }
    if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
    $("report").innerHTML = data.html;  // rendered and escaped by the server
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("error").textContent = "";
  } catch (e) { $("error").textContent = e.message; }
  timer = setTimeout(load, 10000);
}
$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim(); if (!t) return;
  sessionStorage.setItem(KEY, t); $("token").value = ""; signedIn(true); load();
});
$("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); signedIn(false); });
if (sessionStorage.getItem(KEY)) { signedIn(true); load(); } else { signedIn(false); }
</script>
</body></html>
"""
