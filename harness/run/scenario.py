"""The controller side of client workers: start them, run a transition under them, account.

    with ClientWorker(...) as w: ...      one worker process (clients.userspace.worker)
    run_scenario(shim, agent, local, request, policies, spec, ...) -> ScenarioResult

A scenario starts one worker per client policy against the local HCA, waits until
each has completed part of its workload, runs the transition through the shim,
then asks each worker to finish (every request gets an outcome, or is LOST at the
deadline), collects the peer agent's own record of every arrival on every QP
generation, probes each QP generation the client left behind with a SEND from the
peer (how long the peer takes to notice its partner is gone: RETRY_EXC_ERR, or a
flush when it was told by a goodbye), matches it to each ledger (delivered once /
duplicated / corrupted / missing) and derives the clean-shutdown measurements. A worker that dies
(killed, segfault, exception) becomes a failed client result naming the client,
the transition and the requests its journal shows in flight.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.device import DeviceInfo
from harness.core.errors import BoundExceeded, ProtocolError, RxePowerError
from harness.run.client_worker import WORKER_START_TIMEOUT_S, ClientWorker, WorkerDied
from harness.run.scenario_result import ClientEnd, ClientResult, ScenarioResult
from harness.workload.coverage import Coverage, FaultWindow
from harness.workload.entries import LedgerEntry
from harness.workload.inflight import spans
from harness.workload.journal import restore_dropped
from harness.workload.ledger import Ledger, Op, Outcome, WorkloadSpec, apply_peer_view
from harness.workload.spec import Arrivals, WorkloadEnd

if TYPE_CHECKING:  # types only: the controller objects a scenario is run with
    from harness.peer.controller import PeerAgent
    from harness.topology.config import Endpoint
    from power.result import TransitionRequest
    from power.shim import Shim

PROGRESS_TIMEOUT_S = 60.0
# on top of the workload's own duration at its rate: then what is still posted is lost.
# Measured in the default run (TCG guest, four workers side by side, hibernate): the last
# completion came at most 5.0 s after the first post of a 2 s workload; a lost request
# (never completed, e.g. naive's in flight at a disassociate) costs its scenario this long
FINISH_MARGIN_S = 15.0
# an unpaced workload (rate 0: flat out) has no duration of its own: this is its bound
FLAT_OUT_FINISH_TIMEOUT_S = 30.0
PROGRESS_POLL_S = 0.05
# A RESUMED workload is running once each client has an outcome for this many requests
# (at 60/s: ~0.2 s): its device is open, its QPs carry traffic, and the transition comes
WARMUP_REQUESTS = 12
# How long the peer's probe SEND to a left-behind QP may take. Measured on rxe 6.1: to a
# QP told by a goodbye it is flushed at once; to a vanished QP no completion came within
# 30 s (rxe's requester kept retransmitting), so a short bound reports NO_COMPLETION. A
# real HCA with the agent's QP settings (QpParams: timeout 14, ~67 ms a try; retry_cnt 7)
# gives up after 8 tries, ~0.54 s, with RETRY_EXC_ERR: 1 s leaves it room to be seen.
PEER_PROBE_TIMEOUT_S = 1.0


def wait_progress(workers: list[ClientWorker], fraction: float = 0.0,
                  at_least: int = 0) -> None:
    """Until every live worker has an outcome for `fraction` of its requests and for at
    least `at_least` of them (or is done), bounded."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    pending = list(workers)
    while pending:
        w = pending[0]
        try:
            rep = w.request("progress", PROGRESS_TIMEOUT_S)
        except WorkerDied:
            pending.pop(0)
            continue
        have = sum(v for k, v in rep["counts"].items() if k != "unaccounted")
        if (have >= fraction * w.spec.count and have >= at_least) or rep["done"]:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise BoundExceeded("waiting for client progress", "PROGRESS_TIMEOUT_S",
                                PROGRESS_TIMEOUT_S, f"client {w.name}: {rep}")
        time.sleep(PROGRESS_POLL_S)  # polling interval of a bounded wait


def run_on_until(t_ns: int) -> None:
    """The workload runs on until CLOCK_MONOTONIC reaches `t_ns` (a RESUMED workload's
    settle: this is its duration, not a wait for a condition)."""
    while (left := (t_ns - time.monotonic_ns()) / 1e9) > 0:
        time.sleep(min(left, PROGRESS_POLL_S))


def stop_arrivals(workers: list[ClientWorker]) -> dict[str, dict[str, Any]]:
    """Tell every live worker of a RESUMED workload that the application stops handing
    requests over; what each had issued by then, by name (a dead worker: absent)."""
    out = {}
    for w in workers:
        if w.spec.end is not WorkloadEnd.RESUMED:
            continue
        with contextlib.suppress(WorkerDied):
            out[w.name] = w.request("stop", WORKER_START_TIMEOUT_S)
    return out


def finish(worker: ClientWorker, transition: str,
           terminated: dict[int, str] | None = None, stopped: bool = False,
           ) -> tuple[ClientResult, dict[str, Any] | None]:
    """Have one worker finish its workload; a dead worker becomes a crash result.
    `terminated`: pids the shim terminated under --on-veto force (it reaped them, so
    their exit status is gone), with how. `stopped`: its arrivals were stopped (every
    request it will ever have is issued: only FINISH_MARGIN_S is left for them)."""
    res = ClientResult(worker.name, worker.policy)
    spec = worker.spec
    finish_s = (FINISH_MARGIN_S if stopped else
                spec.count / spec.rate_per_s + FINISH_MARGIN_S if spec.rate_per_s
                else FLAT_OUT_FINISH_TIMEOUT_S)
    try:
        rep = worker.request("finish", finish_s + 10, timeout_s=finish_s)
        rep["ledger"] = worker.fetch_ledger(int(rep["requests"]))
        text = worker.journal_text()  # what it issued, written ahead of each post
        if text is not None:
            restore_dropped(rep["ledger"], text, spec)
    except (WorkerDied, ProtocolError, BoundExceeded, OSError) as exc:
        worker.proc.poll()
        how = (terminated or {}).get(worker.pid)
        if how:
            res.ended = ClientEnd.TERMINATED_BY_SHIM
            why = f"terminated by the shim ({how}) under --on-veto force: it held the device"
        elif worker.proc.returncode is not None:
            res.ended, why = ClientEnd.DIED, worker.crash_text()
        else:
            res.ended, why = ClientEnd.NO_REPLY, str(exc)
        res.crash = f"client {worker.name} ({worker.policy}) during {transition}: {why}"
        led = worker.journal_ledger()
        res.from_journal = led is not None
        if led is not None:  # its books up to the kill
            res.counts, res.unaccounted = led.counts(), led.unaccounted()
            res.ledger = led.to_json()
            res.in_flight_at_crash = sorted(i for i, e in led.entries.items()
                                            if e.outcome is Outcome.KILLED_IN_FLIGHT)
        return res, None
    worker.rounds_done += 1
    return res, rep


def left_behind(rep: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The agent QPs of QP generations the client left behind (not its current one)."""
    if rep is None:
        return []
    return [aq for aq in rep.get("agent_qps", []) if aq["generation"] < rep["generations"]]


def account(res: ClientResult, rep: dict[str, Any], agent: PeerAgent,
            probe: bool = True) -> ClientResult:
    """Every request's outcome, with the peer's view, atomics and clean-shutdown figures.
    Run once every worker has finished: the peer's probes must not meet live QPs. The
    agent's QPs of the round are destroyed afterwards (the client's current QP is left
    idle; a next round starts on a fresh generation)."""
    ledger = rep["ledger"] if isinstance(rep["ledger"], Ledger) \
        else Ledger.from_json(rep["ledger"])
    arrivals: list[dict[str, Any]] = []
    peer_events: list[dict[str, Any]] = []
    peer_adds = 0
    probes = []
    for aq in rep["agent_qps"]:
        got = agent.arrivals(aq["qp_id"], 0, timeout_s=0)
        if probe and aq["generation"] < rep["generations"]:  # a QP the client left behind
            pr = agent.request("probe", PEER_PROBE_TIMEOUT_S + 10, qp_id=aq["qp_id"],
                               timeout_s=PEER_PROBE_TIMEOUT_S)
            probes.append({"generation": aq["generation"], **pr})
        arrivals += [{**a, "agent_generation": aq["generation"]} for a in got["arrivals"]]
        peer_events += [{**ev, "generation": aq["generation"]} for ev in got["events"]]
        peer_adds += int(agent.request("read_u64", 30.0, qp_id=aq["qp_id"],
                                       offset=aq["counter_offset"])["value"])
        with contextlib.suppress(RxePowerError):
            agent.request("destroy_qp", 30.0, qp_id=aq["qp_id"])
    strays = apply_peer_view(ledger, arrivals)  # received by the peer, not in the ledger
    res.counts = ledger.counts() | ({"unaccounted": len(ledger.unaccounted()) + len(strays)}
                                    if strays else {})
    res.peer_counts = ledger.peer_counts()
    res.unaccounted = ledger.unaccounted() + strays
    res.metrics = rep["metrics"]
    res.ledger = ledger.to_json()
    local_adds = sum(1 for e in ledger.entries.values() if e.op is Op.FETCH_ADD
                     for a in e.attempts if a.status == "SUCCESS")
    res.atomics = {"peer_counter": peer_adds, "local_successes": local_adds,
                   "match": peer_adds == local_adds}
    res.clean_shutdown = clean_shutdown(res.metrics, arrivals, peer_events, ledger)
    res.clean_shutdown["peer_probe"] = probes
    res.events = rep.get("events", [])
    res.peer_events = sorted(
        [{"t_ns": int(a["t"] * 1e9), "what": a["opcode"] if a["ok"] else
          f"{a['opcode']} bad: {a['reason']}", "seq": a["seq"],
          "generation": a["agent_generation"]} for a in arrivals]
        + [{"t_ns": int(ev["t"] * 1e9), "what": ev.get("status", ev.get("kind", "?")),
            "generation": ev["generation"]} for ev in peer_events if "t" in ev],
        key=lambda e: e["t_ns"])
    return res


def clean_shutdown(m: dict[str, Any], arrivals: list[dict[str, Any]],
                   peer_events: list[dict[str, Any]], ledger: Ledger) -> dict[str, Any]:
    goodbyes = [a for a in arrivals if a.get("opcode") == "GOODBYE"]
    flushed = [ev for ev in peer_events if ev.get("status") == "WR_FLUSH_ERR"]
    other = sorted({ev.get("status") for ev in peer_events if ev.get("status") != "WR_FLUSH_ERR"},
                   key=str)

    def ms(a: int | None, b: int | None) -> float | None:
        return round((b - a) / 1e6, 3) if a is not None and b is not None else None

    return {
        "peer_saw": ("orderly disconnect (goodbye)" if goodbyes else
                     f"errors {other}" if other else "nothing"),
        "peer_receives_flushed": len(flushed),
        "suspend_to_quiesced_ms": ms(m.get("suspend_ns"), m.get("quiesced_ns")),
        "resume_to_first_ok_ms": ms(m.get("resume_ns"), m.get("first_ok_after_resume_ns")),
        "quiesce": m.get("quiesce", ""),
        "replayed": sum(1 for e in ledger.entries.values() if e.outcome is Outcome.REPLAYED_OK),
        "error_completions": sum(1 for e in ledger.entries.values()
                                 if e.outcome in (Outcome.COMPLETED_ERROR, Outcome.FLUSHED)),
        "reconnects": m.get("reconnects", 0),
    }


def spawn_workers(policies: list[str], spec: WorkloadSpec, local: Endpoint, agent: PeerAgent,
                  clients_dir: Path, log_dir: Path,
                  names: list[str] | None = None) -> list[ClientWorker]:
    """One started worker per policy (spawned first: they start up in parallel). A worker
    that fails to start is closed, with the others, before the error propagates."""
    device = DeviceInfo.from_endpoint(local)
    workers: list[ClientWorker] = []
    try:
        for i, policy in enumerate(policies):
            workers.append(ClientWorker(names[i] if names else safe_name(policy), policy, spec,
                                        log_dir))
        for w in workers:
            w.start(device, agent.sock_path, clients_dir)
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


def safe_name(policy: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in policy)


def run_round(shim: Shim, agent: PeerAgent, workers: list[ClientWorker],
              request: TransitionRequest,
              progress_fraction: float = 0.3, probe: bool = True) -> ScenarioResult:
    """Go; run the transition once the workload is running (a COUNT workload: each worker
    has an outcome for `progress_fraction` of its requests; a RESUMED one: for
    WARMUP_REQUESTS); a RESUMED workload runs on for its settle_ms after the transition's
    last step and is then stopped; finish, account, and measure how the workload met the
    transition (ClientResult.coverage; `missed` says why a round is no measurement)."""
    go_ns = time.monotonic_ns()
    for w in workers:
        w.request("go", WORKER_START_TIMEOUT_S)
    resumed = [w for w in workers if w.spec.end is WorkloadEnd.RESUMED]
    wait_progress(workers, 0.0 if resumed else progress_fraction,
                  WARMUP_REQUESTS if resumed else 0)
    tres = shim.run(request)
    stops: dict[str, dict[str, Any]] = {}
    if resumed:
        run_on_until(time.monotonic_ns() + max(w.spec.settle_ms for w in resumed) * 1_000_000)
        stops = stop_arrivals(workers)
    terminated = {t["pid"]: t["how"] for t in (tres.veto.terminated if tres.veto else [])}
    finished = [finish(w, request.name, terminated, w.name in stops) for w in workers]
    if probe:  # every client's probes at once: each waits out its bound in parallel
        for _, rep in finished:
            for aq in left_behind(rep):
                agent.request("probe_start", 30.0, qp_id=aq["qp_id"])
    results = [account(res, rep, agent, probe) if rep is not None else res
               for res, rep in finished]
    window = tres.fault_window()
    for w, res in zip(workers, results, strict=True):
        res.ran_dry = bool(stops.get(w.name, {}).get("ran_dry", False))
        if window is not None:
            measure_coverage(res, w.spec, window, go_ns)
    return ScenarioResult(tres, results)


def measure_coverage(res: ClientResult, spec: WorkloadSpec, window: FaultWindow,
                     go_ns: int) -> None:
    """How the client's workload met the transition, from its ledger (closed loop: from
    go, each request ready once the one before it was taken), and why the round is no
    measurement, if it is not."""
    entries = [LedgerEntry.from_json(e) for e in res.ledger]
    go = go_ns if spec.arrivals is Arrivals.CLOSED else None
    res.coverage = Coverage.of(spans(entries, go), window)
    # a client that did not live through the transition (killed, died) has nothing after
    # it by its own doing: that it crossed it is what makes its row a measurement
    res.missed = res.coverage.missed(require_after=spec.end is WorkloadEnd.RESUMED
                                     and not res.crashed)
    if res.ran_dry:
        res.missed.append(f"the workload ran dry: all {spec.count} requests of its cap were "
                          "issued before it was stopped")


def run_scenario(shim: Shim, agent: PeerAgent, local: Endpoint, request: TransitionRequest,
                 policies: list[str], spec: WorkloadSpec, clients_dir: Path, log_dir: Path,
                 progress_fraction: float = 0.3) -> ScenarioResult:
    """One transition under one worker per policy, all at once; every request accounted."""
    workers = spawn_workers(policies, spec, local, agent, clients_dir, log_dir)
    try:
        return run_round(shim, agent, workers, request, progress_fraction)
    finally:
        for w in workers:
            w.close()


def render(res: ScenarioResult) -> list[str]:
    req = res.transition.request
    out = [f"{req.name} {req.ordering}: verdict {res.transition.verdict}"]
    for c in res.clients:
        if c.crashed:
            out.append(f"  {c.policy:<13} CRASHED: {c.crash}; in flight: {c.in_flight_at_crash}")
            continue
        cs = c.clean_shutdown
        probe = "; ".join(f"gen {p['generation']}: {p['status']} after {p['seconds']} s"
                          for p in cs.get("peer_probe", []))
        out.append(f"  {c.policy:<13} {c.counts} peer {c.peer_counts} unaccounted "
                   f"{len(c.unaccounted)} | peer saw {cs['peer_saw']}, peer probe [{probe}], "
                   f"quiesce "
                   f"{cs['quiesce']!r}, resume->ok {cs['resume_to_first_ok_ms']} ms, "
                   f"replayed {cs['replayed']}, atomics {c.atomics}")
    return out
