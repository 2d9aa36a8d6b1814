"""rxe-power matrix and stress against real rxe: results files, tables, leak and kernel checks.

Small on purpose (the suite's budget): a two-scenario matrix, an 8-cycle stress of
the cooperative policies, and a 4-cycle stress of two deliberately bad clients
(tests/helpers/bad_clients.py) that stress must catch.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.core.printer import STDOUT, RecordingPrinter
from harness.run.lanes import parse_policies
from harness.run.matrix import MatrixSpec, run_matrix
from harness.run.resultsfile import RecordKind, read_results
from harness.run.rows import RowStatus
from harness.run.stress import CycleOutcome, StressSpec, run_stress
from power.plan import Ordering

BAD = "tests.helpers.bad_clients"


def test_short_matrix(rxe_config, rxe_topology, tmp_path: Path) -> None:
    """graceful completes standby cleanly; naive holds the device and is terminated, which
    is its row's finding (bad), not a harness failure. Every record is on disk, the JUnit
    file has one failing testcase."""
    spec = MatrixSpec(("standby",), (Ordering.CLIENTS_FIRST,),
                      parse_policies(("graceful", "naive")),
                      count=60).validate()
    lines: list[str] = []
    code = run_matrix(spec, rxe_config, tmp_path, tmp_path / "junit.xml",
                      out=RecordingPrinter(lines=lines))
    assert code == 0, lines
    res = read_results(tmp_path / "results.jsonl")
    assert not res.problem and res.command == "matrix"
    scen = res.of_kind(RecordKind.SCENARIO)
    assert [s["scenario"]["id"] for s in scen] == ["standby/clients-first/graceful/mixed",
                                                   "standby/clients-first/naive/mixed"]
    graceful, naive = (s["rows"][0] for s in scen)
    assert graceful["status"] == RowStatus.CLEAN and graceful["peer_saw"].endswith("(goodbye)")
    # open-loop arrivals (the matrix's default): what arrives while it sleeps completes late
    assert set(graceful["counts"]) <= {"completed-ok", "completed-late"}
    # requests kept coming until the device was back plus the settle time (--end resumed,
    # the default): every one issued is counted, and the workload crossed the transition
    # and ran on past it
    cov = graceful["coverage"]
    assert sum(graceful["counts"].values()) == cov["requests"] > 0, cov
    assert cov["crossed"] + cov["arrived_away"] > 0 and cov["after"] > 0, cov
    assert graceful["counts"].get("completed-late", 0) > 0  # it arrived while asleep
    assert sum(naive["counts"].values()) > 0  # its books up to the kill, from its journal
    assert naive["status"] == RowStatus.BAD and naive["verdict"] == "forced"
    assert any(f.startswith("held the device") for f in naive["findings"])
    assert res.of_kind(RecordKind.SUMMARY)[0]["by_status"] == {"clean": 1, "bad": 1,
                                                               "missed": 0, "broken": 0}
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert "naive" in (tmp_path / "table.txt").read_text()


def res_cycles(folder: Path) -> list[dict]:
    return read_results(folder / "results.jsonl").of_kind(RecordKind.CYCLE)


STRESS_CYCLES = 5  # 20 took 47 s of the suite under TCG, 8 took 40 s (CI 24)


@pytest.mark.timeout(600)
def test_stress_cycles(rxe_config, rxe_topology, tmp_path: Path) -> None:
    """STRESS_CYCLES standby cycles under live cooperative clients: every cycle passes its
    checks and the fd, thread and RDMA resource figures are flat from the first cycle to
    the last. (Long runs are `rxe-power stress`'s job; here the suite's time counts.)"""
    spec = StressSpec(cycles=STRESS_CYCLES, policies=parse_policies(("graceful", "queue-replay")),
                      count=40).validate()
    seen: list[CycleOutcome] = []
    code = run_stress(spec, rxe_config, tmp_path, lambda o, f, t: seen.append(o),
                      out=STDOUT)
    failures = [(o.cycle, o.failures) for o in seen if not o.ok]
    assert code == 0 and not failures, failures
    res = read_results(tmp_path / "results.jsonl")
    cycles = res.cycles()
    assert [c.cycle for c in cycles] == list(range(1, STRESS_CYCLES + 1))
    assert all(c.verdict == "completed" and not c.kernel_hits for c in cycles)
    assert all(cl.unaccounted == 0 and not cl.crashed for c in cycles for cl in c.clients)
    trends = res.of_kind(RecordKind.SUMMARY)[0]["trends"]
    flat = [k for k in trends if k.endswith((".fds", ".threads", ".qp", ".cq", ".mr", ".pd"))]
    assert len(flat) == 4 * 2 + 2 * 4  # 2 workers, the peer agent, the controller; 2 devices
    for k in flat:  # never above cycle 1 (a thread of the controller may end)
        assert trends[k]["max"] == trends[k]["first"], (k, trends[k])
        if not k.startswith("controller."):
            assert trends[k]["min"] == trends[k]["max"], (k, trends[k])
    summary = res.of_kind(RecordKind.SUMMARY)[0]
    assert summary["findings"] == [] and summary["steps"] == []
    assert len(summary["rss_not_judged"]) == 4  # too few cycles to judge a slope: said so
    for raw in res.of_kind(RecordKind.CYCLE):  # what each cycle records of its delete
        held = raw["delete"]["held_at_start"]
        assert raw["delete"]["blocked_s"] >= 0 and not raw["delete"]["vetoed"]
        assert {u["pid"] for u in raw["usage"].values()} >= {c["pid"] for c in raw["clients"]}
        for c in raw["clients"]:
            assert c["held_at_delete"] == (c["pid"] in held)
            assert c["device_fatal"] == ("DEVICE_FATAL" in c["async_events"])


@pytest.mark.timeout(300)
def test_stress_catches_a_leak_and_a_kernel_log_hit(rxe_config, rxe_topology,
                                                    tmp_path: Path) -> None:
    """Leaky keeps one more open file per resume: by cycle 4 it is past the fd slack and
    that cycle fails naming it. KernelNoise writes an rdma_rxe error line to /dev/kmsg on
    its second resume: cycle 2 fails on the kernel-log check, naming the line.
    LeaksPeerQps has the peer agent make one more QP per resume: every cycle from 1 on
    leaves rxe1 one QP, CQ and MR up, each a new level (a failure), named as the agent's
    for that client, which is still connected; rxe0 never changes."""
    spec = StressSpec(cycles=4, policies=parse_policies((f"{BAD}:Leaky", f"{BAD}:KernelNoise",
                                                         f"{BAD}:LeaksPeerQps")),
                      count=40).validate()
    seen: list[CycleOutcome] = []
    code = run_stress(spec, rxe_config, tmp_path, lambda o, f, t: seen.append(o),
                      out=STDOUT)
    assert code == 1
    by = {o.cycle: o for o in seen}
    assert by[1].ok, by[1].failures
    kmsg = [f for f in by[2].failures if f.startswith("kernel log:")]
    assert len(kmsg) == 1 and "injected error line" in kmsg[0], by[2].failures
    assert not [f for f in by[3].failures if f.startswith("kernel log:")]
    leak = sorted(f for f in by[4].failures if "open fds" in f)
    # Leaky's own files, and the peer agent's: a completion channel per QP LeaksPeerQps left
    assert len(leak) == 2 and leak[1].startswith("tests_helpers_bad_clients_Leaky-0:"), leak
    agent_fds = [c["usage"]["peer-agent"]["fds"] for c in res_cycles(tmp_path)]
    assert agent_fds == [agent_fds[0] + i for i in range(4)], agent_fds
    assert leak[0].startswith(f"peer-agent: {agent_fds[3]} open fds, {agent_fds[0]} after "
                              "cycle 1"), leak
    peer = "tests_helpers_bad_clients_LeaksPeerQps-2"
    for n in (2, 3, 4):  # a resume (and so a peer QP) in every cycle, counted from cycle 1's
        res = [f for f in by[n].failures if f.startswith("rxe1 rdma res differs")]
        assert len(res) == 1, (n, by[n].failures)
        assert (f"+{n - 1} qp, +{n - 1} cq, +{n - 1} mr held by the peer agent (pid "
                in res[0]) and f"for client {peer}: {peer} is still connected" in res[0], res
        assert not [f for f in by[n].failures if f.startswith("rxe0 rdma res")]
    res = read_results(tmp_path / "results.jsonl")
    usage = [c["usage"] for c in res.of_kind(RecordKind.CYCLE)]
    leaky = [u["tests_helpers_bad_clients_Leaky-0"]["fds"] for u in usage]
    noise = [u["tests_helpers_bad_clients_KernelNoise-1"]["fds"] for u in usage]
    assert leaky == [leaky[0] + i for i in range(4)], leaky  # one per resume
    assert len(set(noise)) == 1, noise  # the check tells the two apart
    assert json.dumps(res.of_kind(RecordKind.CYCLE)[1]["result"])  # failed: kept in full
