"""The training schedule of a DCGMM's GMM layers: when each layer adapts, what it adapts and how fast.

Per GMM layer (paper Sec. III-B1 and Gepperth & Pfülb's SGD for GMMs):

* **start**: layer r (counting GMM layers from 0 at the bottom) adapts from step ``r x wait x total``;
* **annealing**: an :class:`~dcgmm.annealing.Annealing` controller shrinks the smoothing radius sigma when the
  layer's objective reaches a plateau; each reduction also multiplies the layer's learning rate by gamma,
  down to ``lr_min``;
* **phases**: in phase 1 only the centroids adapt; phase 2 (precisions and mixing weights too) starts at
  ``precisions_from x total`` steps, or, with ``precisions_from=None``, once the annealing reaches its floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .annealing import Annealing


@dataclass
class LayerSchedule:
    """Where one GMM layer stands in the schedule."""

    annealing: Annealing
    start_step: int
    phase: int = 1
    lr: float = 0.0

    def state_dict(self) -> dict:
        return {"annealing": self.annealing.state_dict(), "start_step": self.start_step, "phase": self.phase, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.annealing.load_state_dict(state["annealing"])
        self.start_step, self.phase, self.lr = state["start_step"], state["phase"], state["lr"]


class Schedule:
    """The schedule of every GMM layer of a model over ``total_steps`` steps.

    Parameters
    ----------
    components : ``{layer index: K}`` of the GMM layers, bottom to top.
    config : the training settings (a :class:`~dcgmm.training.TrainConfig`): lr, lr_min, gamma, sigma_start,
        sigma_min, window, delta, precisions_from, wait.
    total_steps : steps of the whole run.
    """

    def __init__(self, components: dict[int, int], config, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        self.layers: dict[int, LayerSchedule] = {}
        for rank, (index, k) in enumerate(components.items()):
            sigma0 = config.sigma_start if config.sigma_start is not None else 0.25 * math.sqrt(2 * k)
            annealing = Annealing(sigma0, config.sigma_min, config.gamma, config.window, config.delta)
            start = int(round(rank * config.wait * total_steps))
            self.layers[index] = LayerSchedule(annealing, start, phase=1, lr=config.lr)

    def active(self, index: int, step: int) -> bool:
        """Whether layer ``index`` adapts at ``step``."""
        return step >= self.layers[index].start_step

    def sigma(self, index: int) -> float:
        """The layer's current smoothing radius."""
        return self.layers[index].annealing.sigma

    def record(self, index: int, objective: float, step: int) -> bool:
        """Feed the objective of ``step``; True when the layer's learning rate or phase changed."""
        state, c = self.layers[index], self.config
        changed = False
        if state.annealing.update(objective):
            state.lr = max(state.lr * c.gamma, min(c.lr_min, c.lr))
            changed = True
        if state.phase == 1:
            begins = state.annealing.done if c.precisions_from is None else step >= c.precisions_from * self.total_steps
            if begins:
                state.phase = 2
                changed = True
        return changed

    def state_dict(self) -> dict:
        return {str(k): s.state_dict() for k, s in self.layers.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, layer_state in state.items():
            self.layers[int(key)].load_state_dict(layer_state)
