"""Client policies: the same workload through the same I/O path (clients.core), differing
only in what they do around a power transition. Each runs in its own worker process
(clients.worker), steered by the controller (harness.clientrun)."""

from __future__ import annotations

from clients.fail_fast import FailFast
from clients.graceful import Graceful
from clients.naive import Naive
from clients.queue_replay import QueueReplay

POLICIES = {p.name: p for p in (Naive, FailFast, QueueReplay, Graceful)}
