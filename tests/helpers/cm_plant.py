"""A planted rdma_cm id: bound to the device of SRC, resolved towards DST:PORT, held until
stdin closes. With SRC and DST both the peer's address (rxe1's) and PORT a kernel
client's service port, it is the connection a kernel ULP's reconnect makes when its route
falls through to `lookup local` (both ends on rxe1, around the wire): the negative
control of the kernel rows' off-wire check (tests/rxe/test_negative_controls.py).

    python -P -m tests.helpers.cm_plant SRC DST PORT

Prints {"event": "ready", "src": .., "dst": .., "port": ..} once its route is resolved
(the id shows in `rdma -j res show cm_id` then), and {"event": "closed"} at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time

from harness.rdma.cm import CM_RESOLVE_TIMEOUT_MS, CMID, AddrInfo, EventChannel, ce
from harness.rdma.event_fds import wait_readable
from harness.rdma.verbs import verbs_call

HOLD_TIMEOUT_S = 300.0  # the test closes stdin long before


def say(event: str, **detail: object) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **detail}), flush=True)


def main(argv: list[str]) -> int:
    src, dst, port = argv[0], argv[1], int(argv[2])
    events = EventChannel()
    try:
        with verbs_call("create rdma_cm id"):
            cmid = CMID(creator=events.ch, port_space=ce.RDMA_PS_TCP)
        try:
            ai = AddrInfo(src=src, dst=dst, dst_service=str(port), port_space=ce.RDMA_PS_TCP)
            with verbs_call(f"rdma_resolve_addr {src} -> {dst}"):
                cmid.resolve_addr(ai, CM_RESOLVE_TIMEOUT_MS)
            events.expect("ADDR_RESOLVED")
            with verbs_call("rdma_resolve_route"):
                cmid.resolve_route(CM_RESOLVE_TIMEOUT_MS)
            events.expect("ROUTE_RESOLVED")
            say("ready", src=src, dst=dst, port=port)
            deadline = time.monotonic() + HOLD_TIMEOUT_S  # until stdin closes
            while (left := deadline - time.monotonic()) > 0:
                if wait_readable(0, left) and not os.read(0, 1):
                    break
        finally:
            cmid.close()
    finally:
        events.close()
    say("closed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
