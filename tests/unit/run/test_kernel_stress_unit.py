"""A stress cycle of kernel clients (harness/run/kernel_stress.py), judged on recorded
nvme-rdma results from a guest run: the scenario itself is real only in the guest, so
here its result and the kernel's `rdma res` are the recorded ones, and what is tested is
what the cycle makes of them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from harness.run import kernel_stress, stress_checks
from harness.run.lanes import parse_policies
from harness.run.lanes.kernel import KernelResult
from harness.run.resultsfile import RecordKind, read_results
from harness.run.stress import StressSpec
from harness.run.stress_checks import Usage
from harness.system.rdma_res import ResHolder

RES = {"rxe0": {"qp": 1, "cq": 1, "mr": 0, "pd": 1}, "rxe1": {"qp": 1, "cq": 1, "mr": 0,
                                                                "pd": 1}}


class Topo:
    class Side:
        def __init__(self, dev: str) -> None:
            self.dev = dev

    local, peer = Side("rxe0"), Side("rxe1")


def by_holder(res: dict[str, dict[str, int]]) -> dict[str, dict[ResHolder, dict[str, int]]]:
    """`rdma res` per holder as a kernel client's cycle has it: every object the kernel's
    (nvme-rdma's host on rxe0, nvmet-rdma's target on rxe1)."""
    return {"rxe0": {ResHolder(None, "nvme_rdma"): res["rxe0"]},
            "rxe1": {ResHolder(None, "nvmet_rdma"): res["rxe1"]}}


def stress_of(monkeypatch: pytest.MonkeyPatch, results: list[dict[str, Any]],
              res: list[dict[str, dict[str, int]]]) -> kernel_stress.KernelStress:
    it, res_it = iter(results), iter(res)
    now: list[dict[str, dict[str, int]]] = []

    def summary() -> dict[str, dict[str, int]]:
        now[:] = [next(res_it)]
        return now[0]

    # the recorded results, read back as the kernel lane's typed results
    monkeypatch.setattr(kernel_stress, "run_kernel", lambda shim, cfg, sc, *a:
                        KernelResult.from_json(sc.policies[0], next(it)))
    monkeypatch.setattr(stress_checks.res, "res_summary", summary)
    monkeypatch.setattr(kernel_stress, "res_by_holder", lambda: by_holder(now[0]))
    monkeypatch.setattr(stress_checks.Usage, "of", classmethod(
        lambda cls, pid: Usage(10, 50_000, 3)))
    spec = StressSpec(cycles=3, policies=parse_policies(("nvme-rdma:fast-fail",))).validate()
    return kernel_stress.KernelStress(spec, Topo(), None, None)  # type: ignore[arg-type]


@pytest.fixture
def hca_first(data_dir: Path) -> dict[str, Any]:
    rows = read_results(data_dir / "nvme-matrix.jsonl").of_kind(RecordKind.SCENARIO)
    return next(r["result"] for r in rows if r["scenario"]["id"].startswith("standby/hca"))


def test_clean_cycles_pass_and_count_every_io(monkeypatch: pytest.MonkeyPatch,
                                              hca_first: dict[str, Any]) -> None:
    ks = stress_of(monkeypatch, [hca_first] * 2, [RES, RES])
    for n in (1, 2):
        out, body = ks.cycle(n)
        assert out.ok and not body["failures"], body["failures"]
        (client,) = body["clients"]
        assert client["counts"] == hca_first["ledger"]["outcomes"]
        assert client["unaccounted"] == 0 and client["ended"] == "completed"
        assert "results" not in body  # kept only for failed cycles
    assert ks.series["rxe0.qp"] == [1, 1]


def test_a_lost_write_or_a_kernel_log_hit_fails_the_cycle(monkeypatch: pytest.MonkeyPatch,
                                                          hca_first: dict[str, Any]) -> None:
    lost = copy.deepcopy(hca_first)
    lost["status"] = "bad"
    lost["findings"] = ["1 acknowledged write(s) lost on the target"]
    ks = stress_of(monkeypatch, [hca_first, lost], [RES, RES])
    assert ks.cycle(1)[0].ok
    out, body = ks.cycle(2)
    assert not out.ok and "lost on the target" in body["failures"][0]
    assert body["results"][0]["status"] == "bad"  # a failed cycle keeps its results


def test_a_kernel_clients_leaked_qp_fails_the_cycle(monkeypatch: pytest.MonkeyPatch,
                                                    hca_first: dict[str, Any]) -> None:
    leaked = {**RES, "rxe0": {**RES["rxe0"], "qp": 3, "cq": 2}}
    ks = stress_of(monkeypatch, [hca_first] * 2, [RES, leaked])
    assert ks.cycle(1)[0].ok
    out, body = ks.cycle(2)
    assert not out.ok
    assert body["failures"] == ["rxe0 rdma res differs from cycle 1: qp 1 -> 3, cq 1 -> 2: "
                                "rxe0: +2 qp, +1 cq held by kernel (nvme_rdma) (qp 3, cq 2, "
                                "mr 0, pd 1 now)"]
    assert body["rdma_res_by_part"]["rxe0"] == {"kernel (nvme_rdma)": leaked["rxe0"]}


def test_a_kernel_client_that_cannot_be_removed_stops_its_later_runs(
        monkeypatch: pytest.MonkeyPatch, hca_first: dict[str, Any]) -> None:
    """Measured: a controller whose delete the kernel held (link-flap, the kernel's
    defaults) made every later nvme connect wait out its 60 s bound. Its scenario keeps its
    ledger and is broken; later scenarios of that client are not run, and say why."""
    wedged = {**copy.deepcopy(hca_first), "status": "broken",
              "teardown_left": ["delete of nvme controller nvme0 did not finish"]}
    ks = stress_of(monkeypatch, [wedged], [RES, RES])
    out, body = ks.cycle(1)
    assert not out.ok and body["clients"][0]["counts"] == hca_first["ledger"]["outcomes"]
    out, body = ks.cycle(2)  # run_kernel is not called again (the iterator is empty)
    assert not out.ok and body["clients"] == []
    assert body["failures"][0].startswith("nvme-rdma:fast-fail: not run: cycle 1 left "
                                          "delete of nvme controller nvme0")
    assert "rxe-power cleanup" in body["failures"][0]


def test_the_wedge_blocks_only_that_kernel_client() -> None:
    from harness.run.lanes import parse_policy
    from harness.run.lanes.kernel import KernelWedge

    w = KernelWedge()
    nvme = parse_policy("nvme-rdma")
    w.note("link-flap/hca-first/nvme-rdma/mixed", nvme, [])
    assert not w.blocks(parse_policy("nvme-rdma:fast-fail"))
    w.note("link-flap/hca-first/nvme-rdma/mixed", nvme, ["x"])
    assert w.blocks(parse_policy("nvme-rdma:fast-fail")).startswith(
        "not run: link-flap/hca-first/nvme-rdma/mixed left x")
    assert not w.blocks(parse_policy("nfs-rdma:hard"))
