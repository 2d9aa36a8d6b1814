"""Unmodified verbs programs under the verbs tracer (LD_PRELOAD), rxe0 <-> rxe1, with no
transition: the ledger built from their logs accounts for every request they posted.

Both ends are traced (server on rxe1, client on rxe0 to the peer's address), so the
client's SENDs are also matched with the server's receive completions. Clean runs must
come out all completed-ok and delivered once. The same programs under transitions:
tests/rxe/test_tracer_transitions.py (link-flap, removal with force, the examples) and
tests/rxe/test_tracer_standby.py (standby with the removal a real HCA does).
"""

from __future__ import annotations

import subprocess

import pytest

from clients.tracer.traced import example_program, make_trace_dir, traced_env
from harness.core.printer import STDOUT
from harness.workload.ledger import Outcome, PeerView
from harness.workload.traced_peer import match_peer
from harness.workload.tracelog import log_paths, read_log
from tests.rxe.test_outside_clients import _free_port
from tests.rxe.tracing import (
    BW_ITERS,
    PINGPONG_ITERS,
    RUN_TIMEOUT_S,
    bw_argv,
    check_accounted,
    ledgers,
    pingpong_argv,
    traced,
    wait_exit,
)

CLEAN = ["ibv_rc_pingpong", "ib_send_bw", "ib_write_bw"]


@pytest.mark.parametrize("program", CLEAN)
def test_clean_run_every_request_completed(rxe_topology, results_dir, tmp_path, program,
                                           request) -> None:
    """A clean run: both programs exit 0; every request the client posted ended
    completed-ok, every completion found its request (perftest posts every WR of a QP
    with the same wr_id and signals one in 100: matched per QP in order), and each SEND
    the client posted was received once by the traced server."""
    port = _free_port()
    loc, peer = rxe_topology.local, rxe_topology.peer
    if program == "ibv_rc_pingpong":
        srv_argv, cli_argv = pingpong_argv(peer, port), [*pingpong_argv(loc, port), peer.addr]
    else:
        n = ["-n", str(BW_ITERS)]
        srv_argv, cli_argv = bw_argv(program, peer, port, *n), [*bw_argv(program, loc, port, *n),
                                                                peer.addr]
    tdir = tmp_path / "trace"
    with traced(srv_argv, cli_argv, port, tdir, results_dir / "logs",
                request.node.name) as (srv, cli):
        assert wait_exit(cli, "client") == 0
        assert wait_exit(srv, "server") == 0
    leds = ledgers(tdir, results_dir / "trace" / request.node.name)
    client, server = leds[cli.pid], leds[srv.pid]
    for led in (client, server):
        assert led.closed and led.devices[:1] == [loc.dev if led is client else peer.dev]
        check_accounted(led)
        assert not led.failed_calls, led.failed_calls
    sends = client.sends()
    assert sends and {r.outcome for r in sends} == {Outcome.COMPLETED_OK}, client.counts()
    expect = {"ibv_rc_pingpong": PINGPONG_ITERS, "ib_send_bw": BW_ITERS,
              "ib_write_bw": BW_ITERS}[program]
    assert len(sends) == expect, (len(sends), expect)
    matches = match_peer(client, server)
    assert len(matches) == 1, matches
    m = matches[0]
    if program == "ib_write_bw":  # RDMA WRITE lands without the peer's CPU
        assert m.sent == 0 and {r.peer for r in sends} == {PeerView.NOT_VISIBLE}
    else:
        assert (m.sent, m.delivered_once, m.missing, m.duplicated) == (expect, expect, 0, 0)
        assert m.length_mismatches == 0 and m.delivered_despite_error == 0
        assert {r.peer for r in sends} == {PeerView.DELIVERED_ONCE}


# ib_send_bw -D: sending for this long, so the flap (its first completion, then 500 ms
# without carrier) meets its traffic whatever the machine's speed (with -n 5000 it had
# finished all 5000 before the flap came in one guest run: the row was `missed`)
MATRIX_DURATION_S = 8
# After the flap ib_send_bw sometimes never ends: a SEND rxe lost never completes and it
# waits for it (CI, 26 Nov 2026: the harness's default 60 s bound ran out, and the test
# took 78 s): past this bound it is stopped, and the row is bad with those SENDs lost.
MATRIX_CLIENT_EXIT_TIMEOUT_S = 15.0


def test_matrix_row_for_outside_program(rxe_config, rxe_topology, tmp_path) -> None:
    """`matrix --client-cmd/--server-cmd` with ib_send_bw through link-flap (hca-first):
    one row, every posted SEND accounted for by the client's ledger and by the traced
    server, none delivered twice, and a status that is what was measured. Which known
    behaviour happened is decided from the two kept trace logs against the shim's step
    times (tests/rxe/tracing.py flap_behaviour) and printed: `errored` (a SEND failed
    with LOC_QP_OP_ERR, ib_send_bw exits 17: bad, its exit status named), `retried` (no
    error, RC carried the SENDs in flight across the flap: clean exactly when ib_send_bw
    exited 0 with every SEND completed), `stalled` (no error, nothing completed after
    the flap: it waited for a SEND rxe never completed and was stopped, bad); anything else
    fails."""
    from harness.run.matrix import MatrixSpec, run_matrix
    from harness.run.outside_result import OutsideResult
    from harness.run.records import ScenarioKey
    from harness.run.resultsfile import RecordKind, read_results
    from power.plan import Ordering
    from tests.rxe.test_tracer_transitions import traced_pair
    from tests.rxe.tracing import check_flap_row, flap_behaviour

    common = f"-F -s 4096 -t 16 -D {MATRIX_DURATION_S} -p {{port}}"
    spec = MatrixSpec(transitions=("link-flap",), orderings=(Ordering.HCA_FIRST,),
                      client_cmd=f"ib_send_bw -d {{dev}} -x {{gid}} {common} {{peer_addr}}",
                      server_cmd=f"ib_send_bw -d {{peer_dev}} -x {{peer_gid}} {common}",
                      client_exit_timeout_s=MATRIX_CLIENT_EXIT_TIMEOUT_S).validate()
    code = run_matrix(spec, rxe_config, tmp_path / "matrix", out=STDOUT)
    results = read_results(tmp_path / "matrix" / "results.jsonl")
    (rec,) = results.of_kind(RecordKind.SCENARIO)
    rows = rec["rows"]
    print(rows)
    assert code == 0 and len(rows) == 1 and rows[0]["policy"] == "cmd:ib_send_bw", rows
    row, ok = rows[0], Outcome.COMPLETED_OK.value
    counts, peer = row["counts"], row["peer"]
    posted = sum(counts.values())
    assert posted > 0 and counts.get(ok, 0) > 0, counts
    assert peer.get("duplicated", 0) == 0 and peer.get("corrupted", 0) == 0, peer
    # every posted SEND is on the server's side of the ledger: received once or missing
    assert peer.get("delivered-once", 0) + peer.get("missing", 0) == posted, (peer, counts)
    assert peer.get("delivered-once", 0) >= counts[ok]  # a completed SEND was received
    out = rec["result"]["outside"]
    stored = OutsideResult.from_json(rec["result"], int(rec.get("schema") or 2))  # typed
    (typed,) = stored.rows(ScenarioKey.from_json(rec["scenario"]))  # the row judged again
    assert typed.to_json()["status"] == row["status"]
    client, server = traced_pair(tmp_path / "matrix" / "logs" / "001" / "trace", out["pid"])
    behaviour = flap_behaviour(client, server, rec["result"]["transition"])
    print(f"ib_send_bw -D {MATRIX_DURATION_S} under link-flap (matrix): behaviour "
          f"{behaviour.value}; exit {out['exit']}, stopped {out['stopped_by_harness']}")
    check_flap_row(behaviour, client, server, out, typed)
    if row["status"] == "clean":
        assert counts == {ok: posted} and peer["delivered-once"] == posted, row


WR_API_COUNT = 200
WR_API_RECV_DEPTH = 16  # LB_DEPTH in examples/loopback.h: receives kept posted


def test_extended_verbs_followed(rxe_topology, results_dir, tmp_path, request) -> None:
    """examples/wr_api_client.c posts only with the ibv_wr_* builders on a QP from
    ibv_create_qp_ex and polls only with ibv_start_poll/next_poll on CQs from
    ibv_create_cq_ex: the tracer follows both (QP and CQ records say so), and the ledger
    has every SEND completed-ok, built with the WR API, and received once, and every
    receive the program posted completed-ok (those left posted at its exit: lost, by the
    program's exit).

    Until rdma-core 55 the rxe provider's ibv_end_poll() after an ENOENT from
    ibv_next_poll() overran the CQ's consumer index (this test was a strict xfail with the
    ENOMEM that followed, blamed on the tracer): the example now polls only what is known
    to be there, and test_rxe_behaviour pins the provider's fault untraced."""
    from harness.workload.tracelog import CQF_EX_TRACED, RecType

    tdir = make_trace_dir(tmp_path / "trace")
    loc, peer = rxe_topology.local, rxe_topology.peer
    argv = [str(example_program("wr_api_client")), loc.dev, str(loc.gid_index), peer.dev,
            str(peer.gid_index), str(WR_API_COUNT)]
    proc = subprocess.run(argv, env=traced_env(tdir), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = log_paths(tdir)
    log = read_log(path)
    led = ledgers(tdir, results_dir / "trace" / request.node.name)[log.pid]
    check_accounted(led)
    sends = led.sends()
    assert len(sends) == WR_API_COUNT and all(r.wr_api for r in sends)
    assert {r.outcome for r in sends} == {Outcome.COMPLETED_OK}
    assert all(q.wr_api_traced and q.created_ex for q in led.qps)
    cqs = [r for r in log.records if r.type is RecType.CQ_CREATE]
    assert len(cqs) == 2 and all(r.flags & CQF_EX_TRACED for r in cqs)
    assert f"{WR_API_COUNT} sends completed, {WR_API_COUNT} received" in proc.stdout
    sending = [m for m in match_peer(led, led) if m.sent]
    assert [(m.delivered_once, m.missing, m.duplicated) for m in sending] == [
        (WR_API_COUNT, 0, 0)], sending
    # the receive side: WR_API_COUNT completed; the LB_DEPTH reposted after the last one
    # were still posted when the program exited
    recvs = led.counts(True)
    assert recvs.get(Outcome.COMPLETED_OK.value) == WR_API_COUNT, recvs
    assert recvs.get(Outcome.LOST.value, 0) == WR_API_RECV_DEPTH, recvs
    assert set(recvs) <= {Outcome.COMPLETED_OK.value, Outcome.LOST.value}, recvs
