"""Run a command (`ip`, `rdma`, `ibv_*`) with a bound and parse its JSON output.

Never scrape human text: every query uses `-j`; the typed records live in
network.py (ip), rdma_netlink.py (RDMA netlink) and gid_table.py (sysfs GID tables).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from harness.core.errors import BoundExceeded, OsCallError, RxePowerError

CMD_TIMEOUT_S = 30.0

JsonObject = dict[str, Any]  # one object of a `-j` output, before it becomes a typed record


@dataclass(frozen=True)
class CmdResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], timeout_s: float = CMD_TIMEOUT_S, check: bool = True) -> CmdResult:
    """Run a command with a bound; on failure raise naming the command and its stderr."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise OsCallError(
            f"cannot run {argv[0]!r}", exc.errno or 2,
            "install it (Debian/Ubuntu: apt-get install iproute2 rdma-core)",
        ) from exc
    except subprocess.TimeoutExpired:
        raise BoundExceeded(" ".join(argv), "CMD_TIMEOUT_S", timeout_s,
                            f"the command {argv[0]} had not exited") from None
    res = CmdResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise RxePowerError(
            f"`{' '.join(argv)}` failed with exit {proc.returncode}: {proc.stderr.strip()}",
            "see the command's message above",
        )
    return res


def run_json(argv: list[str], timeout_s: float = CMD_TIMEOUT_S) -> list[JsonObject]:
    res = run(argv, timeout_s)
    return parse_json_list(res.stdout, " ".join(argv))


def parse_json_list(text: str, what: str) -> list[JsonObject]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RxePowerError(f"`{what}` printed invalid JSON: {exc}",
                            "update iproute2 (needs -j support)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise RxePowerError(f"`{what}` printed JSON of an unexpected shape", "update iproute2")
    return data
