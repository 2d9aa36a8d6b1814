"""The one ULP flow (clients/kernel/ulp_run.py) on recorded data: nvme-rdma's Ulp
(NvmeUlp, its real hooks) over what the guest run of tests/data/nvme-matrix.jsonl
measured (its I/O records, controller states, transition, kernel log, connections, the
target's blocks), the system parts (target, host, driver, shim, kmsg, guard) replayed
from the record. The flow gives back the recorded row; a small Ulp of the test's own
shows the hooks' order, the clients-first PM client, the held-delete hook and teardown."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clients.kernel import nvme_scenario, route_guard, ulp_run
from clients.kernel.blockio import DriverSpec
from clients.kernel.nvme_host import CtrlSample
from clients.kernel.nvme_scenario import NvmeScenario, NvmeUlp
from clients.kernel.route_guard import Connection
from clients.kernel.ulp_result import UlpResult
from clients.kernel.ulp_run import Measured, Ulp, UlpScenario, run_ulp
from clients.kernel.ulp_scenario import window_of
from harness.core.state import StateFile
from harness.run.resultsfile import RecordKind, read_results
from harness.workload.block_ledger import (
    BlockState,
    IoRecord,
    latest_write_per_block,
    make_block,
)
from harness.workload.findings import RowStatus
from power.kmsg import KmsgScan
from power.plan import Ordering
from tests.helpers.recorded_blocks import recorded_target


class ReplayDriver:
    """The I/O driver, replaying a run's records (and noting what the flow asked)."""

    def __init__(self, path: Path, spec: DriverSpec, records: list[IoRecord],
                 calls: list[str]) -> None:
        self.records, self.calls = records, calls
        calls.append(f"driver on {path}")

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.calls.append(name + (f" {args[0]}" if args else ""))
            return {"pause": [], "finish": self.records}.get(name)
        return call


class ReplayShim:
    """The shim: the recorded transition; a registered PM client is given the notice
    and the resume, as the shim's notifier would."""

    def __init__(self, tres: dict[str, Any]) -> None:
        self.tres, self.clients, self.registered = tres, [], []
        self.notifier = SimpleNamespace(register=self._register,
                                        unregister=lambda c: self.clients.remove(c)
                                        if c in self.clients else None)

    def _register(self, c: Any) -> None:
        self.clients.append(c)
        self.registered.append(c.name)

    def run(self, req: Any) -> Any:
        for c in list(self.clients):
            assert c.suspend_prepare(req.name, 5.0).released
            c.resume_complete(req.name, None)
        return SimpleNamespace(to_json=lambda: self.tres)


def replay_system(monkeypatch: pytest.MonkeyPatch, res: dict[str, Any],
                  calls: list[str]) -> None:
    """The flow's system parts, from the record `res`."""
    recs = [IoRecord.from_json(d) for d in res["records"]]
    monkeypatch.setattr(ulp_run, "BlockDriver",
                        lambda path, spec: ReplayDriver(path, spec, recs, calls))
    monkeypatch.setattr(ulp_run, "wait_issued", lambda drv, n: calls.append(f"wait {n}"))
    # (its own test is in test_ulp_window_unit.py: here the flow's order)
    monkeypatch.setattr(ulp_run, "wait_answered_after",
                        lambda drv, back: calls.append("answered after") or 0.0)
    monkeypatch.setattr(ulp_run, "run_on", lambda s: None)
    monkeypatch.setattr(ulp_run, "set_sysctl", lambda state, k, v: calls.append("sysctl"))
    monkeypatch.setattr(ulp_run, "restore_sysctl", lambda state, k: calls.append("sysctl back"))
    monkeypatch.setattr(os, "sync", lambda: None)

    @contextlib.contextmanager
    def tail() -> Iterator[object]:
        yield object()

    monkeypatch.setattr(ulp_run, "kmsg", SimpleNamespace(
        Tail=tail, write_marker=lambda label, tail: calls.append(f"marker {label}"),
        scan_after=lambda marker, tail: KmsgScan.from_json(res["kernel"])))

    @contextlib.contextmanager
    def cm_sampler(interval_s: float) -> Iterator[object]:
        yield SimpleNamespace(samples=[], errors=[])

    monkeypatch.setattr(route_guard, "install",
                        lambda cfg, state, how: calls.append(f"guard {how}") or {})
    monkeypatch.setattr(route_guard, "remove", lambda entry, state: calls.append("guard off"))
    monkeypatch.setattr(route_guard, "CmSampler", cm_sampler)
    monkeypatch.setattr(route_guard, "connections",
                        lambda *a: [Connection(**c) for c in res["connections"]])
    monkeypatch.setattr(route_guard, "off_wire",
                        lambda conns, cfg: [Connection(**c) for c in res["off_wire"]])


@pytest.fixture
def recorded(data_dir: Path) -> list[dict]:
    return read_results(data_dir / "nvme-matrix.jsonl").of_kind(RecordKind.SCENARIO)


def replay_nvme(monkeypatch: pytest.MonkeyPatch, res: dict[str, Any], calls: list[str],
                tmp_path: Path) -> tuple[NvmeScenario, NvmeUlp, StateFile]:
    """NvmeUlp with the recorded target (its blocks as the run read them) and a host whose
    controller is the recorded one's, its states sampled as recorded."""
    sc_d = res["scenario"]
    sc = NvmeScenario(**sc_d | {"ordering": Ordering(sc_d["ordering"]),
                                "driver": DriverSpec(**sc_d["driver"])})
    recs = [IoRecord.from_json(d) for d in res["records"]]
    win = window_of(res["transition"])
    states = recorded_target(res, recs, win)
    bs = sc.driver.block_size
    blocks = {b: (make_block(r.seq, r.generation, b, bs) if states[r.seq] is BlockState.INTACT
                  else b"") for b, r in latest_write_per_block(recs, win, bs).items()}
    samples = [CtrlSample(**s) for s in res["ctrl_states"]]
    replay_system(monkeypatch, res, calls)

    class Host:
        def __init__(self, cfg: Any, state: Any) -> None:
            self.ctrl, self.block_device = samples[0].ctrl, Path("/dev/nvme0n1")

        def find(self) -> Any:
            last = samples[-1]
            return None if last.state == "absent" else SimpleNamespace(name=last.ctrl,
                                                                       state=last.state)

        def connect(self) -> float:
            calls.append("connect")
            if res["block_device_after"]:
                self.block_device = Path(res["block_device_after"])
            return 1.274

        def disconnect(self, forget: bool = True) -> None:
            calls.append(f"disconnect forget={forget}")

    monkeypatch.setattr(nvme_scenario, "NvmeHost", Host)
    monkeypatch.setattr(nvme_scenario.nvme_hang, "pending", lambda cfg: [])  # none held
    state = StateFile(tmp_path / "state.json")
    ulp = NvmeUlp(SimpleNamespace(peer_addr="198.18.0.2", local_addr="198.18.0.1"), sc, state)
    ulp.target = SimpleNamespace(  # type: ignore[assignment]
        cfg=SimpleNamespace(nqn="rxpw", trsvcid=4420), setup=lambda: calls.append("target"),
        teardown=lambda: calls.append("target off") or [],
        read_block=lambda b, size: blocks.get(b, b""))
    monkeypatch.setattr(ulp, "sampler", lambda: contextlib.nullcontext(
        SimpleNamespace(samples=samples)))
    return sc, ulp, state


SAME = ("scenario", "transition", "ledger", "records", "ctrl_states",
        "connections", "off_wire", "survived", "block_device_after", "detect_ms",
        "recover_ms", "kernel", "findings", "status", "hang", "teardown_left")


def test_the_flow_gives_back_each_recorded_nvme_row(monkeypatch: pytest.MonkeyPatch,
                                                      recorded: list[dict],
                                                      tmp_path: Path) -> None:
    """What the run measured, through today's flow and NvmeUlp's hooks, makes the row it
    recorded: the ledger from the records and the target's blocks, detect and recover from
    the controller's states, survived, the findings and the status; clients-first's PM
    client quiesced, disconnected and reconnected, as the recorded events say."""
    for r in recorded:
        res = r["result"]
        calls: list[str] = []
        with monkeypatch.context() as mp:
            sc, ulp, state = replay_nvme(mp, res, calls, tmp_path)
            out = run_ulp(ReplayShim(res["transition"]), SimpleNamespace(local_dev="rxe0"),
                          sc, ulp, state).to_json()
        assert {k: out[k] for k in SAME} == {k: res[k] for k in SAME}, r["scenario"]["id"]
        # (the options have a key more since that run)
        assert {k: out["options"][k] for k in res["options"]} == res["options"]
        keep = {"t_ns", "in_flight"}
        assert ([{k: v for k, v in e.items() if k not in keep} for e in out["client_events"]]
                == [{k: v for k, v in e.items() if k not in keep}
                    for e in res["client_events"]])
        # (settled has a key more since that run: answered_after_back_s)
        assert {k: v for k, v in out["settled"].items()
                if k not in ("waited_ms", "answered_after_back_s")} == {
            k: v for k, v in res["settled"].items() if k != "waited_ms"}
        assert out["settled"]["answered_after_back_s"] == 0.0
        assert out["coverage"] is not None and out["status"] == "clean"
        assert calls[:3] == ["target", "guard prohibit", "sysctl"]
        assert calls[-5:] == ["disconnect forget=True", "close", "target off", "guard off",
                              "sysctl back"]


@dataclass
class Own:
    note: str


class TinyUlp(Ulp[Own]):
    """A ULP of the test's own: every hook noted."""

    name = "tiny"
    opts = SimpleNamespace(to_json=lambda: {"tiny": True})
    guard_route = "unreachable"

    def __init__(self, calls: list[str], held: bool = False, left: tuple[list[str],
                 list[str]] = ([], [])) -> None:
        self.calls, self.held, self.left = calls, held, left

    port = 1  # type: ignore[assignment]

    def set_up(self) -> None:
        self.calls.append("set_up")

    def connect(self, events: list[dict[str, Any]]) -> None:
        self.calls.append("connect")

    def io_path(self) -> Path:
        return Path("/tiny")

    def sampler(self) -> Any:
        return contextlib.nullcontext(SimpleNamespace(samples=[]))

    def release(self, drv: Any) -> str:
        return "let go"

    def reconnect(self) -> tuple[str, dict[str, Any]]:
        return "back", {"s": 1.0}

    def settle(self, cm: Any, back: int | None) -> dict[str, Any]:
        self.calls.append("settle")
        return {"state": "up", "timed_out": False}

    def held_delete(self, tres: dict[str, Any], drv: Any, samples: list[Any], tail: Any,
                    marker: Any, out: Any) -> Any:
        if not self.held:
            return None
        drv.stop()
        rep = SimpleNamespace(recovered=True, to_json=lambda: {"held": 1},
                              findings=lambda dev: [f"{dev} held"])
        return rep, {"state": "held", "timed_out": False}

    def read_block(self, index: int, size: int) -> bytes:
        raise AssertionError("no acknowledged write in this replay")

    def fate(self, m: Measured) -> tuple[bool, Own]:
        return True, Own("mine")

    def detect_recover(self, m: Measured, dev: str) -> tuple[float | None, float | None]:
        return 1.0, 2.0

    def teardown(self, drv: Any) -> tuple[list[str], list[str]]:
        self.calls.append("teardown")
        return self.left


def tiny_run(monkeypatch: pytest.MonkeyPatch, recorded: list[dict], tmp_path: Path,
             ulp: TinyUlp, ordering: Ordering) -> UlpResult[Own]:
    res = recorded[0]["result"] | {"records": [], "connections": [
        {"phase": "before", "dev": "rxe0", "src": "a", "dst": "b", "first_ns": 0,
         "samples": 1}], "off_wire": []}
    replay_system(monkeypatch, res, ulp.calls)
    return run_ulp(ReplayShim(res["transition"]), SimpleNamespace(local_dev="rxe0"),
                   UlpScenario("standby", ordering, "tiny"), ulp,
                   StateFile(tmp_path / "state.json"))


def test_a_ulps_hooks_in_the_flows_order(monkeypatch: pytest.MonkeyPatch,
                                         recorded: list[dict], tmp_path: Path) -> None:
    calls: list[str] = []
    res = tiny_run(monkeypatch, recorded, tmp_path, TinyUlp(calls), Ordering.CLIENTS_FIRST)
    assert calls == ["set_up", "guard unreachable", "sysctl", "connect", "marker tiny "
                     "standby clients-first", "driver on /tiny", "start", "wait 60", "pause",
                     "resume /tiny", "settle", "answered after", "stop", "finish", "teardown",
                     "guard off", "sysctl back"]
    assert [e["event"] for e in res.client_events] == ["paused", "let go", "back"]
    d = res.to_json()
    assert d["note"] == "mine" and "own" not in d and d["options"] == {"tiny": True}
    assert (d["detect_ms"], d["recover_ms"], d["survived"]) == (1.0, 2.0, True)


def test_a_held_delete_replaces_settle(monkeypatch: pytest.MonkeyPatch,
                                       recorded: list[dict], tmp_path: Path) -> None:
    calls: list[str] = []
    res = tiny_run(monkeypatch, recorded, tmp_path, TinyUlp(calls, held=True),
                   Ordering.HCA_FIRST)
    assert "settle" not in calls and calls[calls.index("stop") - 1] == "wait 60"
    assert res.hang == {"held": 1} and res.settled["state"] == "held"
    # (judged as ulp_scenario.judge judges nvme_hang's report; no I/O in this replay)
    assert res.findings[0] == "rxe0 held"


def test_what_teardown_left_breaks_the_row(monkeypatch: pytest.MonkeyPatch,
                                           recorded: list[dict], tmp_path: Path) -> None:
    calls: list[str] = []
    res = tiny_run(monkeypatch, recorded, tmp_path,
                   TinyUlp(calls, left=(["mount /x"], ["umount -l /x"])), Ordering.HCA_FIRST)
    assert res.teardown_left == ["mount /x"] and res.status is RowStatus.BROKEN
    assert res.findings[-2:] == ["umount -l /x",
                                 "teardown left: mount /x (run `rxe-power cleanup`)"]


def test_teardown_runs_when_the_scenario_fails(monkeypatch: pytest.MonkeyPatch,
                                               recorded: list[dict], tmp_path: Path) -> None:
    calls: list[str] = []
    ulp = TinyUlp(calls)
    monkeypatch.setattr(ulp, "connect", lambda events: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tiny_run(monkeypatch, recorded, tmp_path, ulp, Ordering.HCA_FIRST)
    assert calls[-3:] == ["teardown", "guard off", "sysctl back"]
