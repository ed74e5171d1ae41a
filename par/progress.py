"""Progress reporting that suits both a terminal and a log file.

On a terminal (stderr is a TTY) this is a tqdm bar. In a log (Slurm, Snakemake, a pipe) a bar would write
a frame every redraw, hundreds of kilobytes of carriage returns, so instead one plain line is printed each
time another ~10 % is done or ~30 s have passed, and a last one at the end::

    train raster-n1: 40/200 (20%) 12.3 s, loss=2.3456, lr=1.00e-04
"""

from __future__ import annotations

import math
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

LOG_FRACTION = 0.1  # a log line each time this fraction of the total is done ...
LOG_SECONDS = 30.0  # ... or this many seconds have passed since the last line


class Progress:
    """A counter towards `total` with `update(n)`, `set_postfix(**fields)` and `close()` (also a context manager).

    ``enable=False`` prints nothing. ``tty=None`` asks `file.isatty()`: True draws a tqdm bar, False prints
    bounded plain lines (at most about 1/`every_fraction` + elapsed/`every_seconds` + 1 of them)."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "it", enable: bool = True,
                 file: TextIO | None = None, tty: bool | None = None, every_fraction: float = LOG_FRACTION,
                 every_seconds: float = LOG_SECONDS):
        self.file = file if file is not None else sys.stderr
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.enable = enable
        self.postfix: dict[str, object] = {}
        self._bar = None
        if enable and (self.file.isatty() if tty is None else tty):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)
        self._step = max(1, math.ceil(self.total * every_fraction))
        self._every_s = every_seconds
        self._t0 = self._t_last = time.monotonic()
        self._next = (self.n // self._step + 1) * self._step
        self._printed = self.n  # counts already reported (the starting point needs no line)
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enable and (self.n >= self._next or now - self._t_last >= self._every_s):
            self._line(now)

    def set_postfix(self, **fields) -> None:
        self.postfix = fields
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enable and self.n != self._printed:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total}{pct} {now - self._t0:.1f} s{extra}", file=self.file, flush=True)
        self._t_last, self._printed = now, self.n
        self._next = (self.n // self._step + 1) * self._step

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, *, total: int | None = None, **kwargs) -> Iterator[T]:
    """Iterate over `items`, reporting progress as `Progress` does (`total` defaults to ``len(items)``)."""
    with Progress(len(items) if total is None else total, desc, **kwargs) as p:  # type: ignore[arg-type]
        for item in items:
            yield item
            p.update(1)
