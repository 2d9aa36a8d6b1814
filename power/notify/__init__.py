"""Telling the clients of the local RDMA device that it goes down and comes back.

The power shim takes the local HCA down and back up the way a system sleep
would. Before that it asks every client to let go of the device
(`suspend_prepare`, answered `released` or `veto` with a reason), and after it
tells them the device is back (`resume_complete`, answered `resumed`).

Two kinds of clients, told in parallel (one daemon thread each):

- in-process Python objects that follow `PowerClient`, registered with
  `Notifier.register()`;
- out-of-process programs, in any language, each listening on a Unix stream
  socket `<CLIENTS_DIR>/<name>.<pid>.sock` (CLIENTS_DIR is
  $RXE_POWER_CLIENTS_DIR, default /run/rxe-power/clients, mode 0700). The shim
  connects to every `*.sock` there each time it notifies, so a client may live
  longer than any one shim run, like a sleep hook. Python clients use
  `ClientEndpoint`.

Shim side::

    notifier = Notifier()
    answers = notifier.suspend_prepare("suspend", deadline_s=5.0)  # list[Answer]
    ...  # device down and back up
    notifier.resume_complete("suspend", DeviceInfo.from_endpoint(topo.local))

Each `Answer` has the client's name, a kind (`released`, `veto`, `resumed`,
`no-answer`, `gone`, `error`), a reason, and monotonic stamps of when the
notice was sent and answered. The calls return when every client has answered
or at the deadline, whichever is first, never later; a client that has not
answered by then is reported `no-answer` and the shim goes on without it.

Wire format (for client authors). One connection per notice: the shim
connects, sends one line, waits for one line, closes. A line is one JSON object
in UTF-8 ending in "\\n", at most 1 MiB:
{"v": 1, "id": <int>, "event": <name>, "payload": {...}}. A reply echoes the
request's "id". Unknown events, missing or mistyped fields are errors.

Shim -> client::

    {"v":1,"id":7,"event":"suspend_prepare",
     "payload":{"transition":"suspend","deadline_s":4.998}}
    {"v":1,"id":8,"event":"resume_complete",
     "payload":{"transition":"suspend",
                "device":{"dev":"rxe0","port":1,"netdev":"rxpw0","ifindex":12,
                          "addr":"198.18.0.1","gid":"::ffff:198.18.0.1","gid_index":1}}}

Client -> shim, to suspend_prepare (within deadline_s seconds of receiving it)::

    {"v":1,"id":7,"event":"released","payload":{}}
    {"v":1,"id":7,"event":"veto","payload":{"reason":"checkpoint in progress"}}

or close the connection without a reply to ignore the notice (reported
`no-answer`). To resume_complete, once the client has reopened the device::

    {"v":1,"id":8,"event":"resumed","payload":{}}

A socket file whose connection is refused is stale (its process is gone): the
shim reports the client `gone` and removes the file. A garbled reply, or a reply
that does not fit the request, is reported `error` with the problem.
"""

from power.notify.answers import Answer, AnswerKind, PowerClient, SuspendReply
from power.notify.endpoint import ClientEndpoint
from power.notify.notifier import Notifier
from power.notify.sockets import CLIENTS_DIR, private_clients_dir

__all__ = ["CLIENTS_DIR", "Answer", "AnswerKind", "ClientEndpoint", "Notifier", "PowerClient",
           "SuspendReply", "private_clients_dir"]
