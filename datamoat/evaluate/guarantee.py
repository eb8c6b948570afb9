"""Does the proof of concept's guarantee still hold? A sequential test on reviewed answers that stays
valid however often it is looked at.

`poc` automates the answers above a threshold chosen so that they are at least `target_accuracy`
accurate. In production, people review a random sample of those automated answers; each review
says whether the automated answer was right. `GuaranteeCheck` bets against "the automated answers
are at least `target_accuracy` accurate" (testing by betting, Waudby-Smith and Ramdas 2024; Shafer
2021): each review multiplies the wealth of a bet with stake lambda by ``1 + lambda * (target - x)``
(x is 1 when the answer was right). While the accuracy is at least the target, the wealth is a
nonnegative supermartingale, so by Ville's inequality it ever reaches ``1 / alpha`` with probability
at most alpha, at any number of looks, however long the stream. A mixture over a grid of stakes
adapts to how far below the target the accuracy fell, and is still such a supermartingale.

The state is a few numbers (the log-wealth of each stake and two counts), so a registry row holds
it and every server can add the reviews it sees.

>>> check = GuaranteeCheck(GuaranteeConfig(target_accuracy=0.95, alpha=0.05))
>>> check.update([True] * 200).failed
False
>>> check.update([True, True, False] * 100).failed   # about 67% accurate: far below the target
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from datamoat.configs import Config, check, check_choice

__all__ = ["ACTIONS", "GuaranteeConfig", "GuaranteeCheck"]

ACTIONS = ("review_all", "rollback", "none")


@dataclasses.dataclass
class GuaranteeConfig(Config):
    """What the automated answers must meet, the error level of the check, and what failing does.

    >>> GuaranteeConfig(target_accuracy=1.0)
    Traceback (most recent call last):
    datamoat.errors.BadInput: target_accuracy must be in (0, 1), got 1.0
    """

    target_accuracy: float = 0.99  # the poc target (`FeasibilityConfig.target_accuracy`)
    alpha: float = 0.05  # chance that the check ever fails while the target still holds
    stakes: int = 20  # bets in the mixture, from small to half the largest safe stake
    action: str = "review_all"  # on failure: every answer to review, roll the alias back, or only alert

    def validate(self) -> None:
        check(0 < self.target_accuracy < 1, f"target_accuracy must be in (0, 1), got {self.target_accuracy}")
        check(0 < self.alpha < 1, f"alpha must be in (0, 1), got {self.alpha}")
        check(self.stakes >= 1, f"stakes must be at least 1, got {self.stakes}")
        check_choice("action", self.action, ACTIONS)


class GuaranteeCheck:
    """The running test: `update` with reviews (True: the automated answer was right)."""

    def __init__(self, config: GuaranteeConfig | None = None, state: dict[str, Any] | None = None) -> None:
        self.config = cfg = config or GuaranteeConfig()
        # Stakes up to half of 1 / (1 - target): a wrong answer then never costs more than half the wealth.
        self.lambdas = np.arange(1, cfg.stakes + 1) / cfg.stakes * 0.5 / (1 - cfg.target_accuracy)  # (J,)
        self.log_wealth = np.zeros(cfg.stakes)  # (J,)
        self.n = self.right = 0
        self.failed_at: int | None = None
        if state is not None:
            self.log_wealth = np.asarray(state["log_wealth"], np.float64)
            self.n, self.right, self.failed_at = state["n"], state["right"], state["failed_at"]

    @property
    def wealth(self) -> float:
        """The mixture's wealth: the evidence against the target holding (it fails at 1 / alpha)."""
        top = float(self.log_wealth.max())
        return math.exp(top) * float(np.mean(np.exp(self.log_wealth - top)))

    @property
    def failed(self) -> bool:
        return self.failed_at is not None

    def update(self, reviews: Iterable[bool]) -> GuaranteeCheck:
        """Add reviews in the order they were made; once failed, it stays failed."""
        x = np.fromiter((float(r) for r in reviews), np.float64)  # (T,) 1: right
        if not len(x):
            return self
        steps = np.log1p(self.lambdas[None, :] * (self.config.target_accuracy - x[:, None]))  # (T, J)
        path = self.log_wealth + np.cumsum(steps, axis=0)  # (T, J) log-wealth after each review
        top = path.max(axis=1, keepdims=True)  # (T, 1)
        mixture = top[:, 0] + np.log(np.mean(np.exp(path - top), axis=1))  # (T,) log of the mean wealth
        if self.failed_at is None:
            hit = np.flatnonzero(mixture >= math.log(1 / self.config.alpha))
            if len(hit):
                self.failed_at = self.n + int(hit[0]) + 1
        self.log_wealth = path[-1]
        self.n += len(x)
        self.right += int(x.sum())
        return self

    def state(self) -> dict[str, Any]:
        """JSON-ready state to store and resume from."""
        return {"log_wealth": self.log_wealth.tolist(), "n": self.n, "right": self.right, "failed_at": self.failed_at}

    def report(self) -> dict[str, Any]:
        return {
            "target_accuracy": self.config.target_accuracy,
            "alpha": self.config.alpha,
            "reviews": self.n,
            "accuracy": self.right / self.n if self.n else None,
            "wealth": self.wealth,
            "fails_at_wealth": 1 / self.config.alpha,
            "failed": self.failed,
            "failed_at": self.failed_at,
            "action": self.config.action,
        }
