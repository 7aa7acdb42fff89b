"""Progress display: a live tqdm bar on a terminal, a plain line every few seconds in a log."""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional

from tqdm import tqdm


class Progress:
    """A counter with live values. On a terminal it is a tqdm bar; otherwise (CI logs, files)
    it prints one line at most every `log_every` seconds and a final line at `close`."""

    def __init__(self, total: int, description: str, unit: str = "it", enabled: bool = True,
                 log_every: float = 15.0, initial: int = 0) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.enabled, self.log_every = enabled, log_every
        self.count = initial
        self.values: Dict[str, str] = {}
        self._last_log = time.monotonic()
        self._start = time.monotonic()
        self._logged_count = -1          # count of the last printed line, so close() never repeats it
        self._bar: Optional[tqdm] = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=description, unit=unit, initial=initial, dynamic_ncols=True,
                             leave=True)

    def update(self, n: int = 1, **values: float | str) -> None:
        self.count += n
        self.values.update({k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()})
        if self._bar is not None:
            self._bar.set_postfix(self.values, refresh=False)
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_log >= self.log_every:
            self._log()

    def _log(self) -> None:
        self._last_log = time.monotonic()
        self._logged_count = self.count
        elapsed = self._last_log - self._start
        shown = " ".join(f"{k}={v}" for k, v in self.values.items())
        print(f"{self.description}: {self.count}/{self.total} {self.unit} ({elapsed:.0f} s) {shown}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._logged_count != self.count:
            self._log()
