"""The annealing controller: sigma shrinks on plateaus only."""


import pytest

from dcgmm.annealing import Annealing


def test_annealing_reduces_on_plateau_only():
    steady = Annealing(sigma=2.0, window=10)
    for step in range(200):
        steady.update(float(step))  # keeps improving at a constant pace relative to the start: no plateau
    improving_reductions = steady.reductions
    plateau = Annealing(sigma=2.0, window=10)
    for step in range(200):
        plateau.update(1.0 - 0.5 ** (step / 10))  # converges: relative improvement falls below delta
    assert plateau.reductions > improving_reductions
    assert plateau.sigma == pytest.approx(2.0 * 0.9**plateau.reductions)
    floor = Annealing(sigma=0.011, sigma_min=0.01, window=1)
    for _ in range(10):
        floor.update(1.0)
    assert floor.sigma == 0.01 and floor.done
