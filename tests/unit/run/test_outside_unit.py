"""--client-cmd / --server-cmd: validation, placeholder expansion, the row's status."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.errors import SettingError
from harness.core.printer import RecordingPrinter
from harness.run.matrix import MatrixSpec
from harness.run.outside import OutsideSpec, expand
from harness.run.rows import RowStatus
from tests.helpers.outside_results import KEY, outside_result

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
    assert [s.texts for s in spec.scenarios()] == [("cmd:ib_send_bw",)] * 2
    assert MatrixSpec.from_json(spec.to_json()) == spec
    with pytest.raises(SettingError, match="--server-cmd without --client-cmd"):
        MatrixSpec(server_cmd=SERVER).validate()


def test_rows() -> None:
    (clean,) = outside_result().rows(KEY)
    assert clean.status is RowStatus.CLEAN and clean.counts["completed-ok"] == 300
    assert clean.scenario == KEY.id and clean.policy == "cmd:ib_send_bw"
    (bad,) = outside_result(posted_after_error=5, exit=1, output_tail="Failed").rows(KEY)
    assert bad.status is RowStatus.BAD and len(bad.findings) == 2
    (killed,) = outside_result(terminated_by_shim=True, exit=None).rows(KEY)
    assert killed.status is RowStatus.BAD and "terminated" in killed.findings[0]
    (broken,) = outside_result(traced=False, findings=["no trace log"]).rows(KEY)
    assert broken.status is RowStatus.BROKEN
    (unacc,) = outside_result(unmatched_completions=2).rows(KEY)
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
    (row,) = outside_result(stopped_by_harness=True, exit=None, exit_timeout_s=8.0).rows(KEY)
    assert row.status is RowStatus.BAD
    assert "still running 8 s after the transition: stopped" in row.findings
    spec = MatrixSpec(transitions=("standby",), client_cmd=CLIENT, server_cmd=SERVER,
                      client_exit_timeout_s=8.0).validate()
    assert MatrixSpec.from_json(spec.to_json()) == spec
    assert spec.outside().exit_timeout_s == 8.0


# --- the program's lane in the timeline picture ----------------------------------------------

def _recorded_client(scenario: str):
    import gzip

    from harness.workload.traced_ledger import build_ledger
    from harness.workload.tracelog import parse

    trace = Path(__file__).parents[2] / "data" / "trace" / scenario
    logs = [parse(gzip.decompress(p.read_bytes()), p.name)
            for p in sorted(trace.glob("*.bin.gz"))]
    (client,) = [lg for lg in logs if "198.18.0.2" in lg.cmdline]
    return build_ledger(client)


def test_program_lane_keeps_every_request_that_did_not_end_ok() -> None:
    """A traced program's requests become a client lane: all that did not end completed-ok
    are drawn, the completed-ok ones sampled evenly under MAX_LANE_POINTS, and the lane's
    counts are the whole ledger's (recorded: ib_send_bw under link-flap in the guest)."""
    from harness.run.outside_lane import program_lane, sampled
    from harness.run.scenario_result import ClientEnd

    led = _recorded_client("send_bw-link-flap")
    lane = program_lane("cmd:ib_send_bw", led, ClientEnd.COMPLETED, {"delivered-once": 1})
    assert lane.counts == dict(led.counts(False)) and not lane.unaccounted
    not_ok = [r for r in led.sends() if r.outcome.value != "completed-ok"]
    assert not_ok  # the flap left some (recorded)
    drawn = {e["seq"] for e in lane.ledger}
    assert {r.seq for r in not_ok} <= drawn
    shown, step = sampled(led.sends(), limit=len(not_ok) + 10)
    assert step > 1 and len(shown) <= len(not_ok) + 10 + 1
    small = program_lane("p", led, ClientEnd.COMPLETED, {}, exit_ns=None)
    assert all(e["attempts"][0]["posted_ns"] for e in small.ledger)
    assert program_lane("p", None, ClientEnd.DIED, {}).crash == "no trace log"


def test_an_outside_scenario_is_drawn_and_keeps_its_stored_row(tmp_path: Path) -> None:
    """A `--client-cmd` scenario's record: the report draws its timeline with the program's
    lane, and its table row is the one stored when it ran (not recomputed as a policy's)."""
    import json

    from harness import report
    from harness.run.outside_lane import program_lane
    from harness.run.scenario_result import ClientEnd

    data = Path(__file__).parents[2] / "data" / "matrix-standby-linkflap.jsonl"
    header, first = data.read_text().splitlines()[:2]
    rec = json.loads(first)
    rec["schema"] = 2
    led = _recorded_client("send_bw-link-flap")
    lane = program_lane("cmd:ib_send_bw", led, ClientEnd.COMPLETED, {})
    rec["scenario"] = {**rec["scenario"], "policies": ["cmd:ib_send_bw"]}
    rec["result"] = {"transition": rec["result"]["transition"], "clients": [lane.to_json()],
                     "outside": {"program": "cmd:ib_send_bw"}}
    stored = dict(rec["rows"][0], policy="cmd:ib_send_bw", status="bad",
                  findings=["exit status 17"])
    rec["rows"] = [stored]
    path = tmp_path / "r.jsonl"
    path.write_text(header + "\n" + json.dumps(rec) + "\n")
    lines: list[str] = []
    assert report.write_report(path, tmp_path / "out", out=RecordingPrinter(lines=lines)) == 0
    (pic,) = (tmp_path / "out" / "timelines").iterdir()
    assert pic.stat().st_size > 30_000
    table = (tmp_path / "out" / "table.txt").read_text()
    assert "cmd:ib_send" in table and "exit status 17" in table


def test_coverage_counts_the_servers_sends_too(data_dir: Path) -> None:
    """A ping-pong client waits on its server's message: at a moment when only the
    server's SEND is in flight (found in a recorded clean ibv_rc_pingpong run), a
    transition meets none of the client's own SENDs but meets the program's traffic. The
    row's coverage counts the traced server's SENDs too (a guest run of rping under
    link-flap read `missed` with the server's SEND in flight 898 ms across the flap)."""
    import gzip

    from harness.run.outside import _coverage
    from harness.workload.coverage import FaultWindow
    from harness.workload.traced_ledger import build_ledger
    from harness.workload.tracelog import parse

    leds = [build_ledger(parse(gzip.decompress(p.read_bytes())))
            for p in sorted((data_dir / "trace" / "pingpong-clean").glob("*.gz"))]
    client = next(x for x in leds if "198.18.0.2" in x.cmdline)
    server = next(x for x in leds if x is not client)
    busy = [(r.posted_ns, r.completed_ns) for r in client.sends()]
    t = next(s.posted_ns + 1 for s in server.sends()
             if s.completed_ns and not any(p <= s.posted_ns + 1 <= (c or p) for p, c in busy))
    res = SimpleNamespace(fault_window=lambda: FaultWindow(t, t + 1))
    alone = _coverage(client, None, res)
    both = _coverage(client, server, res)
    assert alone is not None and alone.crossed == 0 and alone.missed(require_after=False)
    assert both is not None and both.crossed == 1 and not both.missed(require_after=False)


# --- the typed result and its JSON (the results file's `result` of an outside scenario) ---

# the `outside` record's keys, in the order results files have always had them
OUTSIDE_KEYS = ["program", "argv", "server_argv", "pid", "exit", "output_tail", "server_exit",
                "held_at_delete", "terminated_by_shim", "stopped_by_harness", "traced",
                "log_closed", "counts", "receive_counts", "peer_counts", "unaccounted",
                "unmatched_completions", "posted_after_error", "devices_opened",
                "recovery_ms", "findings", "exit_timeout_s", "coverage", "wire_ready_ms",
                "server_ready"]


def test_an_outside_result_keeps_its_json_and_reads_back(data_dir: Path) -> None:
    """A recorded transition (link-flap in the guest) and a recorded ib_send_bw ledger as
    the program's lane: the JSON has the record's keys in their order, survives a trip
    through a results file, and reads back to the same result and row."""
    import json
    from dataclasses import replace

    from harness.run.outside_lane import program_lane
    from harness.run.outside_result import OutsideResult
    from harness.run.scenario_result import ClientEnd
    from harness.workload.coverage import Coverage
    from power.result import TransitionResult
    from tests.helpers.outside_results import KEY

    lines = (data_dir / "matrix-standby-linkflap.jsonl").read_text().splitlines()
    rec = next(json.loads(x) for x in lines[1:] if '"link-flap"' in x)
    t = TransitionResult.from_json(rec["result"]["transition"])
    led = _recorded_client("send_bw-link-flap")
    typed = outside_result(counts=dict(led.counts(False)), wire_ready_ms=12.5,
                           server_ready="TCP LISTEN on 198.18.0.2:4242",
                           coverage=Coverage(10, 2, 3, None, 5, 1, 0).to_json())
    typed = replace(typed, transition=t,
                    lane=program_lane("cmd:ib_send_bw", led, ClientEnd.COMPLETED, {}))
    d = typed.to_json()
    assert list(d) == ["transition", "clients", "outside"]
    assert list(d["outside"]) == OUTSIDE_KEYS
    assert d["transition"] == t.to_json() and d["clients"] == [typed.lane.to_json()]
    back = OutsideResult.from_json(json.loads(json.dumps(d)))
    assert back.to_json() == d
    assert back.rows(KEY) == typed.rows(KEY)
    older = {k: v for k, v in d["outside"].items()  # a record from before these fields
             if k not in ("exit_timeout_s", "coverage", "wire_ready_ms", "server_ready")}
    old = OutsideResult.from_json(d | {"outside": older}).program
    assert (old.exit_timeout_s, old.coverage, old.wire_ready_ms, old.server_ready) == (
        60.0, None, None, "")
    with pytest.raises(KeyError):
        OutsideResult.from_json(d | {"outside": {"program": "cmd:x"}})
