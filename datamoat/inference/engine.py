"""A model version ready to run, and the step that turns probabilities into
answers (suppression, top-k, review policy): one core for the cloud server
and the edge runtime.

Normalisation matches `datamoat.models.Model.to_tensor` exactly:
``(x * scale - mean) / std`` on raw 0..255 pixels, per channel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["LoadedVersion", "open_version", "softmax", "renormalized", "decide", "describe"]


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """One model version ready to run: its session and preprocessing."""

    version_id: str
    name: str
    kind: str
    info: dict[str, Any]
    session: Any  # onnxruntime.InferenceSession; run() is thread-safe
    input_name: str
    fixed_batch: int | None  # None: the graph has a dynamic batch axis
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    scale: float
    mean: np.ndarray  # (1, C, 1, 1)
    std: np.ndarray  # (1, C, 1, 1)
    photo: dict[str, Any] | None = None  # a photo model's PhotoTransformConfig: uploads are fitted by it
    embedding: str | None = None  # the graph output holding the penultimate-layer embedding, if opened with it

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels (N, C, H, W) in 0..255 -> the float32 tensor the graph expects."""
        return ((x.astype(np.float32) * np.float32(self.scale) - self.mean) / self.std).astype(np.float32)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Raw pixels (N, C, H, W) -> class probabilities (N, K)."""
        return self.run(x)[0]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw pixels (N, C, H, W) -> (class probabilities (N, K), penultimate embeddings (N, D), or
        None unless the version was opened with ``embeddings=True``)."""
        t = self.normalize(x)  # (N, C, H, W)
        step = self.fixed_batch or max(len(t), 1)
        outs: list[list[np.ndarray]] = []
        for i in range(0, len(t), step):
            chunk = t[i : i + step]
            pad = step - len(chunk)  # a fixed-batch graph needs full batches
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            got = self.session.run(None, {self.input_name: chunk})
            outs.append([o[: step - pad] for o in got[: 2 if self.embedding else 1]])
        probs = softmax(np.concatenate([o[0] for o in outs]))  # (N, K)
        if not self.embedding:
            return probs, None
        emb = np.concatenate([o[1].reshape(len(o[1]), -1) for o in outs]).astype(np.float32)  # (N, D)
        return probs, emb


def describe(model: LoadedVersion | None) -> dict[str, Any]:
    """What `/v1/model` says about the model being served (cloud and device alike); None: nothing is.

    >>> describe(None)["serving"]
    False
    """
    return {
        "name": model.name if model else None,
        "kind": model.kind if model else None,
        "classes": model.classes if model else None,
        "input_shape": list(model.input_shape) if model else None,
        "serving": model is not None,
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits.

    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # (N, K)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def open_version(
    onnx: bytes, meta: dict[str, Any], threads: int = 0, *, embeddings: bool = False, device: str = "cpu"
) -> LoadedVersion:
    """Open a session over ONNX bytes on `device` (cpu, or cuda: `ort_session`); `meta` holds the version's id, name, kind,
    classes, preprocessing and (optionally) input shape, as the registry and bundles store them.
    `embeddings` also returns the penultimate layer from `LoadedVersion.run` (for drift monitoring),
    where the graph has a classifier to find.

    >>> v = open_version(registry.artifact(row["onnx_sha"]), {**row["info"], **row})  # doctest: +SKIP
    """
    from datamoat.inference.onnx import ort_session, with_embedding_output

    emb_name = None
    if embeddings:
        onnx, emb_name = with_embedding_output(onnx)
    sess = ort_session(onnx, threads, device)
    inp = sess.get_inputs()[0]
    c, h, w = (int(d) for d in (meta.get("input_shape") or inp.shape[1:]))
    pre = meta["preprocess"]
    channel = lambda v: np.asarray(v, np.float32).reshape(1, -1, 1, 1)  # noqa: E731
    batch = inp.shape[0]
    return LoadedVersion(
        version_id=meta["version_id"],
        name=meta["name"],
        kind=meta["kind"],
        info=meta,
        session=sess,
        input_name=inp.name,
        fixed_batch=batch if isinstance(batch, int) and batch > 0 else None,
        classes=[str(c) for c in meta["classes"]],
        input_shape=(c, h, w),
        scale=float(pre["scale"]),
        mean=channel(pre["mean"]),
        std=channel(pre["std"]),
        photo=pre.get("photo"),
        embedding=emb_name,
    )


def renormalized(
    probs: np.ndarray, classes: list[str], suppressed: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (N, K) with "renormalize" labels at 0 and the rest rescaled to sum to 1, the
    renormalized labels' mask (K,), the "abstain" labels' mask (K,)).

    >>> renormalized(np.array([[0.5, 0.25, 0.25]]), ["a", "b", "c"], {"a": "renormalize"})[0].tolist()
    [[0.0, 0.5, 0.5]]
    """
    renorm = np.array([suppressed.get(c) == "renormalize" for c in classes])  # (K,)
    abstain = np.array([suppressed.get(c) == "abstain" for c in classes])  # (K,)
    p = probs.astype(np.float64).copy()  # (N, K)
    p[:, renorm] = 0.0
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0), renorm, abstain


def decide(
    probs: np.ndarray,
    classes: list[str],
    suppressed: dict[str, str],
    top_k: int,
    threshold: float | None = None,
    per_class: dict[str, float | None] | None = None,
) -> list[dict[str, Any]]:
    """Answers for probabilities (N, K) under suppressions {label: mode}.

    "renormalize" labels are dropped and the rest rescaled to sum to 1.
    "abstain" labels are never output either: their probability is reported
    as `abstain_probability`, and when one of them is the most likely the
    answer abstains and needs review. Below the version's policy threshold
    an answer is kept but flagged for review: the `per_class` threshold of
    its label if one is listed (None there: always review), else `threshold`.

    >>> p = np.array([[0.6, 0.3, 0.1]])
    >>> decide(p, ["a", "b", "c"], {"a": "abstain"}, 2)[0]["abstained"]
    True
    >>> round(decide(p, ["a", "b", "c"], {"a": "renormalize"}, 2)[0]["top_k"][0]["probability"], 2)
    0.75
    >>> [decide(p, ["a", "b", "c"], {}, 2, 0.5, pc)[0]["needs_review"] for pc in (None, {"a": 0.7}, {"a": None})]
    [False, True, True]
    """
    p, renorm, abstain = renormalized(probs, classes, suppressed)  # (N, K), (K,), (K,)
    allowed = np.flatnonzero(~renorm & ~abstain)
    out = []
    for row in p:
        best = int(np.where(renorm, -1.0, row).argmax())
        order = allowed[np.argsort(-row[allowed], kind="stable")][:top_k]
        ans: dict[str, Any] = {
            "label": classes[best],
            "label_index": best,
            "top_k": [{"label": classes[i], "probability": float(row[i])} for i in order],
            "abstained": False,
            "needs_review": False,
            "reason": None,
            "abstain_probability": float(row[abstain].sum()) if abstain.any() else None,
        }
        if renorm[best] or abstain[best]:
            why = "every label is suppressed" if renorm[best] else f"the top label {classes[best]!r} is suppressed"
            ans.update(
                label=None, label_index=None, abstained=True, needs_review=True, reason=f"{why}: needs human review"
            )
        else:
            own = per_class is not None and classes[best] in per_class
            t = per_class[classes[best]] if own and per_class is not None else threshold
            if own and t is None:
                ans.update(needs_review=True, reason=f"the policy sends every {classes[best]!r} answer to review")
            elif t is not None and row[best] < t:
                whose = f" for {classes[best]!r}" if own else ""
                ans.update(
                    needs_review=True, reason=f"confidence {row[best]:.3f} is below the review threshold{whose} {t:g}"
                )
        out.append(ans)
    return out
