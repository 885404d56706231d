"""Progress bars that draw only on a terminal.

On a terminal, long loops show a tqdm bar. When the output goes to a file or a pipe (``dcgmm train ... >
train.log 2>&1``, CI), bars are off — no carriage-return redraws — and the library's one line per epoch or
stage is all that is written.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **options) -> tqdm:
    """A tqdm bar over ``iterable`` (or with ``total=``); drawn only when ``enabled`` and stderr is a terminal.

    ``options`` go to :class:`tqdm.tqdm` (``desc``, ``total``, ``leave`` ...). tqdm's ``disable=None`` turns a
    bar off when its output is not a TTY.
    """
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **options)


def write_line(text: str) -> None:
    """Print one line without breaking a bar that is being drawn."""
    tqdm.write(text)
