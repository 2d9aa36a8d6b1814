"""The rdma_cm check: a whole rdma_cm connection, traffic and orderly disconnect
between the local HCA and the peer agent, in a process of its own.

    run_cm_session_in_child(topo_json, port) -> dict     (python -m harness.peer.cm_check)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.core.strict_json import loads_strict
from harness.peer import traffic
from harness.peer.controller import PeerAgent
from harness.rdma.cm import CmClient
from harness.rdma.qp_types import QpInfo, QpParams
from harness.topology.config import Endpoint

# --- a whole rdma_cm session in its own process -------------------------------------------
#
# librdmacm (rdma-core 44) keeps a device's verbs context open for the life of the
# process once rdma_cm has used the device (ucma_put_device closes it only when the
# device is dead). A process that used rdma_cm on rxe0 therefore holds rxe0 until it
# exits, and `rdma link delete rxe0` blocks until then. So the active side of an
# rdma_cm connection runs in a worker process of its own; it prints one JSON result.

CM_CHECK_TIMEOUT_S = 120.0


def cm_session(topo_json: dict[str, Any], port: int, slots: int = 16,
               slot_size: int = 1 << 16) -> dict[str, Any]:
    """Listen on the peer (its own agent), connect from the local HCA, run traffic,
    disconnect in order; report what each side saw."""
    loc, peer = Endpoint(**topo_json["local"]), Endpoint(**topo_json["peer"])
    out: dict[str, Any] = {}
    with PeerAgent(peer) as agent:
        agent.request("cm_listen", port=port, mr_size=1 << 21, recv_slots=slots,
                      slot_size=slot_size)
        params = QpParams(max_send_wr=slots, max_recv_wr=slots, mr_size=1 << 20)
        with CmClient(loc.dev, loc.gid_index, loc.addr, peer.addr, port, params) as client:
            rep = agent.request("cm_events", count=2, timeout_s=10)
            out["peer_connect_events"] = [ev["event"] for ev in rep["events"]]
            req = rep["events"][0]
            pair = traffic.Pair(client.qp, agent, req["qp_id"], QpInfo.from_json(req["info"]),
                                slots, slot_size)
            ops = [traffic.send_messages(pair, [1, 64, 4096, 65536] * 50),
                   traffic.write_messages(pair, [4096] * 32),
                   traffic.read_messages(pair, [4096] * 32),
                   traffic.atomics(pair, 10)]
            out["operations"] = [op.to_json() for op in ops]
            t0 = time.monotonic()
            client.disconnect()
            out["local_disconnected_s"] = time.monotonic() - t0
            rep = agent.request("cm_events", count=1, timeout_s=10)
            out["peer_disconnect_events"] = [ev["event"] for ev in rep["events"]]
            out["peer_flushed"] = agent.arrivals(req["qp_id"], 0, timeout_s=1)["events"]
            out["slots"] = slots
        agent.request("cm_stop")
    return out


def run_cm_session_in_child(topo_json: dict[str, Any], port: int,
                            timeout_s: float = CM_CHECK_TIMEOUT_S) -> dict[str, Any]:
    """Run cm_session in a fresh Python process; returns its JSON result."""
    argv = [sys.executable, "-m", "harness.peer.cm_check", json.dumps(topo_json), str(port)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BoundExceeded("rdma_cm session worker", "CM_CHECK_TIMEOUT_S", timeout_s,
                            "the worker's connect/traffic/disconnect") from None
    if proc.returncode != 0:
        raise RxePowerError(f"rdma_cm worker exited {proc.returncode}: {proc.stderr[-2000:]}",
                            "see the worker's error above")
    lines = proc.stdout.strip().splitlines()
    try:
        out = loads_strict(lines[-1].encode()) if lines else None
    except ProtocolError as exc:
        raise ProtocolError(f"rdma_cm worker's result line: {exc.problem}",
                            "it prints one JSON object as its last line") from None
    if not isinstance(out, dict):
        raise ProtocolError(f"rdma_cm worker printed no JSON object: {proc.stdout[-400:]!r}",
                            "it prints one JSON object as its last line")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(cm_session(json.loads(args[0]), int(args[1]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
