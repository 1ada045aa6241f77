"""A log that cannot be flooded: a peer that sends bad requests by the thousand costs a few lines a minute."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimited:
    """A log that writes at most `per_window` lines per key (a peer's address, a client) every `window_s`, then
    one line saying how many it left out: 2,000 bad-token connections wrote 163 bytes each (5.5 GB a day at
    that rate) before."""

    def __init__(self, log: Callable[[str], None], per_window: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.per_window, self.window_s, self.clock = log, per_window, window_s, clock
        self.windows: dict[str, list[float]] = {}  # key -> [window start, lines written, lines left out]

    def __call__(self, key: str, text: str) -> None:
        now = self.clock()
        w = self.windows.get(key)
        if w is None or now - w[0] >= self.window_s:
            if w is not None and w[2]:
                self.log(f"{key}: {int(w[2])} more refusals in {self.window_s:g} s were not logged")
            if len(self.windows) > 10_000:  # keys are peers' addresses: bounded too
                self.windows.clear()
            w = self.windows[key] = [now, 0, 0]
        if w[1] < self.per_window:
            w[1] += 1
            self.log(text)
        else:
            w[2] += 1
