"""The write of one connect string to /dev/nvme-fabrics, run in a child of ours
(`python_child("harness.system.nvme_fabrics", OPTIONS)`) so that the caller's bound holds
while the kernel connects: what `nvme connect` does, for options nvme-cli 2.3 (Debian 12)
lacks (fast_io_fail_tmo). Prints the kernel's answer on stderr; on failure the errno on
stdout and exit status 1.
"""

from __future__ import annotations

import os
import sys

FABRICS = "/dev/nvme-fabrics"


def main(argv: list[str]) -> int:
    try:
        fd = os.open(FABRICS, os.O_RDWR)
        try:
            os.write(fd, argv[0].encode())
            print(os.read(fd, 4096).decode().strip(), file=sys.stderr)
        finally:
            os.close(fd)
    except OSError as exc:
        print(exc.errno)
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
