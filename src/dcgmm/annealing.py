"""Annealing controller of the max-component loss (Gepperth & Pfülb, ref. [7] of the paper).

The smoothing radius sigma of a GMM layer starts wide and shrinks by a factor gamma whenever the layer's
objective has stopped improving at the current radius: the objective is averaged over windows of
``window`` steps, and when the relative improvement ``(avg - last) / (last - first)`` of a window over the
previous one, measured against the whole improvement since the first window, falls inside
``(-2 delta, delta)``, sigma is multiplied by gamma (down to ``sigma_min``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Annealing:
    """State of one layer's annealing; feed it the objective (higher is better) after every step."""

    sigma: float
    sigma_min: float = 0.01
    gamma: float = 0.9
    window: int = 100
    delta: float = 0.05
    first: float | None = None  # average of the very first window
    last: float | None = None  # previous window average
    total: float = 0.0
    count: int = 0
    reductions: int = 0

    @property
    def done(self) -> bool:
        """True once sigma has reached its floor: the loss is then the plain max-component log-likelihood."""
        return self.sigma <= self.sigma_min

    def update(self, objective: float) -> bool:
        """Record one step's objective; return True if sigma was reduced by this call."""
        if self.done:
            return False
        self.total += objective
        self.count += 1
        if self.count < self.window:
            return False
        average = self.total / self.count
        self.total, self.count = 0.0, 0
        reduce = False
        if self.first is None:
            self.first = average
        elif self.last == self.first:  # no progress measured yet: a window that did not improve is a plateau
            reduce = average <= self.last
        else:
            relative = (average - self.last) / abs(self.last - self.first)
            reduce = -2 * self.delta < relative < self.delta
        self.last = average
        if reduce:
            self.sigma = max(self.sigma * self.gamma, self.sigma_min)
            self.reductions += 1
        return reduce

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
