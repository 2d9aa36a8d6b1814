"""The fast paths, pure logic: the worker's ledger (Recorder) against the reference Ledger,
ledger pages, payloads written and checked in place, the batched journal, and the sysfs
readers (sysfs, netlink, ioctl) that replace `rdma`/`ip` runs."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.errors import OsCallError, ProtocolError, SettingError
from harness.rdma import payload
from harness.run.client_worker import ClientWorker
from harness.system import gid_table, network, rdma_netlink
from harness.topology import neighbour
from harness.workload.journal import journal_run as _journal_run
from harness.workload.ledger import Ledger
from harness.workload.recorder import Recorder
from harness.workload.spec import MAX_CLIENT_MR_BYTES, Op, WorkloadSpec

STATUSES = ["SUCCESS", "WR_FLUSH_ERR", "LOC_QP_OP_ERR", "RETRY_EXC_ERR"]
Step = tuple[str, int, int, int]  # (operation, request, value, time step)


@st.composite
def histories(draw: st.DrawFn) -> tuple[WorkloadSpec, list[Step]]:
    spec = WorkloadSpec(count=draw(st.integers(1, 30)), qps=draw(st.integers(1, 3)))
    ops = st.tuples(st.sampled_from(["post", "reject", "complete", "retry", "fail"]),
                    st.integers(0, spec.count - 1), st.integers(0, 99), st.integers(1, 999))
    return spec, draw(st.lists(ops, max_size=80))


def replay(led: object, steps: list[Step]) -> None:
    t = 1000
    posted: set[int] = set()
    for op, i, v, dt in steps:
        t += dt
        if op == "post":
            led.posted(i, 1 + v % 3, t)
            posted.add(i)
        elif op == "reject" and i in posted:
            led.rejected(i, 22, "EINVAL")
        elif op == "complete" and i in posted:
            led.completed(i, STATUSES[v % 4], 7 if v % 5 == 0 else 0, t + v)
        elif op == "retry":
            led.retry(i)
        elif op == "fail":
            led.failed_to_app(i, "refused")


@settings(max_examples=80, deadline=None)
@given(histories(), st.booleans(), st.integers(1, 40))
def test_recorder_is_the_ledger(case: tuple[WorkloadSpec, list[Step]], final: bool,
                                page: int) -> None:
    """Any history of postings, completions, rejections, replays and refusals gives the same
    ledger in the worker's flat Recorder as in the reference Ledger, read back in pages."""
    spec, steps = case
    led, rec = Ledger(spec.requests()), Recorder(spec.requests())
    replay(led, steps)
    replay(rec, steps)
    if final:
        led.finalize()
        rec.finalize()
    assert rec.counts() == led.counts()
    assert rec.unaccounted() == led.unaccounted()
    assert rec.in_flight() == led.in_flight()
    pages = [rec.page(s, page) for s in range(0, spec.count, page)]
    assert sum(p["stop"] - p["start"] for p in pages) == spec.count
    back = Ledger.from_pages(json.loads(json.dumps(pages)))  # as they cross the socket
    assert back.to_json() == led.to_json()
    assert Ledger.from_pages([led.page(0, spec.count)]).to_json() == led.to_json()


def test_recorder_latencies_and_large_pages_stay_small() -> None:
    spec = WorkloadSpec(count=20000, ops=(Op.SEND,), sizes=(64,))
    rec = Recorder(spec.requests())
    for i in range(spec.count):
        rec.posted(i, 1, 10**12 + 1000 * i)
        rec.completed(i, "SUCCESS", 0, 10**12 + 1000 * i + 250_000)
    assert rec.latencies_ns()[:2] == [250_000, 250_000]
    text = json.dumps(rec.page(0, spec.count), separators=(",", ":"))
    assert len(text) < 40 * spec.count  # vs ~240 bytes a request as ledger rows


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p.update(format=1), "format"),
    (lambda p: p.update(ops="S"), "columns of"),
    (lambda p: p.update(attempts=[5, 1, 1]), "IndexError|attempts"),
    (lambda p: p.pop("latency"), "KeyError"),
])
def test_malformed_pages_are_protocol_errors(mutate: object, needle: str) -> None:
    rec = Recorder(WorkloadSpec(count=3).requests())
    for i in range(3):
        rec.posted(i, 1, 100 + i)
        rec.completed(i, "SUCCESS", 0, 200 + i)
    page = rec.page(0, 3)
    mutate(page)
    with pytest.raises(ProtocolError, match=needle):
        Ledger.from_pages([page])


def test_workload_slots_signaling_and_memory() -> None:
    spec = WorkloadSpec(sizes=(64, 65536), queue_depth=4, write_slots=8).validate()
    assert spec.slot_size == 65536
    assert spec.local_mr_bytes() == 5 * 65536
    assert spec.peer_mr_bytes() == (8 + 8 + 1) * 65536 + 64
    assert WorkloadSpec(sizes=(1, 100)).slot_size == 128
    assert WorkloadSpec.from_json(WorkloadSpec(signal_every=4).to_json()).signal_every == 4
    assert WorkloadSpec.from_json({k: v for k, v in WorkloadSpec().to_json().items()
                                   if k not in ("write_slots", "signal_every")}) == WorkloadSpec()
    for bad, needle in [(dict(signal_every=9), "signal_every"),
                        (dict(signal_every=2, qps=2), "one QP"),
                        (dict(signal_every=2, rate_per_s=10.0), "one QP"),
                        (dict(write_slots=0), "write_slots"),
                        (dict(sizes=(1 << 18,), qps=64, queue_depth=64), "MAX_CLIENT_MR"),
                        (dict(sizes=(payload.HEADER_LEN, (1 << 18) + 1)), "sizes")]:
        with pytest.raises(SettingError, match=needle):
            WorkloadSpec(**bad).validate()
    assert MAX_CLIENT_MR_BYTES >= 64 << 20


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 70000), st.integers(0, 7))
def test_payload_in_place(seq: int, length: int, gen: int) -> None:
    """body_crc from partial checksums equals crc32 of the pattern; write_into writes what
    encode() returns; verify reads a memoryview in place and finds any flipped bit."""
    if length >= payload.HEADER_LEN:
        body = payload.pattern(seq, length - payload.HEADER_LEN)
        assert payload.body_crc(seq, len(body)) == zlib.crc32(body)
    buf = bytearray(length + 8)
    payload.write_into(memoryview(buf), 3, seq, length, gen)
    data = bytes(buf[3:3 + length])
    assert data == payload.encode(seq, length, gen)
    assert payload.verify(memoryview(buf)[3:3 + length], seq).ok
    pos = seq % length if length else 0
    if length >= payload.HEADER_LEN and 12 <= pos < 16:
        pos = 0  # the header's generation field is carried, not checked
    if length:
        buf[3 + pos] ^= 1 << (gen % 8)
        assert not payload.verify(memoryview(buf)[3:3 + length], seq).ok


def test_batched_journal_gives_what_was_in_flight(tmp_path: Path) -> None:
    """Postings and completions journaled in batches (and the old one-request lines) tell
    the controller what a dead worker had in flight."""
    lines = [_journal_run(1, True, [0, 1, 2, 3], 1), _journal_run(2, False, [0, 2], 1),
             '{"t_ns": 3, "event": "flushed", "detail": {"reqs": [3]}}\n',
             '{"t_ns": 4, "event": "posted", "detail": {"req": 3, "gen": 2}}\n',
             _journal_run(5, True, [4, 5], 2), '{"t_ns": 6, "event": "rejected", '
             '"detail": {"req": 5, "errno": 22}}\n', '{"t_ns": 7, "event": "posted", "de']
    fd = os.memfd_create("journal")  # as ClientWorker shares it with its worker
    try:
        os.write(fd, "".join(lines).encode())
        worker = SimpleNamespace(journal_fd=fd, spec=WorkloadSpec(count=8))
        worker.journal_text = lambda: ClientWorker.journal_text(worker)
        worker.journal_ledger = lambda: ClientWorker.journal_ledger(worker)
        assert ClientWorker.in_flight(worker) == [1, 3, 4]
        # a later round (rxe-power stress): the books start again at its "round" note
        os.write(fd, ('\n{"t_ns": 8, "event": "round", "detail": {"round": 2}}\n'
                      + _journal_run(9, True, [0, 1], 3) + _journal_run(10, False, [0], 3)
                      ).encode())
        assert ClientWorker.in_flight(worker) == [1]
        led = ClientWorker.journal_ledger(worker)
        assert led is not None and sorted(led.entries) == [0, 1]
    finally:
        os.close(fd)


def test_a_new_round_empties_the_journal_and_starts_it_with_its_note() -> None:
    """A worker's journal holds only its current round (what a controller reads back after
    a kill); the rounds before are gone from the memfd, so reading it stays as small as one
    round however long a stress run is. Written through the worker's own text file object
    on the shared memfd, read back as the controller does."""
    from clients.userspace.io_path import ClientIoPath

    fd = os.memfd_create("journal")
    journal = os.fdopen(os.dup(fd), "w", encoding="utf-8")
    try:
        core = ClientIoPath(WorkloadSpec(count=8), journal)
        core.note("opened", generation=1)
        core.note("stopped", taken=8)
        reader = SimpleNamespace(journal_fd=fd)
        before = ClientWorker.journal_text(reader)  # type: ignore[arg-type]
        assert before is not None and before.count("\n") == 2
        core.restart_journal("round", round=2)
        core.note("opened", generation=2)
        text = ClientWorker.journal_text(reader)  # type: ignore[arg-type]
        assert text is not None
        events = [json.loads(line)["event"] for line in text.splitlines()]
        assert events == ["round", "opened"], text
        assert os.fstat(fd).st_size == len(text.encode())
    finally:
        journal.close()
        os.close(fd)


def _fake_rdma_sysfs(root: Path) -> tuple[Path, Path]:
    ib, net = root / "infiniband", root / "net"
    for dev, netdev, state, phys, idx in (("rxe0", "rxpw0", "4: ACTIVE", "5: LinkUp", 7),
                                          ("rxe1", "rxpw1", "1: DOWN", "3: Disabled", 9)):
        port = ib / dev / "ports" / "1"
        (port / "gids").mkdir(parents=True)
        (port / "gid_attrs" / "types").mkdir(parents=True)
        (port / "gid_attrs" / "ndevs").mkdir(parents=True)
        (ib / dev / "parent").write_text(netdev + "\n")
        (port / "state").write_text(state + "\n")
        (port / "phys_state").write_text(phys + "\n")
        (net / netdev).mkdir(parents=True)
        (net / netdev / "ifindex").write_text(f"{idx}\n")
        (net / netdev / "flags").write_text("0x1003\n" if state.endswith("ACTIVE") else
                                            "0x1002\n")
        for i in range(12):
            gid = gid_table.ZERO_GID
            if i == 1:
                gid = gid_table.ipv4_mapped_gid("198.18.0.1" if dev == "rxe0" else "198.18.0.2")
            (port / "gids" / str(i)).write_text(gid + "\n")
            if i in (0, 1):
                (port / "gid_attrs" / "types" / str(i)).write_text(
                    "IB/RoCE v1\n" if i == 0 else "RoCE v2\n")
                (port / "gid_attrs" / "ndevs" / str(i)).write_text(netdev + "\n")
    return ib, net


def _nl(mtype: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = b""
    for atype, val in attrs:
        body += struct.pack("=HH", 4 + len(val), atype) + val + bytes(-len(val) % 4)
    return struct.pack("=IHHII", 16 + len(body), mtype, 2, 1, 0) + body


def test_netlink_port_dump_parses_as_rdma_link_show() -> None:
    """The port dump `rdma link show` reads, parsed in-process: the same records."""
    def port(dev: str, state: int, phys: int, ndev: str, idx: int) -> bytes:
        return _nl(rdma_netlink.NLDEV_PORT_GET, [
            (1, struct.pack("=I", 0)), (rdma_netlink.NLA_DEV_NAME, dev.encode() + b"\0"),
            (rdma_netlink.NLA_PORT_INDEX, struct.pack("=I", 1)),
            (rdma_netlink.NLA_PORT_STATE, struct.pack("=B", state)),
            (rdma_netlink.NLA_PHYS_STATE, struct.pack("=B", phys)),
            (rdma_netlink.NLA_NDEV_INDEX, struct.pack("=I", idx)),
            (rdma_netlink.NLA_NDEV_NAME, ndev.encode() + b"\0")])
    data = port("rxe0", 4, 5, "rxpw0", 7) + port("rxe1", 1, 3, "rxpw1", 9)
    msgs, done = rdma_netlink.parse_netlink(data)
    assert not done
    assert [rdma_netlink.link_of(m) for m in msgs] == rdma_netlink.parse_rdma_links([
        {"ifname": "rxe0", "port": 1, "state": "ACTIVE", "physical_state": "LINK_UP",
         "netdev": "rxpw0", "netdev_index": 7},
        {"ifname": "rxe1", "port": 1, "state": "DOWN", "physical_state": "DISABLED",
         "netdev": "rxpw1", "netdev_index": 9}])
    assert rdma_netlink.parse_netlink(struct.pack("=IHHIIi", 20, rdma_netlink.NLMSG_DONE, 2, 1, 0,
                                             0)) == ([], True)
    # what the kernel answers a port dump without a device index: a DONE carrying EINVAL
    with pytest.raises(OsCallError, match="EINVAL"):
        rdma_netlink.parse_netlink(
            struct.pack("=IHHIIi", 20, rdma_netlink.NLMSG_DONE, 2, 1, 0, -22))
    err = struct.pack("=i", -1) + struct.pack("=IHHII", 16, rdma_netlink.NLDEV_PORT_GET, 0, 1, 0)
    with pytest.raises(OsCallError, match="EPERM"):
        rdma_netlink.parse_netlink(struct.pack("=IHHII", 16 + len(err), rdma_netlink.NLMSG_ERROR, 0,
                                          1, 0) + err)


def test_sysfs_readers(tmp_path: Path) -> None:
    ib, net = _fake_rdma_sysfs(tmp_path)
    assert network.sysfs_netdev("rxpw0", net) == (7, True)
    assert network.sysfs_netdev("rxpw1", net) == (9, False)
    assert network.sysfs_netdev("nope", net) is None
    gid = gid_table.lookup_rocev2_gid("rxe0", "198.18.0.1", 1, ib)
    assert gid == gid_table.find_rocev2_gid(gid_table.read_gids("rxe0", 1, ib), "198.18.0.1")
    assert gid is not None and gid.index == 1 and gid.ndev == "rxpw0"
    assert gid_table.lookup_rocev2_gid("rxe0", "198.18.0.9", 1, ib) is None
    assert gid_table.lookup_rocev2_gid("rxe9", "198.18.0.1", 1, ib) is None


def test_neighbour_table(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text("IP address       HW type     Flags       HW address            Mask     "
                   "Device\n"
                   "198.18.0.2       0x1         0x2         92:35:80:22:91:00     *        "
                   "rxpw0\n"
                   "198.18.0.1       0x1         0x0         00:00:00:00:00:00     *        "
                   "rxpw1\n")
    assert neighbour.neighbour_resolved("198.18.0.2", "rxpw0", arp)
    assert not neighbour.neighbour_resolved("198.18.0.1", "rxpw1", arp)  # incomplete
    assert not neighbour.neighbour_resolved("198.18.0.2", "rxpw1", arp)
    assert not neighbour.neighbour_resolved("198.18.0.2", "rxpw0", tmp_path / "missing")
