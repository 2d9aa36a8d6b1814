"""Where the peer agent listens for its controller: a Unix socket of ours, or a TCP
address behind the run's secret (harness.core.peer_auth): the peer in its own guest, or
on another machine. Checked before the agent opens its device."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
from pathlib import Path

from harness.core.peer_auth import AuthGate, read_secret


def add_listen_arguments(ap: argparse.ArgumentParser) -> None:
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="Unix socket path to listen on")
    where.add_argument("--listen", metavar="ADDR:PORT",
                       help="TCP address to listen on (needs --secret-file)")
    ap.add_argument("--secret-file", type=Path, help="the run's secret (harness.core.peer_auth)")


def listen_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the agent's addresses and its secret's presence (empty: nothing)."""
    problems = [_usable_addr("--addr", args.addr)]  # rdma_cm binds to it: one interface
    if args.listen is not None:
        host, _, port = args.listen.rpartition(":")
        problems.append(_usable_addr("--listen", host))
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"--listen {args.listen!r} has no port in 1..65535")
        if args.secret_file is None:
            problems.append("--listen needs --secret-file: over TCP nothing may drive the "
                            "agent without the run's secret")
    return [p for p in problems if p is not None]


def _usable_addr(flag: str, text: str) -> str | None:
    """None when `text` is an address to bind to (never all interfaces), else why not."""
    try:
        if ipaddress.ip_address(text).is_unspecified:
            raise ValueError("the unspecified address")
    except ValueError as exc:
        return f"{flag} {text!r} is not usable ({exc})"
    return None


def listener(args: argparse.Namespace) -> tuple[socket.socket, AuthGate | None, str]:
    """The control socket: Unix (ours alone), or TCP on one address behind the gate."""
    if args.socket is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(args.socket)
        return srv, None, args.socket
    host, _, port = args.listen.rpartition(":")
    gate = AuthGate(read_secret(args.secret_file))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    return srv, gate, args.listen


