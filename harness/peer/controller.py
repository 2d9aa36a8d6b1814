"""The controller's side of the remote peer agent: spawn, talk, stop.

The agent is a separate process (harness.peer.agent) bound to the peer HCA; a
crash of it surfaces here as a ProtocolError naming the request that was
outstanding and the tail of the agent's log.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.core.files import open_new
from harness.core.proc import python_child, spawn, stop_child
from harness.core.protocol import REPLY_TIMEOUT_S, Channel
from harness.core.schemas import ChannelKind
from harness.peer.calls import PeerCalls
from harness.topology.config import Endpoint

AGENT_START_TIMEOUT_S = 30.0
AGENT_STOP_TIMEOUT_S = 10.0


class PeerAgent(PeerCalls):
    """A running peer agent on the peer HCA. Use as a context manager."""

    def __init__(self, peer: Endpoint, log_dir: Path | None = None) -> None:
        self.endpoint = peer
        self._tmp = tempfile.TemporaryDirectory(prefix="rxe-power-peer-")
        self.sock_path = os.path.join(self._tmp.name, "agent.sock")
        self.log_path = Path(log_dir or self._tmp.name) / f"peer-agent-{peer.dev}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open_new(self.log_path)  # closed in close()
        argv = python_child("harness.peer.agent", "--device", peer.dev,
                            "--gid-index", str(peer.gid_index), "--addr", peer.addr,
                            "--socket", self.sock_path)
        self.proc = spawn(argv, f"peer agent on {peer.dev}", stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.chan: Channel | None = None
        try:
            self._wait_ready()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.sock_path)
            self.chan = Channel(sock, f"peer agent (pid {self.proc.pid}, {peer.dev})",
                                ChannelKind.PEER)
            self.hello = self.request("hello")
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BoundExceeded("peer agent start", "AGENT_START_TIMEOUT_S",
                                    AGENT_START_TIMEOUT_S, "its READY line")
            r, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    return
                if not line and self.proc.poll() is not None:
                    raise RxePowerError(
                        f"peer agent exited {self.proc.returncode} at start: {self.log_tail()}",
                        "see the agent's message; is the peer device present?")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def request(self, event: str, reply_timeout_s: float = REPLY_TIMEOUT_S,
                **payload: Any) -> dict[str, Any]:
        assert self.chan is not None
        try:
            return self.chan.request(event, reply_timeout_s, **payload)
        except ProtocolError as exc:
            if self.proc.poll() is not None:
                raise ProtocolError(f"{exc.problem}; the agent exited {self.proc.returncode}; "
                                    f"its log: {self.log_tail()}", exc.fix) from exc
            raise

    def close(self) -> None:
        if self.chan is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.chan.request("shutdown", AGENT_STOP_TIMEOUT_S)
        if self.chan is not None:
            self.chan.sock.close()
        stop_child(self.proc, AGENT_STOP_TIMEOUT_S)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> PeerAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
