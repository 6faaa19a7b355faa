"""A dependency-free progress bar for the light side (the training side uses Lightning's)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """``desc  12/40 [#####.........]  3.1 img/s  ETA 0:09`` redrawn in place on a terminal.

    Off a terminal (logs, CI) it stays silent unless ``enabled=True``; then it prints a line
    each time another tenth of the work is done.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "img", enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.done = max(total, 0), desc, unit, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = self.tty if enabled is None else enabled
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            self._draw(final=False)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        eta = _clock((self.total - self.done) / rate) if rate > 0 and self.done < self.total else "-"
        return (
            f"{self.desc}  {self.done}/{self.total} [{'#' * filled}{'.' * (width - filled)}]  "
            f"{rate:.2f} {self.unit}/s  elapsed {_clock(elapsed)}  ETA {eta}"
        )

    def _draw(self, final: bool) -> None:
        now = time.perf_counter()
        if self.tty:
            if final or now - self._last_draw > 0.1:
                self.stream.write("\r" + self._line() + ("\n" if final else ""))
                self.stream.flush()
                self._last_draw = now
        else:
            decile = 10 * self.done // self.total if self.total else 10
            if (final and decile != self._last_decile) or decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
