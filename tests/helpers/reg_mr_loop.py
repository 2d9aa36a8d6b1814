"""A process that is inside a long uverbs call on the local HCA most of the time: it
registers and deregisters one large MR over and over (pinning its pages takes the
kernel a while), for the slow-delete test (tests/rxe/test_slow_delete.py).

    python tests/helpers/reg_mr_loop.py

One JSON line per step: {"event": "sized", "bytes": N, "took_s": S} once a
registration takes at least MIN_CALL_S (the size doubles from START_BYTES until it
does, up to MAX_BYTES), then {"event": "looping"}, then {"event": "calling", "t": T} as
each registration begins (on a fresh mapping); when a registration fails (the device
went: EIO) {"event": "failed", "errno": E, "name": ...}; after stdin closes, exit 0.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import sys
import time

from harness.core.errors import RxePowerError, oserror_to
from harness.rdma.verbs import ACCESS_ALL, Device
from harness.topology import devices
from harness.topology.config import TopologyConfig

START_BYTES = 64 << 20
MAX_BYTES = 768 << 20
MIN_CALL_S = 1.0  # a registration at least this long: the delete's 0.5 s falls inside it
LOOP_TIMEOUT_S = 120.0  # registering until the device goes, at most this long


def say(event: str, **detail: object) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), "t": time.monotonic(), **detail}),
          flush=True)


def register(dev: Device, buf: mmap.mmap, size: int) -> float:
    from pyverbs.mr import MR

    addr = ctypes.addressof((ctypes.c_char * size).from_buffer(buf))
    t0 = time.monotonic()
    mr = MR(dev.pd, size, ACCESS_ALL, address=addr)
    took = time.monotonic() - t0
    mr.close()
    return took


def main() -> int:
    cfg = TopologyConfig.from_settings()
    local = devices.discover(cfg).local
    with Device(local.dev, 1, local.gid_index) as dev:
        size = START_BYTES
        while True:
            buf = mmap.mmap(-1, size)
            took = register(dev, buf, size)
            if took >= MIN_CALL_S or size >= MAX_BYTES:
                break
            buf.close()
            size *= 2
        say("sized", bytes=size, took_s=round(took, 3))
        say("looping")
        end = time.monotonic() + LOOP_TIMEOUT_S
        buf.close()
        while time.monotonic() < end:
            # a fresh mapping each time: its pages are faulted in inside the registration,
            # which then takes as long as the sizing one (reusing one mapping, whose pages
            # were in already, left the holder outside its ioctl much of the time: a delete
            # at a random moment missed the call in two CI runs)
            buf = mmap.mmap(-1, size)
            say("calling")
            try:
                register(dev, buf, size)
            except Exception as exc:  # a PyverbsRDMAError (pyverbs' own type) or ours
                err = getattr(exc, "errno", 0) if isinstance(exc, RxePowerError) else \
                    oserror_to("reg_mr", exc).errno
                say("failed", errno=err, name=errno.errorcode.get(err, str(err)))
                break
            finally:
                buf.close()
    sys.stdin.read()  # until the test closes it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
