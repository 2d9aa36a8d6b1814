"""`rxe-power` command line: main(argv).

    rxe-power run    [matrix options]                the main job: the default scenario
                                                     matrix, then its report, in one folder
    rxe-power matrix [--transition T,..] [--ordering O,..] [--policy P,..] [--mix M,..]
                     [--together] [--junit FILE]     the scenario matrix -> results.jsonl
    rxe-power stress --cycles N [--transition T] [--policy P,..] [--maxfail N]
                                                     one transition over and over, leak checks
    rxe-power report RESULTS.jsonl|DIR               table, timeline PNGs, HTML summary
    rxe-power doctor [--json]                        what is missing, with the fix
    rxe-power test   [--mode auto|native|vm] [-- ARGS]  the test suite (pytest ARGS)
    rxe-power transition NAME [--ordering O] [--hold-ms N] [--on-veto wait|force]
                                                     one power transition of the local HCA
    rxe-power check                                  a traffic check rxe0 <-> rxe1
    rxe-power recover                                put the local side back after a veto
    rxe-power cleanup                                remove what a killed run left
    rxe-power setup | teardown | show                the topology on this kernel (root)
    rxe-power vm [--timeout-s N] -- CMD              run any command in the rxe VM

`--mode auto` (the default) uses the running kernel when it has (or can load)
rdma_rxe, else boots a distribution kernel that has it in QEMU (virtme-ng) and
runs the same command there with `--mode native`; output, exit code and the
results folder come back. Option values are checked before any VM boots.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import topology
from harness.cli import bench_command, doctor
from harness.cli.launch import (
    RESULTS_DIR,
    choose_mode,
    native_argv,
    run_in_guest,
    split_csv,
    start_results_command,
)
from harness.core.errors import RxePowerError
from harness.core.settings import SETTINGS, Mode, resolve

PYTEST_NO_TESTS = 5  # pytest.ExitCode.NO_TESTS_COLLECTED

HARNESS_ERROR_EXIT = 2
TEST_VM_TIMEOUT_S = 3600.0  # the suite takes 15-20 min in TCG; CI allows 90
RUN_VM_TIMEOUT_S = 600.0
MATRIX_VM_TIMEOUT_S = 3600.0
STRESS_VM_TIMEOUT_S = 6 * 3600.0










def cmd_test(args: argparse.Namespace) -> int:
    mode, why = choose_mode(args.mode)
    print(f"rxe-power test: mode {mode.value} ({why})", flush=True)
    if mode is not Mode.VM:
        import pytest

        return int(pytest.main(args.pytest_args))
    if any(a.startswith("-m") for a in args.pytest_args):
        # the caller selects by marker: all of it in the guest, as asked
        return run_in_guest([sys.executable, "-m", "pytest", *args.pytest_args], args.timeout_s,
                      "vm-test-console.log")
    # The pure-logic tests need no rxe: here, natively (under emulation they cost minutes).
    print("rxe-power test: the tests not marked rxe, on this host: pytest -m 'not rxe' "
          + " ".join(args.pytest_args), flush=True)
    host_argv = [sys.executable, "-m", "pytest", "-m", "not rxe", *args.pytest_args]
    try:
        host_rc = subprocess.run(host_argv, check=False, timeout=args.timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"rxe-power test: the host part did not finish within --timeout-s="
              f"{args.timeout_s:g}s (still running: {' '.join(host_argv)}); killed", flush=True)
        host_rc = 1
    print("rxe-power test: the tests marked rxe, in the VM", flush=True)
    vm_rc = run_in_guest([sys.executable, "-m", "pytest", "-m", "rxe", *args.pytest_args],
                   args.timeout_s, "vm-test-console.log")
    print(f"rxe-power test: host part exit {host_rc}, VM part exit {vm_rc}", flush=True)
    return combined_pytest_exit(host_rc, vm_rc)


def combined_pytest_exit(*codes: int) -> int:
    """One exit code for several pytest runs: the first failure's; 5 ("no tests
    collected") only when every part collected nothing."""
    failures = [c for c in codes if c not in (0, PYTEST_NO_TESTS)]
    if failures:
        return failures[0]
    return PYTEST_NO_TESTS if all(c == PYTEST_NO_TESTS for c in codes) else 0


def cmd_check(args: argparse.Namespace) -> int:
    mode, why = choose_mode(args.mode)
    print(f"rxe-power check: mode {mode.value} ({why})", flush=True)
    if mode is Mode.VM:
        argv = [sys.executable, "-m", "harness.cli", "check", "--mode", "native"]
        return run_in_guest(argv, args.timeout_s, "vm-check-console.log")
    return run_traffic_report(topology.TopologyConfig.from_settings())










def matrix_spec(args: argparse.Namespace) -> object:
    from harness.run.matrix import DEFAULT_TRANSITIONS, MatrixSpec
    from power.plan import parse_on_veto, parse_ordering

    return MatrixSpec(split_csv(args.transition) or DEFAULT_TRANSITIONS,
                      tuple(parse_ordering(o) for o in split_csv(args.ordering)),
                      split_csv(args.policy) or MatrixSpec.policies,
                      split_csv(args.mix) or ("mixed",),
                      args.together, args.count, args.rate, args.queue_depth, args.hold_ms,
                      parse_on_veto(args.on_veto), args.client_cmd or "",
                      args.server_cmd or "").validate()


def cmd_matrix(args: argparse.Namespace) -> int:
    from harness.run.matrix import run_matrix

    spec = matrix_spec(args)  # bad values fail here, before any VM boots
    out_dir, mode = start_results_command(args, "matrix", f"{len(spec.scenarios())} scenarios")
    if mode is Mode.VM:
        code = run_in_guest(native_argv(args, out_dir), args.timeout_s, "vm-matrix-console.log")
    else:
        junit = Path(args.junit).absolute() if args.junit else None
        code = run_matrix(spec, topology.TopologyConfig.from_settings(), out_dir, junit)
    if args.command == "run" and (out_dir / "results.jsonl").exists() \
            and os.environ.get("RXE_POWER_IN_VM") != "1":
        from harness import report

        report.write_report(out_dir / "results.jsonl", out_dir, log=print)
    return code


def stress_spec(args: argparse.Namespace) -> object:
    from harness.run.stress import StressSpec
    from power.plan import parse_on_veto, parse_ordering

    return StressSpec(args.cycles, args.transition,
                      parse_ordering(args.ordering) if args.ordering else None,
                      split_csv(args.policy) or StressSpec.policies, args.mix, args.count,
                      args.rate,
                      args.queue_depth, args.hold_ms, parse_on_veto(args.on_veto), args.maxfail,
                      args.keep_ledgers).validate()


def cmd_stress(args: argparse.Namespace) -> int:
    from harness.run.stress import make_progress, run_stress

    spec = stress_spec(args)
    out_dir, mode = start_results_command(args, "stress",
                                          f"{spec.cycles} cycles of {spec.transition}")
    if mode is Mode.VM:
        return run_in_guest(native_argv(args, out_dir), args.timeout_s, "vm-stress-console.log")
    progress = make_progress(spec.cycles)
    try:
        return run_stress(spec, topology.TopologyConfig.from_settings(), out_dir, progress)
    finally:
        if hasattr(progress, "stop"):
            progress.stop()


def cmd_report(args: argparse.Namespace) -> int:
    from harness import report

    path = Path(args.results)
    out_dir = Path(args.out) if args.out else path if path.is_dir() else path.parent
    return report.write_report(path, out_dir, log=print, pictures=not args.no_pictures)


def run_traffic_report(cfg: topology.TopologyConfig) -> int:
    """Bring up the topology, check it with ibv_rc_pingpong and our own traffic, report."""
    from harness.peer import traffic
    from harness.peer.controller import PeerAgent

    t0 = time.monotonic()
    topo, built = topology.setup(cfg)
    try:
        ping = topology.pingpong_check(topo)
        print(f"ibv_rc_pingpong {topo.local.dev} <-> {topo.peer.dev}: {ping.iters} iterations, "
              f"{ping.usec_per_iter} usec/iter")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        with PeerAgent(topo.peer, log_dir=RESULTS_DIR / "logs") as agent:
            stats = traffic.run_check(topo, agent)
    finally:
        if built:
            topology.teardown(log=lambda m: None)
    print(f"\n{'operation':<12} {'messages':>9} {'bytes':>10} {'seconds':>8} {'MB/s':>7}  verdict")
    for st in stats:
        rate = st.bytes / st.seconds / 1e6 if st.seconds else 0.0
        verdict = "OK" if st.ok else f"FAIL: {'; '.join(st.errors[:3])}"
        print(f"{st.op:<12} {st.messages:>9} {st.bytes:>10} {st.seconds:>8.3f} {rate:>7.2f}  "
              f"{verdict}")
    ok = all(st.ok for st in stats)
    report = {"topology": topo.to_json(), "pingpong_usec_per_iter": ping.usec_per_iter,
              "operations": [st.to_json() for st in stats], "ok": ok,
              "seconds": time.monotonic() - t0}
    out = RESULTS_DIR / "run.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\n{'PASS' if ok else 'FAIL'}: traffic rxe0 <-> rxe1 across the wire; report in {out}")
    return 0 if ok else 1


def cmd_transition(args: argparse.Namespace) -> int:
    from power.plan import parse_on_veto, parse_ordering
    from power.result import VERDICT_EXIT, TransitionRequest
    from power.shim import Shim, render

    req = TransitionRequest(
        args.name, parse_ordering(args.ordering) if args.ordering else None, args.hold_ms,
        parse_on_veto(args.on_veto), args.veto_wait_s, args.quiesce_timeout_s,
        args.pm_level).resolved()  # bad values fail here, before any VM boots
    mode, why = choose_mode(args.mode)
    print(f"rxe-power transition: mode {mode.value} ({why})", flush=True)
    if mode is Mode.VM:
        argv = [sys.executable, "-m", "harness.cli", "transition", req.name,
                "--ordering", str(req.ordering), "--hold-ms", str(req.hold_ms),
                "--on-veto", str(req.on_veto), "--veto-wait-s", str(req.veto_wait_s),
                "--quiesce-timeout-s", str(req.quiesce_timeout_s), "--pm-level", req.pm_level,
                *(["--json", args.json] if args.json else []), "--mode", "native"]
        return run_in_guest(argv, args.timeout_s, "vm-transition-console.log")
    cfg = topology.TopologyConfig.from_settings()
    topo, built = topology.setup(cfg, log=lambda m: None)
    if built:
        print(f"built the topology for this run ({topo.local.dev} <-> {topo.peer.dev}); "
              "it is removed afterwards")
    try:
        with Shim(cfg, log=print) as shim:
            result = shim.run(req)
    finally:
        if built:
            topology.teardown(log=lambda m: None)
    print("\n".join(render(result)))
    out = Path(args.json) if args.json else RESULTS_DIR / f"transition-{req.name}.json"
    result.write(out)
    print(f"result: {out}")
    return VERDICT_EXIT[result.verdict]


def cmd_recover(args: argparse.Namespace) -> int:
    cfg = topology.TopologyConfig.from_settings()
    problems = topology.restore_local_side(cfg)
    for p in problems:
        print(f"not restored: {p}")
    if not problems:
        topo = topology.discover(cfg)
        print(f"topology whole: {topo.local.dev} {topo.local.state}, {topo.peer.dev} "
              f"{topo.peer.state}")
    return 1 if problems else 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """What a killed run left (processes, blocked deletes, devices, netdevs, rules)."""
    from harness.topology.cleanup import cleanup

    problems = cleanup(topology.TopologyConfig.from_settings())
    for p in problems:
        print(f"not cleaned: {p}")
    if not problems:
        print("cleanup complete: nothing a dead run left remains")
    return 1 if problems else 0


def cmd_topology(args: argparse.Namespace) -> int:
    return topology.main({"setup": ["up"], "teardown": ["down"], "show": ["show"]}[args.command])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rxe-power", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    mode_help = SETTINGS["rxe-mode"].help + " (env RXE_POWER_MODE)"
    for name, what in (("run", "the main job: the default scenario matrix, then its report "
                         "(table, timeline pictures, HTML) in one results folder"),
                       ("matrix", "run the scenario matrix (transitions x orderings x client "
                        "policies x operation mixes), writing results.jsonl as it goes")):
        p = sub.add_parser(name, help=what)
        add_matrix_options(p, mode_help)
        p.set_defaults(func=cmd_matrix)
    p = sub.add_parser("stress", help="repeat one transition under live clients, checking "
                       "the ledger, fds, RSS, threads, kernel RDMA resources and the kernel "
                       "log after every cycle")
    add_stress_options(p, mode_help)
    p.set_defaults(func=cmd_stress)
    p = sub.add_parser("report", help="table, timeline pictures (PNG) and an HTML summary "
                       "from a results.jsonl")
    p.add_argument("results", help="a results.jsonl written by matrix, run or stress")
    p.add_argument("--out", help="where to write (default: next to the results file)")
    p.add_argument("--no-pictures", action="store_true", help="only the table and HTML")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("check", help="bring up rxe0 <-> rxe1 and report a traffic check")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--timeout-s", type=float, default=RUN_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("test", help="run the test suite (pytest) where rxe exists")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--timeout-s", type=float, default=TEST_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest")
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("transition", help="run one power transition of the local HCA")
    p.add_argument("name", help="link-flap, standby, hibernate, surprise-removal or pm-test")
    p.add_argument("--ordering", help="clients-first or hca-first (default: the first the "
                   "transition offers)")
    p.add_argument("--hold-ms", type=int, default=None, help="how long to stay asleep")
    p.add_argument("--on-veto", default="wait", help="wait (report vetoed) or force "
                   "(terminate the holders)")
    p.add_argument("--veto-wait-s", type=float, default=5.0,
                   help="--on-veto wait: how long holders get before the sleep is vetoed")
    p.add_argument("--quiesce-timeout-s", type=float, default=5.0,
                   help="clients-first: the deadline clients get to release the device")
    p.add_argument("--pm-level", default="freezer", help="pm-test: the /sys/power/pm_test level")
    p.add_argument("--json", help="where to write the result (default "
                   "results/transition-NAME.json)")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--timeout-s", type=float, default=RUN_VM_TIMEOUT_S,
                   help="bound on the whole VM run")
    p.set_defaults(func=cmd_transition)
    doctor.add_parser(sub)
    bench_command.add_parser(sub)
    sub.add_parser("cleanup", help="remove what a killed run left: its processes, blocked "
                   "deletes, and the topology (repaired instead if a live run uses it)"
                   ).set_defaults(func=cmd_cleanup)
    sub.add_parser("recover", help="restore the local side (device, netdev, port) after a "
                   "failed or vetoed transition").set_defaults(func=cmd_recover)
    for name in ("setup", "teardown", "show"):
        sub.add_parser(name, help=f"topology {name} on this kernel").set_defaults(
            func=cmd_topology)
    sub.add_parser("vm", help="run a command in the rxe VM: vm [--timeout-s N] -- CMD",
                   add_help=False)
    return ap


def _common(p: argparse.ArgumentParser, mode_help: str, timeout_s: float) -> None:
    p.add_argument("--out", help="the results folder (default results/COMMAND-TIMESTAMP)")
    p.add_argument("--mode", default=None, help=mode_help)
    p.add_argument("--timeout-s", type=float, default=timeout_s,
                   help="bound on the whole VM run, in seconds")


def _workload_options(p: argparse.ArgumentParser, count: int, hold_ms: int) -> None:
    p.add_argument("--count", type=int, default=count, help="requests per client")
    p.add_argument("--rate", type=float, default=60.0,
                   help="requests per second per client (0: as fast as the queue allows)")
    p.add_argument("--queue-depth", type=int, default=4, help="outstanding requests per QP")
    p.add_argument("--hold-ms", type=int, default=hold_ms, help="how long to stay asleep")
    p.add_argument("--on-veto", default="force", help="wait (report the veto) or force "
                   "(terminate the holders, the default)")


def add_matrix_options(p: argparse.ArgumentParser, mode_help: str) -> None:
    p.add_argument("--transition", action="append", help="transitions, comma-separated "
                   "(default link-flap,standby,hibernate,surprise-removal)")
    p.add_argument("--ordering", action="append", help="clients-first and/or hca-first "
                   "(default: every ordering each transition offers)")
    p.add_argument("--policy", action="append", help="client policies (default naive,"
                   "fail-fast,queue-replay,graceful), or module:Class")
    p.add_argument("--mix", action="append", help="operation mixes: mixed, send, write, "
                   "read-atomic (default mixed)")
    p.add_argument("--together", action="store_true", help="run the policies side by side "
                   "in one transition instead of one transition each")
    p.add_argument("--client-cmd", help="an unmodified verbs program (quoted, with "
                   "placeholders {dev} {gid} {addr} {peer_dev} {peer_gid} {peer_addr} {port}) "
                   "run under the verbs tracer instead of the policies")
    p.add_argument("--server-cmd", help="its own server on the peer HCA (same placeholders)")
    _workload_options(p, 120, 300)
    p.add_argument("--junit", help="also write JUnit XML here (one testcase per row)")
    _common(p, mode_help, MATRIX_VM_TIMEOUT_S)


def add_stress_options(p: argparse.ArgumentParser, mode_help: str) -> None:
    p.add_argument("--cycles", type=int, default=20, help="how many transitions")
    p.add_argument("--transition", default="standby", help="the transition to repeat")
    p.add_argument("--ordering", help="clients-first or hca-first (default: the first the "
                   "transition offers)")
    p.add_argument("--policy", action="append", help="client policies (default fail-fast,"
                   "queue-replay,graceful), or module:Class")
    p.add_argument("--mix", default="mixed", help="operation mix")
    p.add_argument("--maxfail", type=int, default=0, help="stop after N failed cycles "
                   "(0: never)")
    p.add_argument("--keep-ledgers", action="store_true",
                   help="keep every cycle's full ledger (default: only failed cycles')")
    _workload_options(p, 60, 100)
    _common(p, mode_help, STRESS_VM_TIMEOUT_S)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vm"]:  # everything after `vm` belongs to the VM runner's own parser
        from harness import vm

        return vm.main(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if hasattr(args, "mode"):
            args.mode = resolve("rxe-mode", args.mode).value
        if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
            args.pytest_args = args.pytest_args[1:]
        return int(args.func(args))
    except RxePowerError as exc:
        print(f"rxe-power: error: {exc}", file=sys.stderr)
        return HARNESS_ERROR_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
