"""Progress lines of long offline scoring (`scada-infer`, `scada-evaluate`): what, how far, how fast."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """`progress(done)` logs "<what>: <done> of <total> (<share>), <rate>/s" at most once every `every_s` seconds,
    and always when done reaches total: a short job prints one line, a long one shows it is moving."""

    def __init__(self, what: str, total: int, log: Callable[[str], None], every_s: float = 5.0) -> None:
        self.what, self.total, self.log, self.every_s = what, total, log, every_s
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        self.log(f"{self.what}: {done:,} of {self.total:,} ({done / max(self.total, 1):.0%}), {rate:,.0f}/s")


def quiet(done: int) -> None:
    """A progress callback that says nothing."""


def progress_of(log: Callable[[str], None] | None, what: str, total: int) -> Callable[[int], None]:
    """A `Progress` of `what` out of `total` logging to `log`, or `quiet` without a log."""
    return quiet if log is None else Progress(what, total, log)
