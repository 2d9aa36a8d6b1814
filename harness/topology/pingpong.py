"""The traffic check with an rdma-core program (not ours): ibv_rc_pingpong rxe1 (server)
<-> rxe0 (client) across the wire, bounded.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from harness.core.errors import BoundExceeded, TopologyError
from harness.system.tcp_ports import free_tcp_port, tcp_listening
from harness.topology.config import Topology

PINGPONG_TIMEOUT_S = 60.0
PINGPONG_ITERS = 200
POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class PingpongResult:
    iters: int
    usec_per_iter: float | None
    client_output: str


_USEC_RE = re.compile(r"(\d+) iters in ([\d.]+) seconds = ([\d.]+) usec/iter")


def parse_pingpong(text: str) -> tuple[int, float] | None:
    m = _USEC_RE.search(text)
    return (int(m.group(1)), float(m.group(3))) if m else None


def pingpong_check(topo: Topology, iters: int = PINGPONG_ITERS,
                   timeout_s: float = PINGPONG_TIMEOUT_S) -> PingpongResult:
    """Run rdma-core's ibv_rc_pingpong rxe1 (server) <-> rxe0 (client) across the wire."""
    port = free_tcp_port()
    common = ["-n", str(iters), "-p", str(port), "-s", "4096"]
    srv_argv = ["ibv_rc_pingpong", "-d", topo.peer.dev, "-g", str(topo.peer.gid_index), *common]
    cli_argv = ["ibv_rc_pingpong", "-d", topo.local.dev, "-g", str(topo.local.gid_index),
                *common, topo.peer.addr]
    deadline = time.monotonic() + timeout_s
    srv = subprocess.Popen(srv_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        while not tcp_listening(port):
            if srv.poll() is not None:
                raise TopologyError(f"ibv_rc_pingpong server exited {srv.returncode}: "
                                    f"{srv.stdout.read() if srv.stdout else ''}",
                                    "check that rxe1 is ACTIVE and ibverbs-utils is installed")
            if time.monotonic() > deadline:
                raise BoundExceeded("ibv_rc_pingpong server start", "PINGPONG_TIMEOUT_S",
                                    timeout_s, f"server not listening on TCP port {port}")
            time.sleep(POLL_INTERVAL_S)
        try:
            cli = subprocess.run(cli_argv, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BoundExceeded("ibv_rc_pingpong rxe0 -> rxe1", "PINGPONG_TIMEOUT_S", timeout_s,
                                f"{iters} round trips not finished: RoCE traffic is not "
                                "crossing the wire") from None
        try:
            srv_out, _ = srv.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BoundExceeded("ibv_rc_pingpong server", "PINGPONG_TIMEOUT_S", timeout_s,
                                "the server did not finish its iterations") from None
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    if cli.returncode != 0 or srv.returncode != 0:
        raise TopologyError(
            f"ibv_rc_pingpong failed (client exit {cli.returncode}, server exit "
            f"{srv.returncode}): {cli.stderr.strip() or cli.stdout.strip()} / {srv_out.strip()}",
            "RoCE traffic does not flow rxe0 <-> rxe1; check the policy rules (ip rule) and "
            "that both ports are ACTIVE (rdma link)",
        )
    parsed = parse_pingpong(cli.stdout + cli.stderr)
    return PingpongResult(parsed[0] if parsed else iters, parsed[1] if parsed else None,
                          (cli.stdout + cli.stderr).strip())
