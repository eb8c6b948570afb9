"""The live guarantee check (`GuaranteeCheck`, its defaults but the target) on simulated review
streams: 500 runs of 5,000 reviewed automated answers each, per scenario.

- no change: the automated answers are exactly as accurate as the target (the hardest case for
  false failures) or half a point above it; the check must fail in at most alpha of the runs;
- a drop: from the first review on, accuracy is 3 points below the target; the table gives the
  reviews until the check failed;
- a gradual drop (not a scenario the stakes were chosen on): accuracy slides from the target to 3
  points below over the first 2,000 reviews, then stays there.

Targets 0.99 (poc's default) and 0.95. Each review is a Bernoulli draw; the check sees them in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datamoat.evaluate.guarantee import GuaranteeCheck, GuaranteeConfig

RUNS, REVIEWS = 500, 5000


def runs(target: float, accuracy: np.ndarray, seed: int) -> list[int | None]:
    """Where each run failed (None: never), for per-review accuracies `accuracy` (REVIEWS,)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(RUNS):
        reviews = rng.random(REVIEWS) < accuracy
        out.append(GuaranteeCheck(GuaranteeConfig(target_accuracy=target)).update(reviews).failed_at)
    return out


def main() -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    alpha = GuaranteeConfig().alpha
    for target in (0.99, 0.95):
        flat = np.full(REVIEWS, 1.0)
        scenarios = {
            "no change (at the target)": target * flat,
            "no change (0.5 pt above)": (target + 0.005) * flat,
            "3-point drop": (target - 0.03) * flat,
            "gradual 3-point drop over 2,000": target - 0.03 * np.minimum(np.arange(REVIEWS) / 2000, 1.0),
        }
        for i, (name, acc) in enumerate(scenarios.items()):
            failed = runs(target, acc, seed=1000 * int(target * 100) + i)
            hits = np.array([f for f in failed if f is not None])
            rate = len(hits) / RUNS
            null = name.startswith("no change")
            row = {"target": target, "scenario": name, "failed_runs": f"{rate:.3f}"}
            if null:
                row.update(
                    reviews_to_fail="-", criterion=f"failed runs <= alpha {alpha}", met="yes" if rate <= alpha else "NO"
                )
            else:
                q = np.percentile(hits, [50, 90]) if len(hits) else [np.nan, np.nan]
                row.update(
                    reviews_to_fail=f"median {int(q[0])}, 90th pct {int(q[1])}, max {int(hits.max())}",
                    criterion=f"fails within {REVIEWS} reviews in every run",
                    met="yes" if rate == 1.0 else "NO",
                )
            rows.append(row)
            summary[f"{target}/{name}"] = {"failed_rate": rate, "failed_at": [f for f in failed if f is not None]}
    return {
        "title": "Live guarantee check: reviews until it fails, and false failures (simulated review streams)",
        "columns": ["target", "scenario", "failed_runs", "reviews_to_fail", "criterion", "met"],
        "rows": rows,
        "summary": {k: {"failed_rate": v["failed_rate"]} for k, v in summary.items()},
        "notes": [
            f"{RUNS} runs of {REVIEWS:,} reviews per row; GuaranteeConfig defaults (alpha {alpha}, "
            f"{GuaranteeConfig().stakes} stakes) with the row's target. The check is valid at every look: a "
            "run counts as failed if it failed at any point in its 5,000 reviews.",
            "Reviews are of automated answers sampled at random, as a server's audit sample draws them; the "
            "numbers are reviews, not answers: at the default 1% audit share, multiply by 100 for automated answers.",
        ],
    }
