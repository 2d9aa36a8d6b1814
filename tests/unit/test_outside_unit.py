"""--client-cmd / --server-cmd: validation, placeholder expansion, the row's status."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.core.errors import SettingError
from harness.run.matrix import MatrixSpec
from harness.run.outside import OutsideSpec, expand, outside_rows
from harness.run.rows import RowStatus

CLIENT = "ib_send_bw -d {dev} -x {gid} -F -s 4096 -p {port} {peer_addr}"
SERVER = "ib_send_bw -d {peer_dev} -x {peer_gid} -F -s 4096 -p {port}"
TOPO = SimpleNamespace(local=SimpleNamespace(dev="rxe0", gid_index=1, addr="198.18.0.1"),
                       peer=SimpleNamespace(dev="rxe1", gid_index=1, addr="198.18.0.2"))


def test_expand_placeholders() -> None:
    assert expand(CLIENT, TOPO, 4242) == ["ib_send_bw", "-d", "rxe0", "-x", "1", "-F", "-s",
                                          "4096", "-p", "4242", "198.18.0.2"]
    assert expand("prog '{{literal}}' {addr}", TOPO, 1) == ["prog", "{literal}", "198.18.0.1"]


@pytest.mark.parametrize("client, server, words", [
    ("ib_send_bw {nope}", "", "unknown placeholder"),
    ("no-such-program-xyz", "", "not found"),
    ("", "", "empty"),
    ("ib_send_bw 'unclosed", "", "quote"),
])
def test_bad_commands_refused(client: str, server: str, words: str) -> None:
    with pytest.raises(SettingError, match=words):
        OutsideSpec(client, server).validate()


def test_matrix_spec_with_a_program() -> None:
    spec = MatrixSpec(transitions=("standby",), client_cmd=CLIENT, server_cmd=SERVER).validate()
    assert [s.policies for s in spec.scenarios()] == [("cmd:ib_send_bw",)] * 2
    assert MatrixSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SettingError, match="--server-cmd without --client-cmd"):
        MatrixSpec(server_cmd=SERVER).validate()


def _result(**over: object) -> dict:
    o = {"program": "cmd:ib_send_bw", "counts": {"completed-ok": 300}, "peer_counts":
         {"delivered-once": 300, "missing": 0, "duplicated": 0}, "recovery_ms": None,
         "traced": True, "unaccounted": 0, "unmatched_completions": 0,
         "terminated_by_shim": False, "held_at_delete": False, "stopped_by_harness": False,
         "exit": 0, "output_tail": "", "posted_after_error": 0, "findings": []}
    o.update(over)
    return {"transition": {"verdict": "completed", "veto": None}, "outside": o}


SC = {"id": "standby/clients-first/cmd:ib_send_bw/mixed", "transition": "standby",
      "ordering": "clients-first", "mix": "mixed"}


def test_rows() -> None:
    (clean,) = outside_rows(SC, _result())
    assert clean.status is RowStatus.CLEAN and clean.counts["completed-ok"] == 300
    (bad,) = outside_rows(SC, _result(posted_after_error=5, exit=1, output_tail="Failed"))
    assert bad.status is RowStatus.BAD and len(bad.findings) == 2
    (killed,) = outside_rows(SC, _result(terminated_by_shim=True, exit=None))
    assert killed.status is RowStatus.BAD and "terminated" in killed.findings[0]
    (broken,) = outside_rows(SC, _result(traced=False, findings=["no trace log"]))
    assert broken.status is RowStatus.BROKEN
    (unacc,) = outside_rows(SC, _result(unmatched_completions=2))
    assert unacc.status is RowStatus.BROKEN


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e9])
def test_client_exit_timeout_is_bounded(bad: float) -> None:
    """--client-exit-timeout-s: a finite number of seconds, > 0, at most MAX_WAIT_S."""
    with pytest.raises(SettingError, match="--client-exit-timeout-s"):
        OutsideSpec(CLIENT, SERVER, bad).validate()
    with pytest.raises(SettingError, match="--client-exit-timeout-s"):
        MatrixSpec(transitions=("standby",), client_cmd=CLIENT, server_cmd=SERVER,
                   client_exit_timeout_s=bad).validate()


def test_a_stopped_program_row_names_its_own_bound() -> None:
    (row,) = outside_rows(SC, _result(stopped_by_harness=True, exit=None, exit_timeout_s=8.0))
    assert row.status is RowStatus.BAD
    assert "still running 8 s after the transition: stopped" in row.findings
    spec = MatrixSpec(transitions=("standby",), client_cmd=CLIENT, server_cmd=SERVER,
                      client_exit_timeout_s=8.0).validate()
    assert MatrixSpec.from_json(spec.to_json()) == spec
    assert spec.outside().exit_timeout_s == 8.0
