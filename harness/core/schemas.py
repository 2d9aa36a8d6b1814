"""The one schema registry of rxe-power's line protocol, keyed by channel.

Every channel between two rxe-power processes speaks the same wire format
(harness.core.protocol) and has one table here: event name -> required payload fields
and their types. `decode(line, channel)` validates every line against its channel's
table; nothing decodes without naming the channel.

- PEER: controller (and client workers) -> the peer agent (harness.peer.agent);
- WORKER: controller -> a client worker process (clients.userspace.worker);
- NOTICE: the power shim <-> a client's notice socket (power.notify), both directions;
- PEER_AUTH: the handshake a TCP connection to the peer agent (or the peer service)
  passes before PEER (SERVICE) (harness.core.peer_auth), both directions;
- SERVICE: controller -> the peer guest's kernel-client servers (nvmet-rdma target...),
  clients.kernel.peer_service.

Requests on PEER, WORKER and SERVICE are answered with a reply from REPLIES ("ok" with any
payload, or "error" with the fields of ERROR_FIELDS: the one error-reply form,
built by protocol.error_reply). NOTICE has no "ok"/"error": its replies are events
of its own table (released, veto, resumed).

A field typed int is a count, id, size, offset or value (0..MAX_INT); a field typed
(int, float) is a duration in seconds (0..MAX_SECONDS); dict and str are checked for
type only.
"""

from __future__ import annotations

from enum import StrEnum

FieldType = type | tuple[type, ...]
Schema = dict[str, dict[str, FieldType]]  # event -> field -> type
SECONDS: FieldType = (int, float)
MAX_SECONDS = 7 * 24 * 3600.0  # the longest duration a schema field (timeout_s...) may carry


class ChannelKind(StrEnum):
    PEER = "peer"
    WORKER = "worker"
    NOTICE = "notice"
    PEER_AUTH = "peer_auth"  # the handshake before PEER or SERVICE over TCP (peer_auth)
    SERVICE = "service"  # the peer side's kernel-client servers (clients.kernel.peer_service)


_QP: dict[str, FieldType] = {"qp_id": int}

PEER_REQUESTS: Schema = {  # controller or client worker -> peer agent
    "hello": {},
    "create_qp": {"mr_size": int, "recv_slots": int, "slot_size": int, "write_slots": int},
    "connect_qp": {**_QP, "remote": dict},
    "fill": {**_QP, "offset": int, "length": int, "seq": int},
    "verify": {**_QP, "offset": int, "length": int, "seq": int},
    "read_u64": {**_QP, "offset": int},
    "write_u64": {**_QP, "offset": int, "value": int},
    "arrivals": {**_QP, "count": int, "timeout_s": SECONDS},
    "qp_state": _QP,
    "probe": {**_QP, "timeout_s": SECONDS},
    "probe_start": _QP,
    "to_err": _QP,
    "destroy_qp": _QP,
    "cm_listen": {"port": int, "mr_size": int, "recv_slots": int, "slot_size": int},
    "cm_events": {"count": int, "timeout_s": SECONDS},
    "cm_stop": {},
    "shutdown": {},
    "holders": {},  # whose each live QP is; the QPs reaped after their client went
}

WORKER_REQUESTS: Schema = {  # controller -> client worker (clients.userspace.worker documents each)
    "start": {"name": str, "policy": str, "spec": dict, "device": dict, "agent_socket": str,
              "clients_dir": str},
    "go": {},
    "progress": {},
    "stop": {},
    "finish": {"timeout_s": SECONDS},
    "round": {"spec": dict},
    "ledger": {"start": int, "limit": int},
}

SERVICE_REQUESTS: Schema = {  # controller -> the peer guest's service (clients.kernel.peer_service)
    "hello": {},  # the peer's kernel, boot id and HCA (its endpoint on the wire)
    "port_state": {},  # the peer HCA's port state, read in the peer's kernel
    "nvmet_setup": {"trsvcid": int, "size_mib": int, "block_size": int},
    "nvmet_read": {"nqn": str, "index": int, "count": int, "size": int},
    "nvmet_teardown": {"nqn": str},
    "nfs_setup": {"client_addr": str, "size_mib": int},
    "nfs_file": {"name": str, "size": int},
    "nfs_read": {"name": str, "index": int, "count": int, "size": int},
    "nfs_teardown": {},
    "shutdown": {},
}

NOTICE_EVENTS: Schema = {  # power.notify documents the exchange
    # shim -> client
    "suspend_prepare": {"transition": str, "deadline_s": SECONDS},
    "resume_complete": {"transition": str, "device": dict},
    # client -> shim
    "released": {},
    "veto": {"reason": str},
    "resumed": {},
}
SHIM_NOTICES = ("suspend_prepare", "resume_complete")  # the ones the shim sends

ERROR_FIELDS: dict[str, FieldType] = {"message": str, "fix": str}
REPLIES: Schema = {"ok": {}, "error": ERROR_FIELDS}  # the answer to a PEER or WORKER request

# the handshake of a TCP connection to the peer agent, both directions (nonces and
# HMAC-SHA256 in hex; an "error" reply refuses): harness.core.peer_auth
PEER_AUTH_EVENTS: Schema = {
    "challenge": {"nonce": str},
    "auth": {"nonce": str, "mac": str},
    "welcome": {"mac": str},
    "error": ERROR_FIELDS,
}

SCHEMAS: dict[ChannelKind, Schema] = {
    ChannelKind.PEER: PEER_REQUESTS,
    ChannelKind.WORKER: WORKER_REQUESTS,
    ChannelKind.NOTICE: NOTICE_EVENTS,
    ChannelKind.PEER_AUTH: PEER_AUTH_EVENTS,
    ChannelKind.SERVICE: SERVICE_REQUESTS,
}
