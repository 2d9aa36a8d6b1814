"""The lanes (harness/run/lanes): one parser of policy names, one table keyed by the
lane's kind, and each lane's result read back from a results file giving the rows it
gave when it ran."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import SettingError
from harness.core.printer import RecordingPrinter
from harness.core.settings import PeerPlacement
from harness.run.lanes import LANES, parse_policies, parse_policy
from harness.run.lanes.base import LaneKind, PolicyRef, Scenario
from harness.run.matrix import MatrixSpec, rows_of
from harness.run.records import ScenarioKey, ScenarioRecord
from harness.run.resultsfile import RecordKind, ResultsWriter, read_results
from harness.run.rows import Row
from harness.run.session import ResultsHeader
from power.result import TransitionRequest


@pytest.mark.parametrize("text, lane, name, options", [
    ("graceful", LaneKind.USERSPACE, "graceful", ""),
    ("tests.helpers.bad_clients:Leaky", LaneKind.USERSPACE,
     "tests.helpers.bad_clients:Leaky", ""),
    ("nvme-rdma", LaneKind.KERNEL, "nvme-rdma", ""),
    ("nvme-rdma:ctrl_loss_tmo=5:reconnect_delay=1", LaneKind.KERNEL, "nvme-rdma",
     "ctrl_loss_tmo=5:reconnect_delay=1"),
    ("nfs-rdma:soft", LaneKind.KERNEL, "nfs-rdma", "soft"),
    ("cmd:ib_send_bw", LaneKind.OUTSIDE, "ib_send_bw", ""),
    ("nvme-rdmax", LaneKind.USERSPACE, "nvme-rdmax", ""),  # no ULP of that name
])
def test_one_parser_names_the_lane(text: str, lane: LaneKind, name: str, options: str) -> None:
    assert parse_policy(text) == PolicyRef(lane, name, options, text)


def test_the_table_has_one_lane_per_kind() -> None:
    assert list(LANES) == [LaneKind.KERNEL, LaneKind.OUTSIDE, LaneKind.USERSPACE]
    assert all(cls.kind is kind for kind, cls in LANES.items())


@pytest.mark.parametrize("text, words", [
    ("lazy", "unknown client policy 'lazy'"),
    ("nvme-rdma:no-such-preset", "unknown nvme-rdma policy"),
    ("nfs-rdma:mount=squishy", "neither hard nor soft"),
    ("cmd:ib_send_bw", "give it with --client-cmd"),
])
def test_each_lane_validates_its_own_names(text: str, words: str) -> None:
    with pytest.raises(SettingError) as exc:
        MatrixSpec(policies=parse_policies((text,))).validate()
    assert words in str(exc.value)


def test_a_spec_holds_refs_and_its_json_holds_the_text() -> None:
    spec = MatrixSpec(("standby",), policies=parse_policies(
        ("graceful", "nvme-rdma:fast-fail", "naive")), together=True).validate()
    assert spec.to_json()["policies"] == ["graceful", "nvme-rdma:fast-fail", "naive"]
    assert MatrixSpec.from_json(spec.to_json()) == spec
    # in each ordering: the kernel client alone, then the userspace policies together
    assert [sc.texts for sc in spec.scenarios()] == [
        ("nvme-rdma:fast-fail",), ("graceful", "naive")] * 2
    with pytest.raises(TypeError, match="PolicyRefs"):
        MatrixSpec(policies=("graceful",)).validate()  # type: ignore[arg-type]


def _records(path: Path) -> list[ScenarioRecord]:
    return [ScenarioRecord.from_json(d) for d in read_results(path).of_kind(RecordKind.SCENARIO)]


def test_a_userspace_result_read_back_gives_the_rows_of_today(data_dir: Path) -> None:
    lane = LANES[LaneKind.USERSPACE]()
    raw = read_results(data_dir / "matrix-standby-linkflap.jsonl").of_kind(RecordKind.SCENARIO)
    assert raw
    for d, rec in zip(raw, _records(data_dir / "matrix-standby-linkflap.jsonl"), strict=True):
        assert rec.result is not None
        back = lane.result_from_json(d["result"], int(d.get("schema") or 1))
        assert back.rows(rec.scenario) == rows_of(rec.scenario, rec.result)
        assert back.to_json() == rec.result.to_json()


def test_a_kernel_result_read_back_gives_the_row_it_stored(data_dir: Path) -> None:
    lane = LANES[LaneKind.KERNEL]()
    raw = read_results(data_dir / "nvme-matrix.jsonl").of_kind(RecordKind.SCENARIO)
    assert raw
    for d in raw:
        back = lane.result_from_json(d["result"], 2)
        (row,) = back.rows(ScenarioKey.from_json(d["scenario"]))
        assert row == Row.from_json(d["rows"][0])


def test_an_outside_result_read_back_is_judged_by_its_lane() -> None:
    from tests.helpers.outside_results import KEY, outside_result

    d = outside_result(counts={"completed-ok": 300, "lost": 2},
                       peer_counts={"delivered-once": 300}).to_json()
    back = LANES[LaneKind.OUTSIDE]().result_from_json(json.loads(json.dumps(d)), 2)
    (row,) = back.rows(KEY)
    assert row.status.value == "bad" and row.findings == ["2 lost (posted, never completed)"]
    assert back.to_json() == d


# --- run_matrix hands each scenario to its lane (the table, not an if-chain) ---------------


class _Session:
    """A run session without a topology: the results file, and a rig of stand-ins that
    only the lanes' run functions (replaced below) would use."""

    def __init__(self, cfg: object, out_dir: Path, *, transitions: tuple[str, ...],
                 peer: PeerPlacement) -> None:
        self.transitions = transitions  # what RunSession turns into the fault models
        self.cfg = cfg
        self.results_path = out_dir / "results.jsonl"
        self.out_dir = out_dir
        self.topo = SimpleNamespace(local=SimpleNamespace(dev="rxe0"),
                                    peer=SimpleNamespace(dev="rxe1"))
        self.provenance = None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @contextmanager
    def rig(self, *, results: ResultsHeader) -> Iterator[SimpleNamespace]:
        with ResultsWriter(self.results_path, results.command, results.spec,
                           provenance=None) as writer:
            yield SimpleNamespace(results=writer, shim="shim", agent="agent",
                                  clients_dir=self.out_dir, log_dir=self.out_dir / "logs",
                                  services=None,
                                  sides=SimpleNamespace(restore=lambda cfg, out=None: []))


def test_run_matrix_runs_each_scenario_in_its_lane(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, data_dir: Path) -> None:
    """Kernel client and userspace policies in one matrix: each scenario goes to its
    lane's run and its rows come from that lane; the kernel lane's wedge (a teardown that
    left a controller) keeps that client's later scenario from running, and its row says
    why. What each lane ran with is recorded to be checked."""
    from dataclasses import replace

    from clients.kernel.nvme_scenario import CtrlRecord, NvmeResult
    from clients.kernel.ulp_result import UlpResult
    from harness.run import matrix
    from harness.run.lanes import kernel, userspace

    nvme = next(r["result"] for r in read_results(data_dir / "nvme-matrix.jsonl")
                .of_kind(RecordKind.SCENARIO) if r["scenario"]["id"].startswith("standby/hca"))
    user = next(r for r in _records(data_dir / "matrix-standby-linkflap.jsonl")
                if r.result is not None and len(r.result.clients) == 1)
    ran: list[tuple[str, object]] = []

    def run_nvme(shim: object, cfg: object, sc: Scenario, drv: object,
                 hold_ms: object, services: object) -> NvmeResult:
        ran.append(("kernel", sc.texts))
        return replace(UlpResult.from_json(nvme, CtrlRecord),
                       teardown_left=["controller nvme0 held"])

    def run_scenario(shim: object, agent: object, local: object, req: TransitionRequest,
                     policies: list[str], *rest: object) -> object:
        ran.append(("userspace", tuple(policies)))
        assert user.result is not None
        return user.result

    monkeypatch.setattr(matrix, "RunSession", _Session)
    monkeypatch.setattr(matrix, "describe", lambda p: [])
    monkeypatch.setitem(kernel.KINDS, "nvme-rdma", replace(kernel.KINDS["nvme-rdma"],
                                                           run=run_nvme))
    monkeypatch.setattr(userspace, "run_scenario", run_scenario)
    spec = MatrixSpec(("standby",), policies=parse_policies(
        ("nvme-rdma:fast-fail", "graceful")), count=20).validate()
    lines: list[str] = []
    code = matrix.run_matrix(spec, None, tmp_path, out=RecordingPrinter(lines=lines))  # type: ignore[arg-type]
    assert ran == [("kernel", ("nvme-rdma:fast-fail",)), ("userspace", ("graceful",)),
                   ("userspace", ("graceful",))]  # the second kernel scenario: not run
    recs = read_results(tmp_path / "results.jsonl").of_kind(RecordKind.SCENARIO)
    assert [r["scenario"]["policies"] for r in recs] == [["nvme-rdma:fast-fail"], ["graceful"]] * 2
    first, second = recs[0], recs[2]
    assert first["result"]["kernel_client"] == "nvme-rdma:fast-fail"
    assert first["rows"][0]["status"] == "clean" == nvme["status"]
    assert "not run: standby/clients-first/nvme-rdma:fast-fail/mixed left controller nvme0 " \
           "held" in second["error"] and second["rows"][0]["status"] == "broken"
    assert recs[1]["rows"] == [r.to_json() for r in rows_of(
        ScenarioKey.from_json(recs[1]["scenario"]), user.result)]
    assert code == 1  # a broken row
