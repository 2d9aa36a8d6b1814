"""Reading one small sysfs attribute cheaply."""

from __future__ import annotations

import os


def read_small(path: str) -> str | None:
    """One sysfs attribute with plain os calls (a port has 1024 GID entries: pathlib's
    per-file cost adds up to seconds under emulation). None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 256).decode().strip()
    except OSError:  # an unset GID entry reads as EINVAL on its type
        return None
    finally:
        os.close(fd)
