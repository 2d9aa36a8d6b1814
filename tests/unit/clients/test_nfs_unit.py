"""NFS over RDMA, pure logic (no rxe): the policy parser, the mount table, nfsd's
portlist and /proc/self/mountstats parsers (on recorded text), the state-file entries'
validation, the transport timeline and detect/recover from samples, and the table row."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.kernel.nfs_client import PRESETS, NfsOptions, parse_mountstats, parse_policy
from clients.kernel.nfs_scenario import detect_recover, transport_changes
from clients.kernel.nfs_server import etab_line
from clients.kernel.route_guard import CmSample
from harness.core.errors import NotOurs, SettingError
from harness.core.state_entries import check_entry
from harness.run.lanes import LANES
from harness.run.lanes import parse_policy as parse_ref
from harness.run.lanes.base import LaneKind
from harness.run.lanes.kernel import kernel_rows
from harness.run.matrix import MatrixSpec
from harness.run.rows import RowStatus
from harness.system import kernelobjs as ko
from harness.system import nfsobjs
from harness.system.rdma_cm_ids import CmId
from harness.workload.block_ledger import IoOp, IoRecord, Window
from tests.helpers.recorded_blocks import recorded_target

# --- policies -----------------------------------------------------------------------------


def test_presets() -> None:
    assert parse_policy("nfs-rdma:hard") == NfsOptions(hard=True)
    soft = parse_policy("nfs-rdma:soft")
    assert not soft.hard and soft.timeo == 10 and soft.retrans == 1
    assert soft.mount_options() == "vers=4.2,proto=rdma,soft,timeo=10,retrans=1"
    assert PRESETS["nfs-rdma:hard"].mount_options() == "vers=4.2,proto=rdma,hard"


def test_raw_options() -> None:
    o = parse_policy("nfs-rdma:mount=soft:timeo=5:retrans=0:vers=4.1")
    assert o == NfsOptions(hard=False, timeo=5, retrans=0, vers="4.1")
    assert parse_policy("nfs-rdma:timeo=30").hard  # hard unless told


@pytest.mark.parametrize("raw, words", [
    ("nfs-rdma", "unknown nfs-rdma policy"),
    ("nfs-rdma:medium", "unknown nfs-rdma policy"),
    ("nfs-rdma:mount=squishy", "neither hard nor soft"),
    ("nfs-rdma:timeo=0", "timeo='0' is not an integer in 1..6000"),
    ("nfs-rdma:retrans=-1", "retrans='-1'"),
    ("nfs-rdma:vers=3", "vers='3'"),
    ("nfs-rdma:rsize=4096", "unknown nfs-rdma option 'rsize'"),
])
def test_bad_policies_name_problem_and_fix(raw: str, words: str) -> None:
    with pytest.raises(SettingError) as exc:
        parse_policy(raw)
    assert words in exc.value.problem and exc.value.fix


def test_kernel_lane_claims_by_the_ulps_name() -> None:
    hard = parse_ref("nfs-rdma:hard")
    assert (hard.lane, hard.name, hard.options) == (LaneKind.KERNEL, "nfs-rdma", "hard")
    assert parse_ref("nvme-rdma").lane is LaneKind.KERNEL
    assert parse_ref("naive").lane is LaneKind.USERSPACE
    assert parse_ref("nfs-rdmax:hard").lane is LaneKind.USERSPACE  # (its validate refuses it)
    lane = LANES[LaneKind.KERNEL]()
    lane.validate(parse_ref("nfs-rdma:soft"), MatrixSpec())
    lane.validate(parse_ref("nvme-rdma"), MatrixSpec())
    with pytest.raises(SettingError):
        lane.validate(parse_ref("nfs-rdma:bogus=1"), MatrixSpec())


# --- procfs parsers -------------------------------------------------------------------------

MOUNTINFO = "".join(line + "\n" for line in (
    "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw",
    "41 22 0:37 / /proc/fs/nfsd rw,relatime shared:20 - nfsd nfsd rw",
    "57 30 0:45 / /run/rxe-power/rxpw-nfs-412-export rw,relatime shared:31 - tmpfs "
    "rxpw-nfs rw,size=16384k,mode=755",
    "60 30 0:48 / /run/rxe-power/rxpw-nfs-412-mnt rw,relatime shared:33 - nfs4 "
    "198.18.0.2:/ rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=rdma,"
    "port=20049,timeo=600,retrans=2,sec=sys,clientaddr=198.18.0.1,local_lock=none,"
    "addr=198.18.0.2",
    "61 30 0:49 / /mnt/with\\040space rw - tmpfs theirs rw"))


def test_parse_mountinfo() -> None:
    table = nfsobjs.parse_mountinfo(MOUNTINFO)
    assert [m.fstype for m in table] == ["proc", "nfsd", "tmpfs", "nfs4", "tmpfs"]
    nfs = nfsobjs.mount_at("/run/rxe-power/rxpw-nfs-412-mnt", table)
    assert nfs is not None and nfs.mount_id == 60 and nfs.source == "198.18.0.2:/"
    assert "proto=rdma" in nfs.options
    assert nfsobjs.mount_at("/mnt/with space", table) is not None
    assert nfsobjs.mount_at("/nowhere", table) is None


def test_parse_portlist() -> None:
    assert nfsobjs.parse_portlist("rdma 20049\ntcp 2049\n\n") == [
        nfsobjs.Listener("rdma", 20049), nfsobjs.Listener("tcp", 2049)]
    assert nfsobjs.parse_portlist("") == []


# the xprt line as the guest's 6.1 printed it after a mount and a 16 KiB O_DIRECT write
MOUNTSTATS = """\
device proc mounted on /proc with fstype proc
device 198.18.0.2:/ mounted on /run/rxe-power/rxpw-nfs-412-mnt with fstype nfs4 statvers=1.1
\topts:\trw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,acregmin=3,hard,proto=rdma,port=20049,timeo=600,retrans=2,sec=sys,clientaddr=198.18.0.1
\tage:\t12
\tcaps:\tcaps=0x3ffbffff,wtmult=512,dtsize=1048576,bsize=0,namlen=255
\tsec:\tflavor=1,pseudoflavor=1
\tevents:\t0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
\tbytes:\t0 0 0 0 0 0 0 0
\tRPC iostats version: 1.1  p/v: 100003/4 (nfs)
\txprt:\trdma 0 0 1 0 0 14 14 0 14 0 0 0 2 8480 216 0 0 29876 0 0 0 0 0 11 0 0 0
\tper-op statistics
"""


def test_parse_mountstats() -> None:
    stats = parse_mountstats(MOUNTSTATS)
    assert [s.mountpoint for s in stats] == ["/proc", "/run/rxe-power/rxpw-nfs-412-mnt"]
    nfs = stats[1]
    assert nfs.fstype == "nfs4" and nfs.opts["proto"] == "rdma" and "hard" in nfs.opts
    assert nfs.xprt is not None and nfs.xprt.proto == "rdma"
    assert (nfs.xprt.connect_count, nfs.xprt.sends, nfs.xprt.recvs) == (1, 14, 14)
    assert stats[0].xprt is None


def test_etab_line_is_exportfs_format() -> None:
    line = etab_line(Path("/run/rxe-power/rxpw-nfs-1-export"), "198.18.0.1")
    path, client = line.rstrip("\n").split("\t")
    assert path == "/run/rxe-power/rxpw-nfs-1-export"
    assert client.startswith("198.18.0.1(") and "fsid=0" in client and "rw" in client


# --- state-file entries ---------------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    {"kind": "nfs_mount", "path": "/"},
    {"kind": "nfs_mount", "path": "/run/rxe-power/../../etc"},
    {"kind": "nfs_mount", "path": "/mnt/rxpw-nfs-1-mnt"},
    {"kind": "nfs_tmpfs", "path": "/run/rxe-power/topology"},
    {"kind": "nfs_tmpfs", "path": 7},
    {"kind": "nfsd_versions", "old": "+4; reboot"},
    {"kind": "nfsd_fs_mount", "path": "/proc"},
    {"kind": "route_prohibit", "dst": "198.18.0.2", "table": 18770, "metric": 4242,
     "type": "throw; reboot"},
])
def test_undo_refuses_what_is_not_ours(entry: dict) -> None:
    assert check_entry(entry) is None  # the kind is known; its values are checked at undo
    with pytest.raises(NotOurs):
        ko.undo(entry, print)


def test_undo_of_our_entries_when_nothing_is_there(tmp_path: Path) -> None:
    """Entries of a run whose objects are already gone: nothing to do, no error."""
    d = tmp_path / "rxpw-nfs-99-mnt"
    d.mkdir()
    assert nfsobjs.undo({"kind": "nfs_mount", "path": str(d)}, print, run_dir=tmp_path) == ""
    assert not d.exists()  # the empty mount point is removed
    fs = tmp_path / "nfsd"
    fs.mkdir()
    (fs / "threads").write_text("0\n")
    (fs / "versions").write_text("-2 -3 +4 +4.1 +4.2\n")
    nfsobjs.undo({"kind": "nfsd_server", "port": 20049}, print, nfsd_fs=fs)
    nfsobjs.undo({"kind": "nfsd_versions", "old": "-2 +3 +4 +4.1 +4.2"}, print, nfsd_fs=fs)
    assert (fs / "versions").read_text() == "-2 +3 +4 +4.1 +4.2\n"
    assert nfsobjs.nfsd_threads(fs) == 0


def test_versions_not_written_while_a_server_runs(tmp_path: Path) -> None:
    (tmp_path / "threads").write_text("8\n")
    (tmp_path / "versions").write_text("+3 +4\n")
    nfsobjs.undo({"kind": "nfsd_versions", "old": "-3 +4"}, print, nfsd_fs=tmp_path)
    assert (tmp_path / "versions").read_text() == "+3 +4\n"


# --- the transport timeline, detect and recover --------------------------------------------


def _cm(dev: str, state: str, src: str = "198.18.0.1") -> CmId:
    return CmId(dev, state, src, 40000, "198.18.0.2", 20049, "")


def test_transport_changes_and_detect_recover() -> None:
    s = [CmSample(100, (_cm("rxe0", "CONNECT"), CmId("rxe1", "LISTEN", "0.0.0.0", 20049,
                                                       "", None, ""))),
         CmSample(200, (_cm("rxe0", "CONNECT"),)),
         CmSample(300, ()),
         CmSample(400, (_cm("rxe0", "ROUTE_QUERY"),)),
         CmSample(500, (_cm("rxe0", "CONNECT"),))]
    ch = transport_changes(s, 20049)
    assert [c["t_ns"] for c in ch] == [100, 300, 400, 500]
    assert ch[0]["ids"] == ["rxe0 CONNECT 198.18.0.1->198.18.0.2:20049"] and ch[1]["ids"] == []
    win = Window(250, 450)
    recs = [IoRecord(0, IoOp.WRITE, 0, 1, 150, 160, 4096),
            IoRecord(1, IoOp.WRITE, 1, 1, 240, 470, 4096),  # waited across: late
            IoRecord(2, IoOp.WRITE, 2, 1, 460, 480, None, 5)]  # failed: not a recovery
    detect, recover = detect_recover(s, 20049, "rxe0", win, 450, recs)
    assert detect == (300 - 250) / 1e6 and recover == (470 - 450) / 1e6
    assert detect_recover(s, 20049, "rxe0", None, None, recs) == (None, None)


def test_nfs_row() -> None:
    scenario = {"id": "standby/hca-first/nfs-rdma:hard/mixed", "transition": "standby",
                "ordering": "hca-first", "policies": ["nfs-rdma:hard"], "mix": "mixed"}
    result = {"ledger": {"outcomes": {"completed-ok": 90, "completed-late": 4},
                         "lost_seqs": [], "target": {"intact": 75}, "errnos": {}},
              "transition": {"verdict": "completed"}, "survived": True,
              "settled": {"connected_after_back_ms": 812.0}, "detect_ms": 120.0,
              "recover_ms": 900.0, "xprt_states": [{"connect_count": 1},
                                                   {"connect_count": 2}],
              "connections": [{"phase": "before", "dev": "rxe0"},
                              {"phase": "after", "dev": "rxe0"}],
              "findings": [], "status": "clean"}
    (row,) = kernel_rows(scenario, result, parse_ref("nfs-rdma:hard"))
    assert row.status is RowStatus("clean") and row.peer["delivered-once"] == 75
    assert "4 late, 0 stuck" in row.findings and "mount survived" in row.findings
    assert "transport connected 812 ms after the device returned" in row.findings
    assert "xprt connects 1->2 (mountstats)" in row.findings
    assert "connections after:rxe0 before:rxe0" in row.findings


# --- a recorded matrix row (the guest: standby hca-first, nfs-rdma:hard) -------------------


def test_recorded_row(data_dir: Path) -> None:
    """`rxe-power matrix --policy nfs-rdma:hard --transition standby --ordering hca-first`
    in the TCG guest: the ledger re-derived from its records, and the row made from it."""
    import json

    from clients.kernel.ulp_scenario import window_of
    from harness.workload.block_ledger import summarize

    (rec,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    res = rec["result"]
    recs = [IoRecord.from_json(d) for d in res["records"]]
    win = window_of(res["transition"])
    assert win is not None
    # the blocks as the run read them from the tmpfs on the peer side
    s = summarize(recs, recorded_target(res, recs, win), win)
    assert s.outcomes == res["ledger"]["outcomes"] == {"completed-ok": 267, "completed-late": 4}
    assert s.acknowledged_writes == res["ledger"]["acknowledged_writes"] == 217
    assert s.target == res["ledger"]["target"] == {"intact": 217}
    # the late ones waited across the outage: submitted before the device was back
    late = [x for x in recs if x.done_ns and x.submit_ns < win.end_ns < x.done_ns]
    assert len(late) >= 4
    assert [(c["phase"], c["dev"], c["src"]) for c in res["connections"]] == [
        ("before", "rxe0", "198.18.0.1"), ("after", "rxe0", "198.18.0.1")]
    assert not res["off_wire"] and res["survived"]
    (row,) = kernel_rows(rec["scenario"], res, parse_ref(rec["scenario"]["policies"][0]))
    assert row.counts == {"completed-ok": 267, "completed-late": 4, "failed-to-app": 0,
                          "lost": 0}
    assert row.status is RowStatus.CLEAN and row.recovery_ms == res["recover_ms"]


def _rejudge(res: dict, *, target_change: dict | None = None,
             planted: list | None = None) -> tuple[list[str], str]:
    """The recorded NFS row judged again by today's judge (clients.kernel.ulp_scenario),
    from its own records, its target as read, its connections and its kernel log; with a
    block of the target changed or a connection planted (the negative controls)."""
    from clients.kernel.route_guard import Connection, off_wire
    from clients.kernel.ulp_scenario import io_coverage, judge, window_of
    from harness.topology.config import TopologyConfig
    from harness.workload.block_ledger import summarize
    from harness.workload.findings import texts
    from power.kmsg import KmsgScan

    recs = [IoRecord.from_json(d) for d in res["records"]]
    win = window_of(res["transition"])
    target = recorded_target(res, recs, win) | (target_change or {})
    conns = [Connection(**c) for c in res["connections"]] + (planted or [])
    fs = judge(summarize(recs, target, win), conns, off_wire(conns, TopologyConfig()),
               KmsgScan.from_json(res["kernel"]), res["transition"], None, "rxe0",
               io_coverage(recs, res["transition"]))
    return texts(fs), RowStatus.of(fs)


def test_recorded_row_judged_again_and_its_negative_controls(data_dir: Path) -> None:
    """Today's judge makes the recorded row's status from its records, the target as read
    and its connections: clean, as it was. One acknowledged write's block corrupted on
    the target makes it bad, naming the corrupted write; a connection with both ends on
    rxe1 (the loopback the route guard prevents) planted among its samples makes it
    broken. (The guest's controls do both for real: tests/rxe/test_negative_controls.py.)"""
    import json

    from clients.kernel.route_guard import Connection
    from clients.kernel.ulp_scenario import window_of
    from harness.workload.block_ledger import BlockState

    (rec,) = json.loads((data_dir / "nfs-matrix-row.json").read_text())
    res = rec["result"]
    assert _rejudge(res) == ([], "clean") and res["status"] == "clean"
    recs = [IoRecord.from_json(d) for d in res["records"]]
    seq = sorted(recorded_target(res, recs, window_of(res["transition"])))[100]
    findings, status = _rejudge(res, target_change={seq: BlockState.CORRUPTED})
    assert status == "bad" and findings == ["1 acknowledged write(s) corrupted"], findings
    t = res["connections"][-1]["first_ns"]
    loop = Connection("during", "rxe1", "198.18.0.2", "198.18.0.2", t - 1_000_000_000, 3)
    findings, status = _rejudge(res, planted=[loop])
    assert status == "broken", findings
    assert findings == ["connection 198.18.0.2->198.18.0.2 on rxe1 (during) did not cross "
                        "the wire (loopback on one kernel): the row cannot be trusted"]


def test_busy_forced_umount_is_retried_then_detached_lazily(monkeypatch) -> None:
    """umount -f refused as busy (measured after surprise-removal: the driver's threads
    still held the file): tried again until the bound, then umount -l, reported."""
    import subprocess

    calls: list[list[str]] = []

    def fake_run(argv, timeout_s, **kw):
        calls.append(list(argv))
        lazy = "-l" in argv
        return subprocess.CompletedProcess(argv, 0 if lazy else 32, "",
                                           "" if lazy else "target is busy.")

    monkeypatch.setattr(nfsobjs, "run_bounded", fake_run)
    monkeypatch.setattr(nfsobjs, "mount_at", lambda p, t=None: object())
    monkeypatch.setattr(nfsobjs, "UMOUNT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(nfsobjs, "UMOUNT_RETRY_S", 0.1)
    note = nfsobjs.umount("/run/rxe-power/rxpw-nfs-1-mnt", True, "NFS mount", print)
    assert calls[-1] == ["umount", "-i", "-l", "/run/rxe-power/rxpw-nfs-1-mnt"]
    assert len(calls) >= 3 and all("-f" in c for c in calls[:-1])
    assert "detached lazily" in note and "target is busy." in note
    calls.clear()
    with pytest.raises(Exception, match="target is busy"):  # not forced: no last resort
        nfsobjs.umount("/run/rxe-power/rxpw-nfs-1-export", False, "tmpfs", print)
    assert len(calls) == 1
