"""Names for verbs enum values (fixed by the libibverbs ABI), usable without pyverbs."""

from __future__ import annotations

from enum import IntEnum


class QpState(IntEnum):
    """enum ibv_qp_state."""

    RESET = 0
    INIT = 1
    RTR = 2
    RTS = 3
    SQD = 4
    SQE = 5
    ERR = 6


WC_STATUS = (
    "SUCCESS", "LOC_LEN_ERR", "LOC_QP_OP_ERR", "LOC_EEC_OP_ERR", "LOC_PROT_ERR",
    "WR_FLUSH_ERR", "MW_BIND_ERR", "BAD_RESP_ERR", "LOC_ACCESS_ERR", "REM_INV_REQ_ERR",
    "REM_ACCESS_ERR", "REM_OP_ERR", "RETRY_EXC_ERR", "RNR_RETRY_EXC_ERR", "LOC_RDD_VIOL_ERR",
    "REM_INV_RD_REQ_ERR", "REM_ABORT_ERR", "INV_EECN_ERR", "INV_EEC_STATE_ERR", "FATAL_ERR",
    "RESP_TIMEOUT_ERR", "GENERAL_ERR", "TM_ERR", "TM_RNDV_INCOMPLETE",
)

# enum ibv_wc_opcode
WC_OPCODE = {
    0: "SEND", 1: "RDMA_WRITE", 2: "RDMA_READ", 3: "COMP_SWAP", 4: "FETCH_ADD", 5: "BIND_MW",
    6: "LOCAL_INV", 7: "TSO", 128: "RECV", 129: "RECV_RDMA_WITH_IMM",
}

# enum ibv_event_type
ASYNC_EVENT = (
    "CQ_ERR", "QP_FATAL", "QP_REQ_ERR", "QP_ACCESS_ERR", "COMM_EST", "SQ_DRAINED",
    "PATH_MIG", "PATH_MIG_ERR", "DEVICE_FATAL", "PORT_ACTIVE", "PORT_ERR", "LID_CHANGE",
    "PKEY_CHANGE", "SM_CHANGE", "SRQ_ERR", "SRQ_LIMIT_REACHED", "QP_LAST_WQE_REACHED",
    "CLIENT_REREGISTER", "GID_CHANGE", "WQ_FATAL",
)


def wc_status_name(status: int) -> str:
    """0 -> "SUCCESS", 5 -> "WR_FLUSH_ERR"; unknown values keep their number."""
    return WC_STATUS[status] if 0 <= status < len(WC_STATUS) else f"STATUS_{status}"


def wc_opcode_name(opcode: int) -> str:
    return WC_OPCODE.get(opcode, f"OPCODE_{opcode}")


def async_event_name(event_type: int) -> str:
    return ASYNC_EVENT[event_type] if 0 <= event_type < len(ASYNC_EVENT) else f"EVENT_{event_type}"
