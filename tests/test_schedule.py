"""The training schedule on its own: starts, annealing-driven learning rates, the two phases, state."""

import math

import pytest

from dcgmm.schedule import Schedule
from dcgmm.training import TrainConfig


def test_layers_start_after_their_wait():
    schedule = Schedule({1: 25, 3: 36, 5: 49}, TrainConfig(wait=0.1), total_steps=1000)
    assert [s.start_step for s in schedule.layers.values()] == [0, 100, 200]
    assert schedule.active(3, 99) is False and schedule.active(3, 100) is True


def test_initial_radius_follows_k_unless_given():
    schedule = Schedule({1: 25, 3: 36}, TrainConfig(), total_steps=10)
    assert schedule.sigma(1) == pytest.approx(0.25 * math.sqrt(50)) and schedule.sigma(3) == pytest.approx(0.25 * math.sqrt(72))
    assert Schedule({1: 25}, TrainConfig(sigma_start=2.0), total_steps=10).sigma(1) == 2.0


def test_phase_two_starts_at_the_fraction_of_all_steps():
    schedule = Schedule({1: 4}, TrainConfig(precisions_from=0.25, window=1000), total_steps=100)
    phases = []
    for step in range(40):
        changed = schedule.record(1, 1.0, step)
        phases.append((schedule.layers[1].phase, changed))
    assert phases[24] == (1, False) and phases[25] == (2, True) and phases[26] == (2, False)


def test_phase_two_at_the_annealing_floor_and_learning_rate_decay():
    config = TrainConfig(precisions_from=None, window=2, sigma_start=0.02, sigma_min=0.01, gamma=0.5, lr=0.1, lr_min=0.04)
    schedule = Schedule({1: 4}, config, total_steps=1000)
    state = schedule.layers[1]
    step, lrs = 0, []
    while state.phase == 1:  # a constant objective is a plateau: every window reduces sigma
        schedule.record(1, 5.0, step)
        lrs.append(state.lr)
        step += 1
    assert state.annealing.done and state.annealing.sigma == 0.01
    assert lrs[-1] == 0.05 and min(lrs) >= config.lr_min  # 0.1 -> 0.05, never below lr_min


def test_state_round_trip():
    a = Schedule({1: 4, 3: 9}, TrainConfig(window=3), total_steps=100)
    for step in range(17):
        a.record(1, float(step % 5), step)
        a.record(3, 2.0, step)
    b = Schedule({1: 4, 3: 9}, TrainConfig(window=3), total_steps=100)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
