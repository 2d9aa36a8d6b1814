"""pyverbs resources as context managers, the RC QP state machine, completion waiting.

Rules the verbs layer enforces by construction:
- every Context/PD/CQ/CompChannel/MR/QP is closed when its `with` block ends, in
  reverse order (a leaked Context makes the next `rdma link delete` hang);
- nothing ever blocks inside pyverbs: pyverbs' get_cq_event/get_async_event hold
  the GIL while blocked, so the event fds are made non-blocking and waited on
  with select() (which releases the GIL), bounded by a timeout;
- verbs errors become OsCallError/NotSupported carrying errno and strerror.

pyverbs exposes no fd for a completion channel or an async event queue; we find
them as the `anon_inode:[infinibandevent]` fds that appear in /proc/self/fd when
the object is created (harness.rdma.event_fds). QpInfo and QpParams, plain data
that the peer protocol carries, are in harness.rdma.qp_types.

This module is the layer's one name for its users: the device and pyverbs' import and
errors are in harness.rdma.verbs_device, the RC QP in harness.rdma.rc_qp.
"""

from __future__ import annotations

from harness.rdma.event_fds import wait_readable
from harness.rdma.qp_types import QpInfo, QpParams
from harness.rdma.rc_qp import CQ_WAIT_TIMEOUT_S, RcQp
from harness.rdma.verbs_device import (
    ACCESS_ALL,
    HAVE_PYVERBS,
    PYVERBS_IMPORT_ERROR,
    SEND_SIGNALED,
    Device,
    PortInfo,
    opcode,
    require_pyverbs,
    verbs_call,
)

__all__ = [
    "ACCESS_ALL",
    "CQ_WAIT_TIMEOUT_S",
    "HAVE_PYVERBS",
    "PYVERBS_IMPORT_ERROR",
    "SEND_SIGNALED",
    "Device",
    "PortInfo",
    "QpInfo",
    "QpParams",
    "RcQp",
    "opcode",
    "require_pyverbs",
    "verbs_call",
    "wait_readable",
]
