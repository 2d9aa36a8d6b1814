"""queue-replay: buffers requests while the device is down and replays them after resume.

Like a TCP client whose sends are buffered across a NIC sleep: on suspend notice
or the first error it stops posting, moves its QPs to ERR, puts every request
that came back unfinished (flushed or failed) at the front of its own queue,
releases the device and goes on accepting application requests into the queue.
After resume_complete it reopens the device, connects a fresh QP generation and
replays the queue in order. Nothing is reported failed to the application; the
peer's ledger shows whether anything was delivered twice (a request that
reached the peer but whose completion was lost is replayed).
"""

from __future__ import annotations

from clients.userspace.fail_fast import FailFast


class QueueReplay(FailFast):
    name = "queue-replay"
    requeue = True
