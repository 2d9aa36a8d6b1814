"""What runs under a transition against the peer, three kinds that import nothing of each
other (pyproject.toml's import contracts):

- clients.userspace: the four policies (naive, fail-fast, queue-replay, graceful) and a
  policy of your own as `module:Class`, each in its own worker process, through one I/O
  path and one ledger;
- clients.kernel: the kernel's own ULPs (nvme-rdma, NFS over RDMA) with their targets on
  the peer side;
- clients.tracer: the LD_PRELOAD verbs tracer (C) that puts an unmodified program in the
  matrix, and its Python side (traced.py).

The userspace modules lived directly under clients/ until the third pass of the layout:
a policy of your own that imports them by their old names (clients.core,
clients.connection, clients.fail_fast, ...) still works through the aliases below, for a
while; import them from clients.userspace.
"""

from __future__ import annotations

import importlib
import sys

_MOVED_TO_USERSPACE = ("connection", "core", "io_path", "naive", "fail_fast",
                       "queue_replay", "graceful")


def _alias_old_names() -> None:
    for name in _MOVED_TO_USERSPACE:
        sys.modules.setdefault(f"{__name__}.{name}",
                               importlib.import_module(f"{__name__}.userspace.{name}"))


_alias_old_names()
