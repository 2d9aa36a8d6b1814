"""ibv_rc_pingpong, ib_send_bw and ib_write_bw under standby (hca-first) with the removal a
real HCA does (our disassociate rdma_rxe: the delete takes the program's context away,
it gets IBV_EVENT_DEVICE_FATAL and EIO, nobody has to be killed), both ends traced,
through the matrix's own path for `--client-cmd`.

Asserted: the delete was not blocked and the shim terminated nobody, and every request
of both programs has exactly one outcome. What each program did about it (exit status,
errors, whether it hung polling a CQ of a device that is gone) is measured and printed
as its row; it is what the user asked, not something the test decides.
"""

from __future__ import annotations

import pytest

from power.result import Verdict
from tests.rxe.test_tracer_transitions import PROGRAMS, check_program_accounted, run_program

pytestmark = pytest.mark.removal("disassociate")


# ib_send_bw left out for the suite's time (see LINK_FLAP_ORDER)
@pytest.mark.parametrize("program", [p for p in PROGRAMS if p != "ib_send_bw"])
def test_program_under_standby_disassociated(power_shim, rxe_topology, results_dir,
                                             program, request) -> None:
    result, row = run_program(power_shim, rxe_topology, program, "standby",
                              results_dir / "logs" / request.node.name)
    tr, out = result["transition"], result["outside"]
    assert tr["verdict"] == Verdict.COMPLETED.value, tr
    assert not out["terminated_by_shim"], out
    assert not (tr.get("veto") or {}).get("terminated"), tr["veto"]
    check_program_accounted(out, program)
    assert row.status.value != "broken", row.findings
