"""Local TCP ports: a free one to listen on, and whether one is listening (/proc/net/tcp)."""

from __future__ import annotations

import socket
from pathlib import Path

PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"  # the st column of a listening socket


def tcp_listening(port: int) -> bool:
    for path in PROC_NET_TCP:
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[1].rsplit(":", 1)[1] == f"{port:04X}" and cols[3] == TCP_LISTEN:
                return True
    return False


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
