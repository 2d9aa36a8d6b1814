"""Verbs names (statuses, opcodes, async events) and errors with their errno text.
Pure logic: any host."""

from __future__ import annotations

import struct

from harness.core.errors import OsCallError, oserror_to
from harness.rdma.names import async_event_name, wc_opcode_name, wc_status_name


def test_names() -> None:
    assert wc_status_name(0) == "SUCCESS"
    assert wc_status_name(2) == "LOC_QP_OP_ERR"
    assert wc_status_name(5) == "WR_FLUSH_ERR"
    assert wc_status_name(12) == "RETRY_EXC_ERR"
    assert wc_status_name(99) == "STATUS_99"
    assert wc_opcode_name(128) == "RECV"
    assert async_event_name(10) == "PORT_ERR" and async_event_name(8) == "DEVICE_FATAL"


def test_oserror_carries_errno_text() -> None:
    class FakeVerbsError(Exception):
        error_code = 95

    err = oserror_to("create QP", FakeVerbsError("boom"))
    assert type(err).__name__ == "NotSupported" and err.errno == 95
    assert "95] Operation not supported" in str(err)
    err2 = oserror_to("open", OSError(2, "x"))
    assert isinstance(err2, OsCallError) and "No such file" in str(err2)
    assert struct.calcsize("<Q") == 8
