"""What the peer guest runs (harness.vm.pair, for `--peer guest`): its end of the wire and
the management link up, rxe1 on the wire, then the peer's service on the management link
behind the run's secret (clients.kernel.peer_service) until the local side lets go.

    python -P -m harness.run.pair_peer        # RXE_POWER_PEER_SECRET_FILE names the secret

It prints one `PAIR-PEER {json}` line (the links, rxe1, how long each took) before the
service starts; its exit code is the service's (1 when a target could not be removed).
"""

from __future__ import annotations

import json
import os
import sys

from clients.kernel import peer_service
from harness.core import settings
from harness.core.errors import RxePowerError
from harness.topology.wire import RXE_NAME, Link, PairSide, link_end, set_up_side

PEER_LINE_TAG = "PAIR-PEER "


def main(argv: list[str] | None = None) -> int:
    secret_file = os.environ.get(settings.PEER_SECRET_FILE_ENV)
    if not secret_file:
        print(f"pair_peer: error: no {settings.PEER_SECRET_FILE_ENV} (harness.vm.pair sets "
              "it)", file=sys.stderr, flush=True)
        return 1
    try:
        report = set_up_side(PairSide.PEER)
    except RxePowerError as exc:
        print(f"pair_peer: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(PEER_LINE_TAG + json.dumps(report, separators=(",", ":")), flush=True)
    wire, mgmt = link_end(Link.WIRE, PairSide.PEER), link_end(Link.MGMT, PairSide.PEER)
    return peer_service.main(["--device", RXE_NAME[PairSide.PEER], "--addr", wire.addr,
                              "--listen", f"{mgmt.addr}:{peer_service.SERVICE_TCP_PORT}",
                              "--secret-file", secret_file, *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
