"""Model choice inside a plan: for each option, the smallest candidate that
meets the accuracy floor, the latency budget and the memory on that option's
hardware, and the most accurate one that would still fit (the trade).

A candidate's latency on an option's hardware is estimated from the one
model measured there: measured p99 + (candidate's batch-1 latency - the
measured model's) x slowdown, both batch-1 latencies from compress's table,
so swapping the model moves the tail by what the model itself costs. Memory
likewise: measured resident memory + (candidate bytes - measured model
bytes). Where the measured model is not in the table, nothing can be
adjusted and the plan says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Hardware", "ModelChoice", "choose_model"]

MIB = 1 << 20


@dataclasses.dataclass
class Hardware:
    """What was measured on an option's hardware, and what a caller adds (network)."""

    option: str
    p99_ms: float  # measured, with `measured_model`
    network_ms: float  # the worst round trip a served site adds
    measured_model: str  # a candidate name, or "" when the measured model is not in the table
    slowdown: float = 1.0
    rss_mb: float | None = None  # measured resident memory (edge)
    memory_mb: float = 0.0  # what the device gives the runtime (0: not checked)
    measured_bytes: float | None = None  # the measured model's bytes, when the table does not name it


@dataclasses.dataclass
class ModelChoice:
    """The pick for one option, each candidate's estimate, and the trade against the most accurate fit."""

    option: str
    pick: str | None
    p99_ms: float  # the pick's estimated server or device p99, network excluded
    rows: list[dict[str, Any]]
    lines: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_model(hw: Hardware, candidates: list[dict[str, Any]], floor: float, budget_ms: float) -> ModelChoice:
    """Pick the smallest candidate that fits `hw` within `budget_ms` (network included) and above `floor`.

    >>> rows = [{"name": "big", "accuracy": 0.92, "bytes": 900_000, "latency_ms_b1": 0.20},
    ...         {"name": "small", "accuracy": 0.91, "bytes": 100_000, "latency_ms_b1": 0.05}]
    >>> c = choose_model(Hardware("edge", 10.0, 0.0, "big"), rows, 0.9, 20.0)
    >>> c.pick, round(c.p99_ms, 2)
    ('small', 9.85)
    """
    if not candidates:
        return ModelChoice(
            hw.option, None, hw.p99_ms, [], [f"{hw.option}: no candidate table, the measured model runs"]
        )
    by = {c["name"]: c for c in candidates}
    m = by.get(hw.measured_model)
    lines = []
    if m is None:
        lines.append(
            f"{hw.option}: the measured model ({hw.measured_model or 'unnamed'}) is not in the candidate table, so "
            f"every candidate is taken at the measured p99 {hw.p99_ms:.3g} ms and memory: latencies not adjusted"
        )
    m_bytes = float(m["bytes"]) if m is not None else hw.measured_bytes
    rows = []
    for c in sorted(candidates, key=lambda c: (c["bytes"], c["latency_ms_b1"])):
        delta = (c["latency_ms_b1"] - m["latency_ms_b1"]) * hw.slowdown if m is not None else 0.0
        p99 = hw.p99_ms + delta
        mem = None
        if hw.rss_mb is not None:
            mem = hw.rss_mb + ((c["bytes"] - m_bytes) / MIB if m_bytes is not None else 0.0)
        why = []
        if c["accuracy"] < floor:
            why.append(f"accuracy {c['accuracy']:.4f} < floor {floor:g}")
        if p99 + hw.network_ms > budget_ms:
            why.append(f"p99 {p99:.3g} + {hw.network_ms:g} network > {budget_ms:g} ms")
        if mem is not None and hw.memory_mb and mem > hw.memory_mb:
            why.append(f"memory {mem:.1f} > {hw.memory_mb:g} MiB")
        rows.append(
            {
                "name": c["name"],
                "accuracy": c["accuracy"],
                "bytes": c["bytes"],
                "p99_ms": p99,
                "memory_mb": mem,
                "fits": not why,
                "why_not": "; ".join(why),
            }
        )
    fits = [r for r in rows if r["fits"]]
    if m is not None:
        lines.append(
            f"{hw.option}: p99 of a candidate = measured {hw.p99_ms:.3g} ms with {m['name']} + (its b1 latency - "
            f"{m['latency_ms_b1']:.3g} ms) x slowdown {hw.slowdown:g}"
        )
    if not fits:
        closest = min(rows, key=lambda r: len(r["why_not"]))
        lines.append(f"{hw.option}: no candidate fits (closest {closest['name']}: {closest['why_not']})")
        return ModelChoice(hw.option, None, hw.p99_ms, rows, lines)
    pick = fits[0]  # rows are smallest first
    best = max(fits, key=lambda r: r["accuracy"])
    lines.append(
        f"{hw.option}: pick {pick['name']} ({pick['bytes']:,} bytes, accuracy {pick['accuracy']:.4f}, "
        f"p99 {pick['p99_ms']:.3g} ms), the smallest that fits"
    )
    if best is not pick and best["accuracy"] > pick["accuracy"]:
        lines.append(
            f"{hw.option}: trade: {best['name']} also fits, {100 * (best['accuracy'] - pick['accuracy']):.2f} points "
            f"more accurate for {best['bytes'] / pick['bytes']:.1f}x the bytes and {best['p99_ms'] - pick['p99_ms']:+.3g} ms"
        )
    for r in rows:
        if not r["fits"]:
            lines.append(f"{hw.option}: {r['name']} does not fit: {r['why_not']}")
    return ModelChoice(hw.option, pick["name"], pick["p99_ms"], rows, lines)
