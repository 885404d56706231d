"""Progress bars draw only on a terminal; lines always go out."""

import io
import sys

from dcgmm.progress import progress_bar, write_line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal():
    piped = io.StringIO()
    for _ in progress_bar(range(3), file=piped):
        pass
    assert piped.getvalue() == ""  # a file or pipe: no redraws at all
    terminal = _Terminal()
    for _ in progress_bar(range(3), file=terminal, desc="epoch 1/1"):
        pass
    assert "epoch 1/1" in terminal.getvalue() and "\r" in terminal.getvalue()
    off = _Terminal()
    for _ in progress_bar(range(3), file=off, enabled=False):
        pass
    assert off.getvalue() == ""


def test_lines_go_out_without_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    write_line("epoch   1   0.30s | L1 obj 12.00")
    assert out.getvalue() == "epoch   1   0.30s | L1 obj 12.00\n"
