"""rxe-power bench against real rxe, small: the sections run, every run holds (no error,
every ledger whole, no bound fired), and the figures are there (their values are the
bench's business, not a test's). And its negative control: a run that meets a real error
is reported FAILED with its cause and no ratio, and the bench says the whole run failed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.core.printer import RecordingPrinter
from harness.core.protocol import Channel, WorkerError
from harness.core.schemas import ChannelKind
from harness.run.bench import client_vs_perftest as cvp
from harness.run.bench.record import BenchRecord
from harness.run.bench.run import run_bench
from harness.run.bench.spec import BenchSpec
from harness.run.session import RunSession
from harness.topology.config import Topology, TopologyConfig

PLANT_TIMEOUT_S = 60.0  # the harness run's QP connected and its first message received
RUN_BOUND_S = 60.0  # the planted run's bound (measured: it ends at its error in ~1 s)
POLL_S = 0.01


@pytest.mark.timeout(400)
def test_bench_smoke(rxe_config: TopologyConfig, rxe_topology: Topology,
                     tmp_path: Path) -> None:
    spec = BenchSpec(sizes=(64,), queue_depth=8, scale=0.02, lat_iters=30, cycles=1,
                     qps=16, qp_workers=2, hold_ms=50, cycle_count=100,
                     sections=("throughput", "cycle", "qps")).validate()
    lines: list[str] = []
    code = run_bench(spec, rxe_config, tmp_path, out=RecordingPrinter(lines=lines))
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["throughput"]
    # a run with any error is a failed row with its cause: the bench must not pass it
    assert [r["failed"] for r in rows] == [None] * len(rows), "\n".join(lines)
    assert "failed_sections" not in res, res["failed_sections"]
    assert code == 0, lines
    # SEND and WRITE at CQ moderation, and SEND with every WR signaled
    assert [(r["op"], r["signal_every"]) for r in rows] == [("SEND", 8), ("SEND", 1),
                                                            ("WRITE", 8)]
    for r in rows:
        assert r["ledger_ok"] and r["harness"]["failure"] is None, r["harness"]
        assert r["harness"]["bound"] is None and r["perftest"]["failure"] is None
        assert r["perftest"]["msg_per_s"] > 0 and r["harness"]["msg_per_s"] > 0
        assert r["ratio_msg"] == pytest.approx(r["harness"]["msg_per_s"]
                                               / r["perftest"]["msg_per_s"], rel=1e-2)
    assert "latency" not in res  # (its parsing is tested in test_bench_unit; the path is
    # the throughput runs' at queue depth 1)
    cycle = res["cycle"]["cycles"][0]
    assert cycle["verdict"] == "completed" and cycle["ledger_ok"]
    assert {"quiesce", "delete", "recreate", "port_up", "reconnect"} <= set(cycle["parts_ms"])
    qps = res["qps"]
    assert qps["ledger_ok"] and qps["unaccounted"] == 0 and qps["requests"] == 2 * 32
    assert res["load_start"]["nproc"] >= 1 and len(res["load_end"]["loadavg"]) == 3
    assert any("throughput: 1 QP" in line for line in lines)
    assert any(line.startswith("every run held") for line in lines), lines


class PeerQpToErr(threading.Thread):
    """Moves the peer agent's QP `qp_id` to ERR once the harness run on it is under way: the
    QP is connected (RTS: the worker connects it before `go`) and the peer HCA has received
    a message since (rxe's own rdma_recvs counter): a real error on real rxe, the sender's
    retries run out. Its own connection to the agent (the rig's is the main thread's)."""

    def __init__(self, agent_socket: str, qp_id: int, peer_dev: str) -> None:
        super().__init__(daemon=True)
        self.agent_socket, self.qp_id = agent_socket, qp_id
        # set once the row's perftest run has ended: the thread polls only after it, so
        # its polling (and the agent's answers) do not load the vCPUs while perftest
        # calibrates its clock (CI: three 0-rate runs in a row beside a 10 ms poll)
        self.perftest_done = threading.Event()
        self.recvs = Path(f"/sys/class/infiniband/{peer_dev}/ports/1/hw_counters/rdma_recvs")
        self.state: str | None = None
        self.error: BaseException | None = None

    def _wait(self, what: str, done: Callable[[], bool], deadline: float) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen in {PLANT_TIMEOUT_S} s")
            time.sleep(POLL_S)  # polling interval of the bounded wait

    def run(self) -> None:
        try:
            if not self.perftest_done.wait(PLANT_TIMEOUT_S):
                raise TimeoutError(f"the row's perftest run not ended in {PLANT_TIMEOUT_S} s")
            deadline = time.monotonic() + PLANT_TIMEOUT_S
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.agent_socket)
            chan = Channel(sock, "peer agent (the test's)", ChannelKind.PEER)
            try:
                def connected() -> bool:
                    try:
                        state = chan.request("qp_state", 30.0, qp_id=self.qp_id)["state"]
                        return bool(state == "RTS")
                    except WorkerError:  # not created yet
                        return False

                self._wait(f"the agent's QP {self.qp_id} in RTS", connected, deadline)
                base = int(self.recvs.read_text())
                self._wait(f"a message received on {self.recvs} after {base}",
                           lambda: int(self.recvs.read_text()) > base, deadline)
                self.state = chan.request("to_err", 30.0, qp_id=self.qp_id)["state"]
            finally:
                sock.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.timeout(400)
def test_a_run_with_an_error_is_failed_with_its_cause_and_no_ratio(
        rxe_config: TopologyConfig, rxe_topology: Topology, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control of the bench's verdict: the peer's QP of the 4 KiB SEND run goes to
    ERR while that run posts (the sender's retries, BENCH_RETRY_CNT, run out). Its row must
    be FAILED, naming the error, with no ratio; the section fails; the run ends at the
    client's error, not at its bound (none fired); the rows after it (SEND signaled 1/1,
    WRITE), untouched, keep their figures. The run's bound is lowered to RUN_BOUND_S so
    that a run that does not end at its error fails here, with the bound's message,
    within the test's time."""
    monkeypatch.setattr(cvp, "HARNESS_RUN_TIMEOUT_S", RUN_BOUND_S)
    spec = BenchSpec(sizes=(4096,), queue_depth=8, scale=0.25,
                     sections=("throughput",)).validate()
    lines: list[str] = []
    bench = BenchRecord(spec, tmp_path, RecordingPrinter(lines=lines))
    with RunSession(rxe_config, tmp_path) as session, session.rig(shim=False) as rig:
        # the agent numbers its QPs in order: the SEND run's will be the next one
        probe_id, _ = rig.agent.create_qp(1 << 16, 4, 4096)
        rig.agent.request("destroy_qp", qp_id=probe_id)
        plant = PeerQpToErr(rig.agent.sock_path, probe_id + 1, rig.topo.peer.dev)
        real_perftest = cvp.run_perftest_counted

        def perftest_then_plant(*args, **kwargs):  # the real run; then the plant polls
            try:
                return real_perftest(*args, **kwargs)
            finally:
                plant.perftest_done.set()

        monkeypatch.setattr(cvp, "run_perftest_counted", perftest_then_plant)
        plant.start()
        ok = cvp.measure_throughput(bench, rig)
        plant.join(PLANT_TIMEOUT_S)
    assert plant.error is None and plant.state == "ERR", (plant.error, plant.state)
    rows = bench.results["throughput"]
    assert [(r["op"], r["signal_every"]) for r in rows] == [("SEND", 8), ("SEND", 1),
                                                            ("WRITE", 8)]
    send, others = rows[0], rows[1:]
    hr = send["harness"]
    # the fault met the work: the run did not complete (else the control proves nothing)
    assert hr["counts"].get("completed-ok", 0) < hr["count"], hr["counts"]
    assert ok is False and send["ledger_ok"] is False
    assert send["ratio_mib"] is None and send["ratio_msg"] is None
    assert hr["first_error"] is not None and hr["first_error"]["status"] == "RETRY_EXC_ERR"
    assert hr["bound"] is None, hr["bound"]  # ended at the error, not at the bound
    # the row is failed by the harness run, and its text carries the harness's cause
    assert "harness" in send["failed_by"] and hr["failure"] in send["failed"], send
    failed_lines = [line for line in lines if "FAILED (no figures)" in line]
    assert [line.split()[:2] for line in failed_lines][:1] == [["4096", "SEND"]], lines
    for r in others:  # the runs after it, on fresh QPs, untouched: the harness's figures
        assert r["harness"]["failure"] is None and r["ledger_ok"], r["failed"]
        assert r["harness"]["msg_per_s"] > 0
        # perftest is not the subject here: a row it alone failed must be its clock
        # calibration, said by perftest itself in every run (then there is no ratio)
        if r["failed_by"] == ["perftest"]:
            pt_ = r["perftest"]
            assert pt_["uncalibrated_runs"] == pt_["zero_runs"] + 1, pt_["failure"]
            assert r["ratio_mib"] is None
        else:
            assert r["failed"] is None and r["ratio_mib"] is not None, r["failed"]
