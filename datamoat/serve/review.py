"""The review queue over HTTP: a page for people, and the API behind it.

- ``GET /review``: one self-contained page (inline CSS and JS, nothing
  fetched from elsewhere). The reviewer signs in by pasting a token with
  role review or admin, kept in the tab's sessionStorage and sent as Bearer.
  It shows the image (scaled to fit: sharp pixels when it is tiny, smooth
  when it is a photo, see `image_rendering`), the top-3 labels with their
  probabilities, the model version and the queue length. Keyboard only:
  1-3 pick one of the top-3, the arrow keys move through all classes, Enter
  confirms the selected label and loads the next item.
- ``GET /v1/review/next``: the oldest open item (image as a PNG data URL,
  with its shape and CSS ``image-rendering``) and the queue length.
- ``POST /v1/review/{prediction_id}`` with ``{"label": ...}``: records the
  decision (into the feedback quarantine as a trusted reviewer, see
  `ReviewQueue.decide`), takes the item out of the queue, and returns the
  next one. 404: unknown item, 409: already decided, 422: not a class.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from datamoat.inference.http import bearer

__all__ = ["review_router", "review_actor", "png_data_url", "image_rendering", "page_response", "PAGE"]

review_router = APIRouter(tags=["review"])


async def review_actor(request: Request) -> str:
    """The reviewer's token name (role review, or admin): always required."""
    return await request.app.state.serve.auth.check(bearer(request), ("review",))


def png_data_url(pixels: np.ndarray) -> str:
    """A uint8 (C, H, W) image as a PNG data URL (grey for C != 3: the first channel).

    >>> png_data_url(np.zeros((1, 2, 2), np.uint8))[:22]
    'data:image/png;base64,'
    """
    from PIL import Image

    img = Image.fromarray(pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels[0])  # (H, W[, 3])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_PIXELATED_BELOW = 64  # px: a smaller image is scaled up a lot, and blurs unless drawn with sharp pixels


def image_rendering(shape: tuple[int, ...]) -> str:
    """The CSS ``image-rendering`` for a (C, H, W) image on the page: ``pixelated``
    for tiny inputs (8x8 digits, 28x28 Fashion-MNIST), ``auto`` (smooth) from
    `_PIXELATED_BELOW` px a side, such as photos rendered at 96 or 224 px.

    >>> image_rendering((1, 28, 28)), image_rendering((3, 224, 224))
    ('pixelated', 'auto')
    """
    return "pixelated" if max(shape[1:]) < _PIXELATED_BELOW else "auto"


def _public(nxt: dict[str, Any]) -> dict[str, Any]:
    item = nxt["item"]
    if item is not None:
        pixels = item.pop("pixels")
        item.update(image=png_data_url(pixels), shape=list(pixels.shape), rendering=image_rendering(pixels.shape))
    return nxt


class DecisionIn(BaseModel):
    label: str = Field(min_length=1, max_length=200, description="The correct class name.")


@review_router.get("/v1/review/next")
async def review_next(request: Request, actor: str = Depends(review_actor)) -> dict[str, Any]:
    """The oldest open review item and the queue length (item null when the queue is empty)."""
    ctx = request.app.state.serve
    await ctx.plog.flush()  # an answer flagged a moment ago may still be buffered
    return _public(await asyncio.to_thread(ctx.review.next))


@review_router.post("/v1/review/{prediction_id}")
async def review_decide(
    body: DecisionIn,
    request: Request,
    prediction_id: str = Path(min_length=1, max_length=64),
    actor: str = Depends(review_actor),
) -> dict[str, Any]:
    """Record the correct label of a review item; returns the decision and the next item."""
    ctx = request.app.state.serve
    await ctx.plog.flush()
    decided = await asyncio.to_thread(ctx.review.decide, prediction_id, body.label, actor)
    return {"decided": decided, **_public(await asyncio.to_thread(ctx.review.next))}


# Only this page's own inline code and same-origin API calls: no CDN, no exfiltration.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def page_response(page: str) -> HTMLResponse:
    """A self-contained page under the strict CSP above, never cached (`/review`, `/monitor`)."""
    return HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"})


@review_router.get("/review", response_class=HTMLResponse, include_in_schema=False)
async def review_page() -> HTMLResponse:
    """The review page (it holds no data: the API calls carry the token)."""
    return page_response(PAGE)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>datamoat review</title>
<link rel="icon" href="data:,">
<style>
body{font:16px system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1c2330}
header{display:flex;gap:1.5rem;align-items:baseline;padding:.6rem 1rem;background:#1c2330;color:#fff}
header button{margin-left:auto}
section,main{padding:1.25rem}
main{display:flex;gap:2rem;flex-wrap:wrap;align-items:flex-start}
#image{width:280px;height:280px;object-fit:contain;background:#000;border:1px solid #999}
ol,ul{padding:0;margin:.3rem 0;list-style:none}
li{padding:.25rem .5rem;border:2px solid transparent;border-radius:4px}
li.sel{border-color:#2563eb;background:#dbeafe}
#classes{columns:2;max-width:22rem}
.key{display:inline-block;width:1.4em;font-weight:700;color:#2563eb}
.p{color:#555;margin-left:.5em}
.hidden{display:none}
#error{color:#b91c1c}
kbd{border:1px solid #999;border-radius:3px;padding:0 .3em;background:#fff}
small{color:#555}
</style></head>
<body>
<header><strong>datamoat review</strong><span>queue: <b id="queue-length">-</b></span>
<span>model: <b id="version">-</b></span>
<button id="signout" class="hidden" type="button">sign out</button></header>
<section id="signin">
<form id="signin-form"><label for="token">Reviewer token</label>
<input id="token" type="password" autocomplete="off" size="50" autofocus> <button type="submit">Sign in</button></form>
<p><small>Paste a token with role review or admin (<code>datamoat tokens create --role review</code>).
It stays in this tab only.</small></p>
</section>
<section id="empty" class="hidden"><p>The queue is empty. This page checks again every few seconds.</p></section>
<main id="review" class="hidden">
<div><img id="image" alt="the input under review"><p><small id="reason"></small></p>
<p><small>prediction <code id="pid"></code></small></p></div>
<div><h3>Top 3</h3><ol id="top3"></ol>
<p>selected: <b id="selected"></b></p>
<p><small><kbd>1</kbd>-<kbd>3</kbd> pick, <kbd>&uarr;</kbd><kbd>&darr;</kbd> move, <kbd>Enter</kbd> confirm
and go to the next item</small></p>
<h3>All classes</h3><ul id="classes"></ul></div>
</main>
<section><p id="status" role="status"></p><p id="error" role="alert"></p></section>
<script>
"use strict";
const KEY = "datamoat.review.token";
const $ = (id) => document.getElementById(id);
let item = null, sel = 0, busy = false, poll = null;

function signedIn(on, why) {
  $("signin").classList.toggle("hidden", on);
  $("signout").classList.toggle("hidden", !on);
  if (!on) {
    item = null; clearTimeout(poll);
    $("review").classList.add("hidden"); $("empty").classList.add("hidden");
    $("error").textContent = why || ""; $("token").focus();
  }
}

async function api(method, path, body) {
  const headers = {"Authorization": "Bearer " + sessionStorage.getItem(KEY)};
  if (body) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers, body: body ? JSON.stringify(body) : undefined});
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401 || r.status === 403) {
    sessionStorage.removeItem(KEY);
    signedIn(false, (data && data.error) || "sign in again");
  }
  if (!r.ok) {
    const err = new Error((data && data.error) || ("HTTP " + r.status));
    err.status = r.status;
    throw err;
  }
  return data;
}

function li(parent, text, extra) {
  const el = document.createElement("li");
  if (extra !== undefined) { const k = document.createElement("span"); k.className = "key"; k.textContent = extra; el.append(k); }
  el.append(document.createTextNode(text));
  parent.append(el);
  return el;
}

function render(data) {
  clearTimeout(poll);
  $("queue-length").textContent = data.queue_length;
  item = data.item;
  document.body.dataset.item = item ? item.prediction_id : "";
  $("review").classList.toggle("hidden", !item);
  $("empty").classList.toggle("hidden", !!item);
  if (!item) { $("version").textContent = "-"; poll = setTimeout(load, 3000); return; }
  $("image").src = item.image;
  $("image").style.imageRendering = item.rendering;
  $("version").textContent = item.model_version + " (" + item.alias + ")";
  $("reason").textContent = item.reason;
  $("pid").textContent = item.prediction_id;
  $("top3").replaceChildren();
  item.top_k.slice(0, 3).forEach((t, i) => {
    const el = li($("top3"), t.label, String(i + 1));
    const p = document.createElement("span"); p.className = "p"; p.textContent = (100 * t.probability).toFixed(1) + "%";
    el.append(p); el.dataset.label = t.label;
  });
  $("classes").replaceChildren();
  item.classes.forEach((c) => { li($("classes"), c).dataset.label = c; });
  const first = item.label !== null ? item.label : (item.top_k.length ? item.top_k[0].label : item.classes[0]);
  sel = Math.max(0, item.classes.indexOf(first));
  paint();
}

function paint() {
  const label = item.classes[sel];
  for (const el of document.querySelectorAll("#top3 li, #classes li")) el.classList.toggle("sel", el.dataset.label === label);
  $("selected").textContent = label;
}

async function load() {
  try { $("error").textContent = ""; render(await api("GET", "/v1/review/next")); }
  catch (e) { if (e.status !== 401 && e.status !== 403) $("error").textContent = e.message; }
}

async function confirmSelected() {
  if (!item || busy) return;
  busy = true;
  const label = item.classes[sel], id = item.prediction_id;
  try {
    const data = await api("POST", "/v1/review/" + encodeURIComponent(id), {label});
    $("status").textContent = "saved " + label + " for " + id;
    $("error").textContent = "";
    render(data);
  } catch (e) {
    if (e.status === 404 || e.status === 409) { $("status").textContent = e.message; await load(); }
    else if (e.status !== 401 && e.status !== 403) $("error").textContent = e.message;
  } finally { busy = false; }
}

document.addEventListener("keydown", (ev) => {
  if (!item || busy || ev.target === $("token") || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const n = item.classes.length;
  if (ev.key >= "1" && ev.key <= "3") {
    const t = item.top_k[Number(ev.key) - 1];
    if (t) { sel = item.classes.indexOf(t.label); paint(); }
  } else if (ev.key === "ArrowDown" || ev.key === "ArrowRight") { sel = (sel + 1) % n; paint(); }
  else if (ev.key === "ArrowUp" || ev.key === "ArrowLeft") { sel = (sel + n - 1) % n; paint(); }
  else if (ev.key === "Enter") { confirmSelected(); }
  else return;
  ev.preventDefault();
});

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(KEY, t);
  $("token").value = "";
  $("token").blur();
  signedIn(true);
  load();
});
$("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); signedIn(false); });

if (sessionStorage.getItem(KEY)) { signedIn(true); load(); } else { signedIn(false); }
</script>
</body></html>
"""
