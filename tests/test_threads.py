"""The thread governor on made-up clocks: it gives way when the cores are shared and takes them back when free."""

import pytest
import torch

from dcgmm.errors import InputError
from dcgmm.threads import ThreadGovernor, use_threads


class Clocks:
    def __init__(self):
        self.wall = self.cpu = self.idle = 0.0

    def advance(self, wall: float, cpu: float, idle: float) -> None:
        self.wall += wall
        self.cpu += cpu
        self.idle += idle


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_drops_to_one_thread_when_shared_and_returns_when_free(two_threads):
    clocks = Clocks()
    governor = ThreadGovernor(lambda: clocks.wall, lambda: clocks.cpu, lambda: clocks.idle)
    clocks.advance(0.1, 0.1, 0.0)
    governor.step()  # a window shorter than WINDOW decides nothing
    assert torch.get_num_threads() == 2
    clocks.advance(0.4, 0.95, 0.0)  # both threads busy for the whole window: ratio 1.05/1 -> alone
    governor.step()
    assert torch.get_num_threads() == 2 and governor.changes == [] and governor.summary() is None
    clocks.advance(0.5, 0.5, 0.0)  # two threads got one core's worth: shared
    governor.step()
    assert torch.get_num_threads() == 1 and governor.changes == [("down", 1)]
    clocks.advance(0.5, 0.5, 0.1)  # one thread, no core idle: stay
    governor.step()
    assert torch.get_num_threads() == 1
    clocks.advance(0.5, 0.5, 0.5)  # a whole core idle over the window: back to both
    governor.step()
    assert torch.get_num_threads() == 2 and governor.changes == [("down", 1), ("up", 2)]
    assert "thread count 2 time(s) (1 down to 1 thread)" in governor.summary()
    assert "--threads N" in governor.summary()
    torch.set_num_threads(1)
    governor.restore()
    assert torch.get_num_threads() == 2


def test_fixed_thread_counts(two_threads):
    assert use_threads(1) == 1 and use_threads(None) == 1
    with pytest.raises(InputError, match="at least 1"):
        use_threads(0)
