"""The two-kernel pair's feasibility probe (issue 24): run in each guest of
harness.vm.pair, it proves the wire carries RoCE and the management link the peer agent.

    peer:  links up, rxe1 on the wire; an rping server on the wire address (waited for
           until its rdma_cm id listens); the peer agent on the management link behind the
           run's secret; ends when the agent's owner goes and rping has served its client.
    local: links up, rxe0 on the wire; a connection with a wrong secret (must be
           refused; its connect waits, bounded, for the peer guest's agent to listen) and
           one with the right one (hello, holders); then rping across the wire, with
           rxe0's packet counters before and after as independent evidence; then closes
           the agent's session.

Each prints one `PAIR-PROBE {json}` line: what was measured, in seconds and counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.core import settings
from harness.core.errors import BoundExceeded, RxePowerError
from harness.core.peer_auth import AuthRefused, new_secret, read_secret
from harness.core.proc import python_child, run_bounded
from harness.peer.remote import RemotePeer
from harness.system import gid_table
from harness.system.provenance_collect import collect
from harness.system.rdma_cm_ids import LISTEN, cm_ids
from harness.topology.wire import (
    RXE_NAME,
    Link,
    PairSide,
    link_end,
    set_up_side,
)

AGENT_TCP_PORT = 18770  # the peer agent, on the management link only
RPING_LISTEN_TIMEOUT_S = 30.0
RPING_RUN_TIMEOUT_S = 120.0
PEER_SESSION_TIMEOUT_S = 1200.0  # the agent's session, the local side's whole probe
POLL_S = 0.2
COUNTERS = ("sent_pkts", "rcvd_pkts")


def hw_counters(dev: str) -> dict[str, int]:
    base = Path("/sys/class/infiniband") / dev / "ports" / "1" / "hw_counters"
    return {name: int((base / name).read_text()) for name in COUNTERS}


def _wait_rping_listening(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.monotonic()
    while not [c for c in cm_ids() if c.state == LISTEN and c.pid == proc.pid]:
        if proc.poll() is not None:
            raise RxePowerError(f"rping -s exited {proc.returncode} before listening",
                                "see its output above")
        if time.monotonic() - t0 > RPING_LISTEN_TIMEOUT_S:
            raise BoundExceeded("rping server listening", "RPING_LISTEN_TIMEOUT_S",
                                RPING_LISTEN_TIMEOUT_S, f"a LISTEN cm_id of pid {proc.pid}")
        time.sleep(POLL_S)
    return time.monotonic() - t0


def run_peer(secret_file: Path, count: int, size: int) -> dict[str, object]:
    report = set_up_side(PairSide.PEER)
    wire, mgmt = link_end(Link.WIRE, PairSide.PEER), link_end(Link.MGMT, PairSide.PEER)
    dev = RXE_NAME[PairSide.PEER]
    rping = subprocess.Popen(["rping", "-s", "-a", wire.addr, "-C", str(count), "-S", str(size)],
                             stdin=subprocess.DEVNULL)
    try:
        report["rping_listen_s"] = round(_wait_rping_listening(rping), 2)
        gid = gid_table.lookup_rocev2_gid(dev, wire.addr)
        if gid is None:
            raise RxePowerError(f"{dev} has no RoCEv2 GID for {wire.addr}", "see the log")
        agent = run_bounded(python_child(
            "harness.peer.agent", "--device", dev, "--gid-index", str(gid.index), "--addr",
            wire.addr, "--listen", f"{mgmt.addr}:{AGENT_TCP_PORT}", "--secret-file",
            str(secret_file)), PEER_SESSION_TIMEOUT_S, step="the peer agent's session",
            bound_name="PEER_SESSION_TIMEOUT_S", outstanding="the agent's owner", capture=False)
        report["agent_exit"] = agent.returncode
        report["rping_server_exit"] = rping.wait(RPING_RUN_TIMEOUT_S)
    finally:
        if rping.poll() is None:
            rping.kill()
            rping.wait()
    report["counters"] = hw_counters(dev)
    return report


def run_local(secret_file: Path, count: int, size: int) -> dict[str, object]:
    report = set_up_side(PairSide.LOCAL)
    report["provenance"] = collect().to_json()  # the local guest's kernel, module, tree
    mgmt, wire = link_end(Link.MGMT, PairSide.PEER), link_end(Link.WIRE, PairSide.PEER)
    secret = read_secret(secret_file)
    t0 = time.monotonic()
    wrong = new_secret()
    try:
        RemotePeer(mgmt.addr, AGENT_TCP_PORT, wrong).close()
        report["wrong_secret"] = "ADMITTED"  # a defect: the probe fails below
    except AuthRefused as exc:
        report["wrong_secret"] = f"refused: {exc.problem}"
    report["agent_reachable_s"] = round(time.monotonic() - t0, 2)
    with RemotePeer(mgmt.addr, AGENT_TCP_PORT, secret) as peer:
        report["hello"] = peer.hello
        report["holders_qps"] = len(peer.request("holders")["qps"])
        dev = RXE_NAME[PairSide.LOCAL]
        before = hw_counters(dev)
        t1 = time.monotonic()
        done = run_bounded(["rping", "-c", "-a", wire.addr, "-C", str(count), "-S", str(size)],
                           RPING_RUN_TIMEOUT_S, step="rping across the wire",
                           bound_name="RPING_RUN_TIMEOUT_S", outstanding="rping -c")
        report["rping"] = {"exit": done.returncode, "seconds": round(time.monotonic() - t1, 2),
                           "count": count, "size": size, "stderr": done.stderr[-300:]}
        after = hw_counters(dev)
        delta = {k: after[k] - before[k] for k in COUNTERS}
        report["counters_delta"] = delta
    report["ok"] = (str(report["wrong_secret"]).startswith("refused") and done.returncode == 0
                    and all(v > 0 for v in delta.values()))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.run.pair_probe")
    ap.add_argument("side", type=PairSide, choices=list(PairSide))
    ap.add_argument("--secret-file", type=Path, default=None,
                    help=f"default: ${settings.PEER_SECRET_FILE_ENV} (harness.vm.pair sets it)")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    run = run_local if args.side is PairSide.LOCAL else run_peer
    secret_file = args.secret_file or os.environ.get(settings.PEER_SECRET_FILE_ENV)
    if not secret_file:
        ap.error(f"no --secret-file and no {settings.PEER_SECRET_FILE_ENV}")
    try:
        report = run(Path(secret_file), args.count, args.size)
    except RxePowerError as exc:
        print(f"pair_probe: error: {exc}", file=sys.stderr, flush=True)
        return 1
    print("PAIR-PROBE " + json.dumps(report, separators=(",", ":")), flush=True)
    return 0 if report.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
