"""Poisoning: one source sends targeted wrong labels through /v1/feedback.

A production model (cnn_small, the default recipe) is trained on a fixed
stratified subset of Fashion-MNIST's train split, registered, promoted and
served in-process (`create_app` behind httpx's ASGI transport, a predict
token per source). The rest of the train split is the feedback pool, so no
feedback image is a train or test image. Through the HTTP API:

- the attacker asks `/v1/predict` about ATTACK pool images of one class and
  sends a wrong label for each to `/v1/feedback`: by default the pair the
  production model confuses most on val (its labels then look the most
  plausible to the model check), or ``DM_PO_PAIR="Sneaker>Sandal"``;
- SOURCES honest sources send HONEST correct labels on other pool images
  (every class, the targeted pair included); a tenth of their images get a
  second honest label, and OVERLAP of the attacker's images are also labelled
  by two honest sources, as popular catalogue images are by many users.

All feedback is interleaved in one seeded order. `/v1/feedback` stamps each
item with the server's clock, so the run cannot pace the attacker: it sends
everything as fast as it goes, and the rate rule sees a burst. The "patient
attacker" rows re-run the gate with the rate rule off, which is what it sees
when the same labels are spread over hours. Pixels are attached as a
deployment would: the prediction log keeps only hashes, and the deployment's
own copy of the images sent is matched by hash (`Quarantine.attach_pixels`).

Then `evaluate_gate` with its defaults, and `retrain_from_feedback` (default
margins) for each seed. The control arm accepts every item (no gate) and
retrains with the same seeds. Each arm is compared with production on the
frozen test split, and also paired with a retrain on the base data alone
from the same seed (seed 0 is production itself), which removes seed noise.

Scale with environment variables for a quick check, e.g.
``DM_PO_SAMPLES=2000 DM_PO_EPOCHS=1 DM_PO_ATTACK=100 DM_PO_HONEST=300
DM_PO_OVERLAP=10 DM_PO_SEEDS=1 python bench/run.py poisoning``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np

from datamoat.data import SPLITS, import_fashion_mnist, make_dataset
from datamoat.errors import BadInput
from datamoat.feedback import GateConfig, Quarantine, RetrainConfig, evaluate_gate, retrain_from_feedback
from datamoat.models import new_model, save_model
from datamoat.registry.core import Registry, registry_url
from datamoat.registry.register import register_model
from datamoat.serve import ServeConfig, create_app
from datamoat.train.loop import TrainConfig, subsample, train
from datamoat.workspace import Workspace

__all__ = ["main"]

SAMPLES = int(os.environ.get("DM_PO_SAMPLES", 10_000))
EPOCHS = int(os.environ.get("DM_PO_EPOCHS", 3))
ATTACK = int(os.environ.get("DM_PO_ATTACK", 500))
HONEST = int(os.environ.get("DM_PO_HONEST", 1500))  # honest labels sent, all sources together
SOURCES = int(os.environ.get("DM_PO_SOURCES", 10))
OVERLAP = int(os.environ.get("DM_PO_OVERLAP", 50))  # attacker images also labelled by two honest sources
SEEDS = int(os.environ.get("DM_PO_SEEDS", 3))
THREADS = int(os.environ.get("DM_PO_THREADS", 0))
PAIR = os.environ.get("DM_PO_PAIR", "")  # "TRUE>WRONG" class names; "": the most confused pair on val
SYBILS = int(os.environ.get("DM_PO_SYBILS", 50))  # tokens the spread-out attacker uses
ARCH = "cnn_small"
BATCH = 50  # images per /v1/predict request
REDUNDANT = 0.1  # share of honest images a second honest source also labels

# Gate reasons by the rule that gave them (see datamoat.feedback.gate).
RULES = {
    "source flagged": "reputation",
    "rate limit": "rate",
    "disagrees with model": "model",
    "conflicts with other sources": "sources",
    "sources disagree": "sources",
    "contradicts trusted reviewer": "sources",
    "no pixels": "pixels",
    "awaiting": "approval",
    "surge": "surge",
}


def _rules(reasons: list[str]) -> set[str]:
    return {rule for r in reasons for prefix, rule in RULES.items() if r.startswith(prefix)}


def _per_class(pred: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy in points per class name, and overall under ``"all"``."""
    out = {c: 100 * float((pred[y == i] == i).mean()) for i, c in enumerate(classes)}
    return {**out, "all": 100 * float((pred == y).mean())}


def _plan(
    rng: np.random.Generator,
    pool: np.ndarray,
    y: np.ndarray,
    target: int,
    wrong: str,
    classes: list[str],
    attackers: int = 1,
    overlap_n: int = OVERLAP,
) -> tuple[list[tuple[str, int, str]], np.ndarray]:
    """The feedback stream [(source, image index, label)] in arrival order, and the attacked images.
    `attackers` tokens share the attack evenly; `overlap_n` attacked images also get honest labels."""
    attacked = rng.choice(pool[y[pool] == target], size=ATTACK, replace=False)
    rest = np.setdiff1d(pool, attacked)
    overlap = attacked[: min(overlap_n, ATTACK)]  # `attacked` is already in random order
    n_pairs = 2 * len(overlap)
    unique = int(round((HONEST - n_pairs) / (1 + REDUNDANT)))
    honest_imgs = rng.choice(rest, size=unique, replace=False)
    # How many honest labels each image gets; each from a different, least-loaded source.
    wants = [(int(i), 2) for i in overlap] + [(int(i), 1) for i in honest_imgs]
    wants += [(int(i), 1) for i in honest_imgs[: HONEST - n_pairs - unique]]  # the second label of a tenth
    names = [f"user-{k:02d}" for k in range(SOURCES)]
    load = Counter({n: 0 for n in names})
    seen: dict[int, set[str]] = {}
    who = ["attacker"] if attackers == 1 else [f"attacker-{k:03d}" for k in range(attackers)]
    events = [(who[j % len(who)], int(i), wrong) for j, i in enumerate(attacked)]
    for i, k in wants:
        free = [n for n in names if n not in seen.setdefault(i, set())]
        rng.shuffle(free)
        for n in sorted(free, key=load.__getitem__)[:k]:
            seen[i].add(n)
            load[n] += 1
            events.append((n, i, classes[y[i]]))
    order = rng.permutation(len(events))
    return [events[j] for j in order], attacked


async def _traffic(reg: Registry, x: np.ndarray, events: list[tuple[str, int, str]]) -> dict[str, Any]:
    """Every source asks /v1/predict about its images, then the feedback stream
    goes to /v1/feedback in order, each source with its own predict token."""
    import httpx

    sources = sorted({s for s, _, _ in events})
    tokens = {s: reg.create_token("predict", s, actor="bench") for s in sources}
    asks: dict[str, list[int]] = {s: [] for s in sources}
    for s, i, _ in events:
        asks[s].append(i)
    app = create_app(reg, ServeConfig(ort_threads=1))
    pid: dict[tuple[str, int], str] = {}
    said: dict[tuple[str, int], str] = {}  # what production answered
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            t0 = time.perf_counter()
            for s in sources:
                head = {"Authorization": f"Bearer {tokens[s]}"}
                for k in range(0, len(asks[s]), BATCH):
                    chunk = asks[s][k : k + BATCH]
                    r = await client.post("/v1/predict", json={"inputs": x[chunk].tolist()}, headers=head)
                    if r.status_code != 200:
                        raise RuntimeError(f"/v1/predict answered {r.status_code}: {r.text}")
                    for i, p in zip(chunk, r.json()["predictions"], strict=True):
                        pid[(s, i)], said[(s, i)] = p["prediction_id"], p["label"]
            predict_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for s, i, label in events:
                body = {"prediction_id": pid[(s, i)], "label": label, "source": s}
                r = await client.post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {tokens[s]}"})
                if r.status_code != 201:
                    raise RuntimeError(f"/v1/feedback answered {r.status_code}: {r.text}")
            feedback_s = time.perf_counter() - t0
    return {"said": said, "predict_s": predict_s, "feedback_s": feedback_s}


def _gate(q: Quarantine, cfg: GateConfig) -> dict[str, Any]:
    """Run the gate; shares held/accepted for attack and honest items, and why."""
    t0 = time.perf_counter()
    report = evaluate_gate(q, cfg)
    seconds = time.perf_counter() - t0
    items = q.items()
    attack = [r for r in items if r["source"].startswith("attacker")]
    honest = [r for r in items if not r["source"].startswith("attacker")]
    held_by = Counter(rule for r in attack if r["status"] == "held" for rule in _rules(r["reasons"]))
    honest_held_by = Counter(rule for r in honest if r["status"] == "held" for rule in _rules(r["reasons"]))
    return {
        "attack_held": sum(r["status"] == "held" for r in attack) / len(attack),
        "honest_accepted": sum(r["status"] == "accepted" for r in honest) / len(honest),
        "attack_held_by": dict(held_by),
        "honest_held_by": dict(honest_held_by),
        "flagged": report["flagged"],
        "accepted_ids": sorted(r["id"] for r in items if r["status"] == "accepted"),
        "reputation": report["sources"].get("attacker"),
        "seconds": round(seconds, 2),
    }


def _retrain(ws: Workspace, reg: Registry, target: str, base: dict[int, dict[str, float]]) -> dict[str, Any]:
    """`retrain_from_feedback` for each seed; deltas in points against production and
    against the base-only model of the same seed (paired)."""
    runs = []
    for seed in range(SEEDS):
        out = retrain_from_feedback(ws, reg, RetrainConfig(seed=seed), actor="bench")
        cls = {c["class"]: c for c in out["per_class"]}
        runs.append(
            {
                "seed": seed,
                "added": out["added"],
                "registered": out["registered"],
                "target_delta": cls[target]["delta"],
                "overall_delta": out["gain"],
                "target_paired": cls[target]["candidate"] - base[seed][target],
                "overall_paired": out["candidate"] - base[seed]["all"],
                "worst": out["worst_class"],
                "reasons": out["reasons"],
            }
        )
    mean = {
        k: statistics.mean(r[k] for r in runs)
        for k in ("target_delta", "overall_delta", "target_paired", "overall_paired")
    }
    bad = sum(r["registered"] and r["target_delta"] < -0.5 for r in runs)
    return {"runs": runs, "mean": mean, "registered": sum(r["registered"] for r in runs), "registered_bad": bad}


def _sybil(
    ws: Workspace,
    prod_id: str,
    x: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    target: int,
    wrong: str,
    classes: list[str],
    seed: int,
) -> dict[str, Any]:
    """The same attack spread over SYBILS tokens, on images no honest source labels, in a
    registry of its own with the same production model; the gate with its defaults."""
    reg = Registry(f"sqlite:///{ws.root / f'sybil-{seed}.db'}")
    reg.promote(register_model(ws, reg, prod_id, actor="bench"), "production", actor="bench")
    events, attacked = _plan(np.random.default_rng(seed), pool, y, target, wrong, classes, SYBILS, 0)
    traffic = asyncio.run(_traffic(reg, x, events))
    q = Quarantine(reg)
    q.sync()
    q.attach_pixels(x[np.unique([i for _, i, _ in events])])
    out = _gate(q, GateConfig())
    out["model_agrees"] = float(
        np.mean([traffic["said"][(s, i)] == wrong for s, i, _ in events if s.startswith("attacker")])
    )
    out["surges"] = evaluate_gate(q, GateConfig())["surges"]
    return out


def main() -> dict:
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-poisoning-"))
    full = import_fashion_mnist(ws)
    classes = [str(c) for c in full.classes]
    train_idx = np.flatnonzero(full.split == SPLITS["train"])
    sub = train_idx[subsample(full.y[train_idx], SAMPLES, 0)]
    pool = np.setdiff1d(train_idx, sub)  # feedback images: never train, val or test images
    keep = np.sort(np.r_[sub, np.flatnonzero(full.split != SPLITS["train"])])
    base = make_dataset(
        ws,
        full.x[keep],
        full.y[keep],
        full.classes,
        name=f"fashion-mnist-{SAMPLES}",
        source={"kind": "subset", "of": full.id, "train_samples": SAMPLES},
        split=full.split[keep],
        parent_id=full.id,
    )
    x_val, y_val = base.subset("val")
    x_test, y_test = base.subset("test")

    # Base-only models per seed: seed 0 is production; retrain_from_feedback builds the same way.
    t0 = time.perf_counter()
    base_acc: dict[int, dict[str, float]] = {}
    prod = None
    for seed in range(SEEDS):
        m = train(
            new_model(ARCH, base, seed=seed),
            base,
            TrainConfig(epochs=EPOCHS, seed=seed, threads=THREADS),
            progress=False,
        )
        base_acc[seed] = _per_class(m.logits(x_test).argmax(1), y_test, classes)
        if seed == 0:
            prod = m
    base_s = time.perf_counter() - t0
    prod = save_model(ws, prod, name="cnn-small-production")
    reg = Registry(registry_url(ws))
    vid = register_model(ws, reg, prod.id, actor="bench")
    reg.promote(vid, "production", actor="bench")

    if PAIR:
        true_name, _, wrong = PAIR.partition(">")
        if true_name not in classes or wrong not in classes or true_name == wrong:
            raise BadInput(f"DM_PO_PAIR={PAIR!r}: write TRUE>WRONG with two different classes of {', '.join(classes)}")
        target = classes.index(true_name)
    else:  # the pair production confuses most on val: the attack the model check is weakest against
        conf = np.zeros((len(classes), len(classes)), np.int64)
        np.add.at(conf, (y_val, prod.logits(x_val).argmax(1)), 1)
        np.fill_diagonal(conf, 0)
        target, w = np.unravel_index(conf.argmax(), conf.shape)
        target, wrong = int(target), classes[int(w)]
    tname = classes[target]
    # Spread-out attacks on the second and third most confused pairs on val. surge_near was set
    # after runs on the first two; the third is the scenario no setting was chosen on.
    conf2 = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(conf2, (y_val, prod.logits(x_val).argmax(1)), 1)
    np.fill_diagonal(conf2, 0)
    conf2[target, classes.index(wrong)] = 0
    t2, w2 = (int(v) for v in np.unravel_index(conf2.argmax(), conf2.shape))
    conf2[t2, w2] = 0
    t3, w3 = (int(v) for v in np.unravel_index(conf2.argmax(), conf2.shape))

    events, attacked = _plan(rng, pool, full.y, target, wrong, classes)
    traffic = asyncio.run(_traffic(reg, full.x, events))
    q = Quarantine(reg)
    synced = q.sync()
    sent = np.unique([i for _, i, _ in events])
    attached = q.attach_pixels(full.x[sent])  # the deployment's own copy of what it was sent
    model_agrees = np.mean([traffic["said"][("attacker", int(i))] == wrong for i in attacked])

    gate = _gate(q, GateConfig())
    t0 = time.perf_counter()
    arm_gate = _retrain(ws, reg, tname, base_acc)
    gated_s = time.perf_counter() - t0
    patient = _gate(q, GateConfig(max_per_hour=0))  # the same labels, spread over hours
    arm_patient = None
    if patient["accepted_ids"] != gate["accepted_ids"]:
        arm_patient = _retrain(ws, reg, tname, base_acc)
    sybil = _sybil(ws, prod.id, full.x, full.y, pool, target, wrong, classes, 1)
    sybil2 = _sybil(ws, prod.id, full.x, full.y, pool, t2, classes[w2], classes, 2)
    sybil3 = _sybil(ws, prod.id, full.x, full.y, pool, t3, classes[w3], classes, 3)
    every = [r["id"] for r in q.items()]
    q.decide(every, "accepted", actor="bench-no-gate", reason="control arm: no gate, accept everything")
    t0 = time.perf_counter()
    arm_control = _retrain(ws, reg, tname, base_acc)
    control_s = time.perf_counter() - t0

    per_source = Counter(s for s, _, _ in events)
    honest_max = max(v for s, v in per_source.items() if s != "attacker")
    flagged_ok = gate["flagged"] == ["token:attacker"]  # server feedback counts by its token
    arms = {"gate": arm_gate, "patient": arm_patient or arm_gate, "control": arm_control}
    registered_bad = sum(a["registered_bad"] for a in (arm_gate, arm_patient, arm_control) if a)

    def seeds(arm: dict, key: str) -> str:
        return ", ".join(f"{r[key]:+.2f}" for r in arm["runs"])

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    rows = [
        {
            "what": f"attack labels held by the gate (defaults; burst of {ATTACK})",
            "measured": gate["attack_held"],
            "target": "1.0",
            "met": yes(gate["attack_held"] == 1.0),
        },
        {
            "what": "attack labels held, patient attacker (rate rule off)",
            "measured": patient["attack_held"],
            "target": "1.0",
            "met": yes(patient["attack_held"] == 1.0),
        },
        {
            "what": "attack labels the model rule alone holds",
            "measured": gate["attack_held_by"].get("model", 0) / ATTACK,
            "target": "",
            "met": "",
        },
        {
            "what": f"honest labels accepted ({len(events) - ATTACK} from {SOURCES} sources)",
            "measured": gate["honest_accepted"],
            "target": ">= 0.9",
            "met": yes(gate["honest_accepted"] >= 0.9),
        },
        {
            "what": "sources flagged",
            "measured": ", ".join(gate["flagged"]) or "none",
            "target": "attacker only",
            "met": yes(flagged_ok),
        },
        {
            "what": f"attack labels held, {ATTACK} spread over {SYBILS} tokens on unshared images ({tname} as {wrong})",
            "measured": sybil["attack_held"],
            "target": ">= 0.95",
            "met": yes(sybil["attack_held"] >= 0.95),
        },
        {
            "what": "honest labels accepted, same run",
            "measured": sybil["honest_accepted"],
            "target": ">= 0.9",
            "met": yes(sybil["honest_accepted"] >= 0.9),
        },
        {
            "what": f"attack labels held, {SYBILS} tokens, second pair ({classes[t2]} as {classes[w2]})",
            "measured": sybil2["attack_held"],
            "target": ">= 0.95",
            "met": yes(sybil2["attack_held"] >= 0.95),
        },
        {
            "what": "honest labels accepted, same run",
            "measured": sybil2["honest_accepted"],
            "target": ">= 0.9",
            "met": yes(sybil2["honest_accepted"] >= 0.9),
        },
        {
            "what": f"attack labels held, {SYBILS} tokens, third pair ({classes[t3]} as {classes[w3]}; not tuned on)",
            "measured": sybil3["attack_held"],
            "target": ">= 0.95",
            "met": yes(sybil3["attack_held"] >= 0.95),
        },
        {
            "what": "honest labels accepted, same run",
            "measured": sybil3["honest_accepted"],
            "target": ">= 0.9",
            "met": yes(sybil3["honest_accepted"] >= 0.9),
        },
        # Candidates, registered or not: retrain's own guard (no class down > 0.5) decides which become
        # models; the acceptance bound is on those, in the last row.
        {
            "what": f"{tname} accuracy, gated retrain candidate - production (points, mean of {SEEDS})",
            "measured": arm_gate["mean"]["target_delta"],
            "target": "",
            "met": "",
        },
        {
            "what": f"{tname} accuracy, gated retrain candidate - base retrain, same seed",
            "measured": arm_gate["mean"]["target_paired"],
            "target": "",
            "met": "",
        },
        {
            "what": "overall accuracy, gated retrain - production",
            "measured": arm_gate["mean"]["overall_delta"],
            "target": "",
            "met": "",
        },
        {
            "what": f"{tname} accuracy, no gate (accept all) - production",
            "measured": arm_control["mean"]["target_delta"],
            "target": "",
            "met": "",
        },
        {
            "what": f"{tname} accuracy, no gate - base retrain, same seed",
            "measured": arm_control["mean"]["target_paired"],
            "target": "",
            "met": "",
        },
        {
            "what": "overall accuracy, no gate - production",
            "measured": arm_control["mean"]["overall_delta"],
            "target": "",
            "met": "",
        },
        {
            "what": f"candidates registered: gated / no gate (of {SEEDS} each)",
            "measured": f"{arm_gate['registered']} / {arm_control['registered']}",
            "target": "",
            "met": "",
        },
        {
            "what": f"models retrain registered whose {tname} accuracy drops > 0.5 (gated and no-gate arms)",
            "measured": registered_bad,
            "target": "0",
            "met": yes(registered_bad == 0),
        },
    ]
    if arm_patient:
        rows.insert(
            6,
            {
                "what": f"{tname} accuracy, patient-attacker retrain - production",
                "measured": arm_patient["mean"]["target_delta"],
                "target": "",
                "met": "",
            },
        )
    met = all(r["met"] != "NO" for r in rows)
    summary = {
        "met": met,
        "pair": {"true": tname, "label": wrong},
        "production_version": vid,
        "production_test_accuracy": base_acc[0]["all"],
        "production_target_accuracy": base_acc[0][tname],
        "base_retrain_accuracy": {s: {"all": a["all"], tname: a[tname]} for s, a in base_acc.items()},
        "gate": {k: v for k, v in gate.items() if k != "accepted_ids"},
        "gate_patient": {k: v for k, v in patient.items() if k != "accepted_ids"},
        "gate_sybil": {k: v for k, v in sybil.items() if k != "accepted_ids"},
        "gate_sybil_second_pair": {k: v for k, v in sybil2.items() if k != "accepted_ids"},
        "gate_sybil_third_pair": {k: v for k, v in sybil3.items() if k != "accepted_ids"},
        "retrain": {k: a for k, a in arms.items()},
        "attack_labels_model_already_gave": float(model_agrees),
        "feedback_synced": synced,
        "pixels_attached": attached,
        "labels_per_source": dict(per_source),
        "timings_s": {
            "base_models": round(base_s, 1),
            "predict": round(traffic["predict_s"], 1),
            "feedback": round(traffic["feedback_s"], 1),
            "gate": gate["seconds"],
            "retrain_gated": round(gated_s, 1),
            "retrain_no_gate": round(control_s, 1),
        },
        "setup": {
            "train_samples": SAMPLES,
            "epochs": EPOCHS,
            "arch": ARCH,
            "attack": ATTACK,
            "honest": HONEST,
            "sources": SOURCES,
            "overlap": OVERLAP,
            "redundant": REDUNDANT,
            "seeds": SEEDS,
        },
    }
    held = ", ".join(f"{k} {v}" for k, v in sorted(gate["attack_held_by"].items(), key=lambda kv: -kv[1]))
    honest_held = ", ".join(f"{k} {v}" for k, v in sorted(gate["honest_held_by"].items(), key=lambda kv: -kv[1]))
    notes = [
        f"Fashion-MNIST: production is {ARCH} trained {EPOCHS} epochs on a stratified {SAMPLES}-image subset of the "
        f"train split (val {len(y_val)}, official test {len(y_test)}); test accuracy {base_acc[0]['all']:.2f}%, "
        f"{tname} {base_acc[0][tname]:.2f}%. The feedback pool is the rest of the train split ({len(pool)} images).",
        f"Attack: 'attacker' labels {ATTACK} pool images of {tname} as {wrong} "
        f"({'set by DM_PO_PAIR' if PAIR else 'the pair production confuses most on val'}); production itself "
        f"answered {wrong} for {model_agrees:.1%} of them. Honest: {len(events) - ATTACK} correct labels from "
        f"{SOURCES} sources (at most {honest_max} each), {OVERLAP} of the attacked images among them, each "
        "labelled by two honest sources. One seeded interleaved stream, all through /v1/predict and /v1/feedback "
        "(httpx ASGI transport, a predict token per source).",
        f"Pace: /v1/feedback stamps the server's clock and the API cannot set it, so the run sent all "
        f"{len(events)} labels as fast as it went ({traffic['feedback_s']:.0f}s; predictions {traffic['predict_s']:.0f}s) "
        f"and the rate rule (200 an hour a source) saw a burst. The patient-attacker row re-runs the gate with "
        "the rate rule off: what it sees when the attacker spreads the same labels over 3+ hours.",
        f"Gate (defaults): attack items held by rule (an item can have several): {held or 'none'}; honest items "
        f"held: {honest_held or 'none'}. Attacker reputation: {gate['reputation']}. Pixels attached by hash from the "
        f"deployment's copy of the images sent: {attached} of {synced} items.",
        f"Retrain: retrain_from_feedback (default margins: +0.5 overall, no class -0.5) per seed 0..{SEEDS - 1}; "
        "'- production' is its own comparison on the frozen test split; '- base retrain' pairs each candidate with "
        "a model trained from the same seed on the base data alone (seed 0 is production), which removes seed "
        f"noise. Per seed, {tname} vs production: gated {seeds(arm_gate, 'target_delta')}, no gate "
        f"{seeds(arm_control, 'target_delta')}; paired: gated {seeds(arm_gate, 'target_paired')}, no gate "
        f"{seeds(arm_control, 'target_paired')}."
        + (
            ""
            if arm_patient
            else " The patient-attacker gate accepted the same items, so its retrain is the gated one."
        ),
        "Spread-out attacker: the same number of wrong labels from " + str(SYBILS) + " predict tokens "
        "(an even share each), on pool images no honest source labels, so no per-token rule (rate, reputation, "
        "consensus) can see it; each run in a registry of its own with the same production model, the gate with "
        "its defaults; the gate's surge_near (0.1) was chosen after runs on the first two pairs, the third is "
        "unseen. Per pair (first, second, third): production already answered the wrong label for "
        + ", ".join(f"{s['model_agrees']:.1%}" for s in (sybil, sybil2, sybil3))
        + " of the attacked images; attack items held by rule "
        + "; ".join(str(s["attack_held_by"]) for s in (sybil, sybil2, sybil3))
        + "; honest items held "
        + "; ".join(str(s["honest_held_by"]) for s in (sybil, sybil2, sybil3))
        + "; surges found (model says, label says, labels, expected) "
        + "; ".join(
            str([(g["model"], g["label"], g["labels"], round(g["expected"], 1)) for g in s["surges"]])
            for s in (sybil, sybil2, sybil3)
        )
        + ".",
        f"Timings (2 shared cores): base models {base_s:.0f}s, gate {gate['seconds']:.1f}s, gated retrains "
        f"{gated_s:.0f}s, no-gate retrains {control_s:.0f}s; total {time.perf_counter() - t_start:.0f}s.",
    ]
    return {
        "title": f"Poisoning: {ATTACK} targeted wrong labels through /v1/feedback, the gate, and retrain",
        "columns": ["what", "measured", "target", "met"],
        "rows": rows,
        "summary": summary,
        "notes": notes,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
