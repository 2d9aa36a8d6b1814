"""Reader for the verbs tracer's per-process logs (clients/tracer/rxe_power_trace.h).

Pure logic: bytes in, typed records out. A log is a 64-byte header and 64-byte records;
a record whose type word is 0 was never finished (the tracer writes the type last), so
reading stops there. A log without an END record belongs to a process that did not exit
normally (killed, crashed, or still running).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

MAGIC = b"RXPTRACE"
VERSION = 2  # 2: POST records name the QP's context (aux2), the immediate data in result
READABLE_VERSIONS = (1, 2)
REC_SIZE = 64
LOG_PREFIX = "rxe-power-trace."
LOG_SUFFIX = ".bin"
MAX_LOG_BYTES = 1 << 31  # refuse bigger files: the tracer caps its logs at 1 GiB by default
REFUSED_EXIT = 125  # exit status of a process whose tracer refused to start (TR_REFUSED_EXIT)

_HEADER = struct.Struct("<8sIIIIQQ16sQ")
_REC = struct.Struct("<IIQQQIIiIIIQ")
NO_STATE = 0xFF
NO_QPN = 0xFFFFFFFF
NO_INDEX = 0xFFFFFFFF
OP_RECV = 128

# flags of POST_* records
WRF_SIGNALED = 0x1
WRF_INLINE = 0x2
WRF_WR_API = 0x10
# flags of QP_CREATE
QPF_SQ_SIG_ALL = 0x1
QPF_WR_API_TRACED = 0x2
QPF_SRQ = 0x4
QPF_CREATED_EX = 0x8
# flags of CQ_CREATE
CQF_EX = 0x1
CQF_EX_TRACED = 0x2
CQF_EX_NO_QPN = 0x4
WCF_QPN_UNKNOWN = 0x80000000


class RecType(IntEnum):
    DEV_OPEN = 1
    DEV_CLOSE = 2
    QP_CREATE = 3
    QP_DESTROY = 4
    QP_MODIFY = 5
    CQ_CREATE = 6
    CQ_DESTROY = 7
    POST_SEND = 8
    POST_RECV = 9
    POST_SRQ_RECV = 10
    POST_FAIL = 11
    COMPLETION = 12
    ASYNC_EVENT = 13
    CALL_FAIL = 14
    TEXT = 15
    END = 16


class Call(IntEnum):
    OPEN_DEVICE = 1
    CLOSE_DEVICE = 2
    CREATE_QP = 3
    CREATE_QP_EX = 4
    DESTROY_QP = 5
    MODIFY_QP = 6
    CREATE_CQ = 7
    CREATE_CQ_EX = 8
    DESTROY_CQ = 9
    GET_ASYNC_EVENT = 10
    POLL_CQ = 11
    START_POLL = 12
    NEXT_POLL = 13
    REG_MR = 14
    DEREG_MR = 15
    ALLOC_PD = 16
    DEALLOC_PD = 17
    REQ_NOTIFY_CQ = 18
    WR_COMPLETE = 19


class PostKind(IntEnum):
    SEND = 0
    RECV = 1
    SRQ_RECV = 2
    WR_COMPLETE = 3
    WR_ABORT = 4


class WrOpcode(IntEnum):  # enum ibv_wr_opcode, plus RECV for receive requests
    RDMA_WRITE = 0
    RDMA_WRITE_WITH_IMM = 1
    SEND = 2
    SEND_WITH_IMM = 3
    RDMA_READ = 4
    ATOMIC_CMP_AND_SWP = 5
    ATOMIC_FETCH_AND_ADD = 6
    LOCAL_INV = 7
    BIND_MW = 8
    SEND_WITH_INV = 9
    TSO = 10
    DRIVER1 = 11
    ATOMIC_WRITE = 15
    RECV = OP_RECV


# what lands in the peer's receive queue
PEER_VISIBLE_OPS = frozenset({WrOpcode.SEND, WrOpcode.SEND_WITH_IMM, WrOpcode.SEND_WITH_INV,
                              WrOpcode.RDMA_WRITE_WITH_IMM})


class TraceLogError(ValueError):
    """A file that is not a tracer log (or not one this reader understands)."""


@dataclass(frozen=True)
class Header:
    version: int
    pid: int
    ppid: int
    realtime_ns: int
    monotonic_ns: int
    comm: str


@dataclass(frozen=True)
class Record:
    type: RecType
    qp_num: int
    t_ns: int
    obj: int
    wr_id: int
    opcode: int
    length: int
    result: int
    flags: int
    tid: int
    aux: int
    aux2: int
    text: bytes = b""  # DEV_OPEN: the device name; TEXT: a chunk of the command line


@dataclass
class TraceLog:
    name: str
    header: Header
    records: list[Record] = field(default_factory=list)
    cmdline: list[str] = field(default_factory=list)
    closed: bool = False  # an END record: the process exited normally
    written: int = 0
    dropped: int = 0  # records lost to the size cap (RXE_POWER_TRACE_MAX_MB)
    unknown_types: int = 0  # records of a type this reader does not know (skipped)

    @property
    def pid(self) -> int:
        return self.header.pid


def parse(data: bytes, name: str = "<bytes>") -> TraceLog:
    if len(data) < REC_SIZE:
        raise TraceLogError(f"{name}: {len(data)} bytes, shorter than the 64-byte header")
    magic, version, rec_size, pid, ppid, rt, mono, comm, _ = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise TraceLogError(f"{name}: magic {magic!r} is not {MAGIC!r}: not a tracer log")
    if version not in READABLE_VERSIONS or rec_size != REC_SIZE:
        raise TraceLogError(f"{name}: format version {version} / record size {rec_size}; "
                            f"this reader knows versions {READABLE_VERSIONS} / {REC_SIZE}")
    log = TraceLog(name, Header(version, pid, ppid, rt, mono,
                                comm.split(b"\0", 1)[0].decode(errors="replace")))
    text = bytearray()
    usable = len(data) - len(data) % REC_SIZE
    for off in range(REC_SIZE, usable, REC_SIZE):
        fields = _REC.unpack_from(data, off)
        if fields[0] == 0:
            break  # never finished: the end of what the process wrote
        try:
            rtype = RecType(fields[0])
        except ValueError:
            log.unknown_types += 1
            continue
        if rtype is RecType.TEXT:
            text += data[off + 16:off + 64]
            continue
        extra = b""
        if rtype is RecType.DEV_OPEN:
            extra = data[off + 24:off + 64].split(b"\0", 1)[0]
        (_, qp_num, t_ns, obj, wr_id, opcode, length, result, flags, tid, aux,
         aux2) = fields
        rec = Record(rtype, qp_num, t_ns, obj, wr_id, opcode, length, result, flags, tid, aux,
                     aux2, extra)
        if rtype is RecType.END:
            log.closed, log.written, log.dropped = True, rec.wr_id, rec.aux2
            continue
        log.records.append(rec)
    log.cmdline = [a.decode(errors="replace") for a in bytes(text).rstrip(b"\0").split(b"\0")
                   if a] if text else []
    return log


def read_log(path: Path) -> TraceLog:
    """Read one log; refuses symbolic links, non-regular files and oversized files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        err = e.errno or errno.EIO
        raise TraceLogError(f"{path}: cannot open: errno {err} ({os.strerror(err)}); "
                            "fix: give a regular file the tracer wrote") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not (st.st_mode & 0o170000 == 0o100000):
            raise TraceLogError(f"{path}: not a regular file; fix: give a tracer log")
        if st.st_size > MAX_LOG_BYTES:
            raise TraceLogError(f"{path}: {st.st_size} bytes is over {MAX_LOG_BYTES} "
                                f"(errno {errno.EFBIG}: {os.strerror(errno.EFBIG)}); fix: "
                                "trace a shorter run or lower RXE_POWER_TRACE_MAX_MB")
        return parse(f.read(), str(path))


def log_paths(directory: Path) -> list[Path]:
    """The tracer logs in DIRECTORY (rxe-power-trace.<pid>.bin), by pid."""
    found = []
    for p in directory.iterdir():
        stem = p.name[len(LOG_PREFIX):-len(LOG_SUFFIX)]
        if p.name.startswith(LOG_PREFIX) and p.name.endswith(LOG_SUFFIX) and stem.isdigit():
            found.append((int(stem), p))
    return [p for _, p in sorted(found)]
