"""A sampler of the kernel's state over a scenario: sample_once() at entry, every
interval in a thread, and once more at exit; what it keeps is in `samples` (each sampler
says which: nvme_host.CtrlSampler, nfs_client.XprtSampler, route_guard.CmSampler).

    with CtrlSampler() as s:
        ...
    s.samples
"""

from __future__ import annotations

import threading
from typing import Any, Generic, Self, TypeVar

S = TypeVar("S")


class Sampler(Generic[S]):
    join_timeout_s: float | None = None  # None: 5 intervals and a second

    def __init__(self, interval_s: float, name: str) -> None:
        self.interval_s = interval_s
        self.samples: list[S] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample_once(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def __enter__(self) -> Self:
        self.sample_once()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.join_timeout_s if self.join_timeout_s is not None
                          else 5 * self.interval_s + 1)
        self.sample_once()
