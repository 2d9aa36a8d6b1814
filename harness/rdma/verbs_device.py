"""The pyverbs side of the verbs layer: importing pyverbs (it may be absent), turning its
errors into OsCallError/NotSupported, and an open device (Context + PD) as a context
manager. The RC QP is in harness.rdma.rc_qp; harness.rdma.verbs names both.

The device's async event fd is found as the `anon_inode:[infinibandevent]` fd that appears
in /proc/self/fd when the Context is opened (harness.rdma.event_fds) and made
non-blocking: get_async_event must never block (it holds the GIL).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

from harness.core.errors import NoRxe, oserror_to
from harness.rdma.event_fds import FD_LOCK, fds_of_kind, set_nonblocking

try:  # pyverbs comes from the distribution (python3-pyverbs), not from PyPI
    import pyverbs.enums as e
    from pyverbs.device import Context
    from pyverbs.pd import PD
    from pyverbs.pyverbs_error import PyverbsError

    HAVE_PYVERBS = True
    PYVERBS_IMPORT_ERROR = ""
except ImportError as _exc:  # pragma: no cover - depends on the host
    HAVE_PYVERBS = False
    PYVERBS_IMPORT_ERROR = str(_exc)

ACCESS_ALL = 0  # filled in below when pyverbs is present


def require_pyverbs() -> None:
    if not HAVE_PYVERBS:
        raise NoRxe(
            f"pyverbs cannot be imported ({PYVERBS_IMPORT_ERROR})",
            "apt-get install python3-pyverbs, and run with /usr/bin/python3 or a venv made "
            "with --system-site-packages",
        )


SEND_SIGNALED = 2  # IBV_SEND_SIGNALED (fixed by the libibverbs ABI)
if HAVE_PYVERBS:
    ACCESS_ALL = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                  | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_ATOMIC)



@contextlib.contextmanager
def verbs_call(what: str, fix: str = "") -> Iterator[None]:
    """Translate pyverbs errors into OsCallError/NotSupported with errno text."""
    try:
        yield
    except PyverbsError as exc:
        raise oserror_to(what, exc, fix) from exc


class Closing:
    """A verbs resource that closes what it made, in reverse order, when its `with` block
    ends (or at close()): each maker adds its object's closer to `_stack`."""

    _stack: contextlib.ExitStack

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- device -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortInfo:
    state: int
    active_mtu: int
    max_msg_sz: int


class Device(Closing):
    """An open RDMA device: Context + PD. Use as a context manager."""

    def __init__(self, name: str, port: int = 1, gid_index: int | None = None) -> None:
        require_pyverbs()
        self.name = name
        self.port = port
        self._stack = contextlib.ExitStack()
        with FD_LOCK:
            before = fds_of_kind()
            try:
                self.ctx = Context(name=name)
            except PyverbsError as exc:
                raise oserror_to(f"cannot open RDMA device {name!r}", exc,
                                 "check `rdma link show`; build the topology with "
                                 "ci/rxe-setup.sh") from exc
            self._stack.callback(self.ctx.close)
            # libibverbs opens the async event fd with the context
            new = fds_of_kind() - before
            self.async_fd = new.pop() if len(new) == 1 else None
            if self.async_fd is not None:  # get_async_event must never block (GIL)
                set_nonblocking(self.async_fd)
        try:
            with verbs_call(f"{name}: alloc PD"):
                self.pd = PD(self.ctx)
            self._stack.callback(self.pd.close)
            self.gid_index = gid_index if gid_index is not None else 0
            self.gid = self.query_gid(self.gid_index)
        except BaseException:
            self._stack.close()
            raise

    @classmethod
    def borrow(cls, name: str, ctx: object, pd: object, gid_index: int, port: int = 1) -> Device:
        """Wrap a Context/PD owned by someone else (an rdma_cm id): close() leaves them open."""
        dev = cls.__new__(cls)
        dev.name, dev.port, dev.ctx, dev.pd = name, port, ctx, pd
        dev._stack = contextlib.ExitStack()
        dev.async_fd = None
        dev.gid_index = gid_index
        dev.gid = dev.query_gid(gid_index)
        return dev

    def query_gid(self, index: int) -> str:
        with verbs_call(f"{self.name}: query GID {index}"):
            return str(self.ctx.query_gid(self.port, index).gid)

    def query_port(self) -> PortInfo:
        with verbs_call(f"{self.name}: query port {self.port}"):
            attr = self.ctx.query_port(self.port)
        return PortInfo(int(attr.state), int(attr.active_mtu), int(attr.max_msg_sz))



def opcode(name: str) -> int:
    """IBV_WR_* by short name: SEND, SEND_WITH_IMM, RDMA_WRITE, RDMA_READ, ..."""
    return int(getattr(e, f"IBV_WR_{name}"))
