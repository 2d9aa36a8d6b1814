"""Two guests, one wire: the local guest and the peer guest, each its own kernel (issue 24).

The peer guest boots first, in the background (its console in its own log, echoed with a
`peer| ` prefix); the local guest then runs in the foreground through run_in_vm, with its
bound and its stop signals. The two are joined by the links of harness.topology.wire:
QEMU `dgram` netdevs over Unix datagram sockets in a private folder of ours (0700, made
per run under build/, removed after), passed through vng's --qemu-opts. No root, no
bridge, nothing of the host's network. The same folder holds the run's secret for the
peer agent's channel (harness.core.peer_auth); both guests get its path in
RXE_POWER_PEER_SECRET_FILE.

Both guests are one run for the guest lock. Ownership: each guest's vng leads its own
process group and is on the state file's record (so `rxe-power cleanup` ends a leftover
one, and only ours); when the local guest's command ends (or its bound), the peer guest
is given PEER_EXIT_TIMEOUT_S to end by itself and is ended by its pid after that; a stop
signal or an error ends it at once; and if this process dies before (SIGKILL), the
guardian (harness.vm.guardian) ends both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.errors import RxePowerError
from harness.core.files import open_new
from harness.core.peer_auth import new_secret, write_secret
from harness.core.proc import PACKAGES_ROOT, STOP_GRACE_S
from harness.core.state import track
from harness.core.strict_json import loads_strict
from harness.topology.wire import Link, PairSide, link_end
from harness.vm.accel import choose_accel
from harness.vm.guardian import Guardian
from harness.vm.kernel import find_guest_kernel
from harness.vm.messages import say
from harness.vm.process import HARNESS_ERROR_EXIT_CODE, StopSignal, end_guest
from harness.vm.python_copy import prepare_python_copy
from harness.vm.runner import (
    VM_RUN_TIMEOUT_S,
    VmRequest,
    VmResult,
    host_env,
    prepare_boot,
    run_in_vm,
)
from harness.vm.tools import find_vm_tools

PAIR_DIR_ROOT = PACKAGES_ROOT / "build"  # the pair's private folder: pair-XXXXXXXX (0700)
PEER_EXIT_TIMEOUT_S = 30.0  # after the local guest: the peer guest's own exit, then ended
LOCAL_CPUS, LOCAL_MEMORY = 2, "2G"  # sized for a 2-core machine: the local side works
PEER_CPUS, PEER_MEMORY = 1, "1G"  # the peer answers


def link_qemu_opts(sock_dir: Path, side: PairSide) -> list[str]:
    """QEMU arguments of `side`'s ends of both links: each a dgram netdev bound to its own
    socket in `sock_dir`, sending to the other side's, and a virtio NIC with the end's MAC."""
    opts: list[str] = []
    for link in Link:
        here, there = (sock_dir / f"{link.value}-{s.value}.sock" for s in (side, side.other))
        opts += ["-netdev", f"dgram,id={link.value},local.type=unix,local.path={here},"
                 f"remote.type=unix,remote.path={there}",
                 "-device", f"virtio-net-pci,netdev={link.value},mac={link_end(link, side).mac}"]
    return opts


@dataclass
class PairResult:
    local: VmResult
    peer_exit_code: int | None  # None: it did not end by itself and was ended
    peer_duration_s: float
    peer_log_path: Path


class PeerGuest:
    """The peer guest's vng, in the background: its own session, its console to its log."""

    def __init__(self, argv: list[str], log_path: Path, header: list[str],
                 env: dict[str, str], cwd: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open_new(log_path, errors="replace", buffering=1)
        for line in header:
            self.log.write(f"# {line}\n")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env, cwd=cwd)
        track(self.proc, "vm peer guest (vng)", group=True)  # cleanup ends its group
        self.reader = threading.Thread(target=self._pump, name="peer-guest-reader",
                                       daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").replace("\r\n", "\n")
            with contextlib.suppress(ValueError):
                self.log.write(line)
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.write("peer| " + line)
                sys.stdout.flush()

    def finish(self, exit_wait_s: float) -> tuple[int | None, float]:
        """Its exit code when it ends within `exit_wait_s`, else None once ended by us."""
        code: int | None
        try:
            code = self.proc.wait(timeout=exit_wait_s)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - self.started
        end_guest(self.proc, "the peer guest" if code is not None else
                  f"the peer guest, still running {exit_wait_s:g} s after the local one "
                  f"(PEER_EXIT_TIMEOUT_S)", STOP_GRACE_S)
        self.reader.join(5.0)
        self.log.write(f"# finished: {'ended by us' if code is None else f'exit {code}'} "
                       f"after {took:.1f} s\n")
        self.log.close()
        return code, took


def run_pair(local: VmRequest, peer: VmRequest, peer_log: Path,
             exit_wait_s: float = PEER_EXIT_TIMEOUT_S) -> PairResult:
    """Boot the peer guest, then run the local guest; both joined by the pair's links."""
    tools, kernel = find_vm_tools(), find_guest_kernel()
    accel = choose_accel(kernel, qemu=tools.qemu)
    PAIR_DIR_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="pair-", dir=PAIR_DIR_ROOT))  # 0700, ours
    try:
        # the run's secret for the peer agent's channel: both guests read it through the
        # shared host root (read-only there), nobody else can reach the folder
        secret_file = sock_dir / "peer-secret"
        write_secret(secret_file, new_secret())
        for req in (local, peer):
            req.env = {**req.env, settings.PEER_SECRET_FILE_ENV: str(secret_file)}
        local.qemu_opts = [*local.qemu_opts, *link_qemu_opts(sock_dir, PairSide.LOCAL)]
        peer.qemu_opts = [*peer.qemu_opts, *link_qemu_opts(sock_dir, PairSide.PEER)]
        peer.cwd = peer.cwd.absolute()
        copy, how = prepare_python_copy() if peer.python_copy else (None, "off")
        say(f"peer guest: kernel {kernel.version}, accel {accel.accel}, {peer.cpus} vCPU, "
            f"{peer.memory}; its copy of the Python trees: {how}")
        argv, header, script = prepare_boot(peer, kernel, accel, tools, copy, role="peer guest")
        # ends both guests if this process dies, SIGKILL included (harness.vm.guardian)
        guardian = Guardian(peer_log.with_name(peer_log.name + ".guardian"))
        try:
            guest = PeerGuest(argv, peer_log, header, host_env(tools.bin_dir), peer.cwd)
            guardian.watch(guest.proc)
            try:
                result = run_in_vm(local, kernel=kernel, accel=accel, tools=tools,
                                   on_start=guardian.watch)
            except BaseException:  # a stop signal or an error: the peer goes now, too
                guest.finish(0.0)
                raise
            code, took = guest.finish(exit_wait_s)
        finally:
            guardian.close()
            if script is not None:
                script.unlink(missing_ok=True)
        say(f"peer guest: {'exit ' + str(code) if code is not None else 'ended by us'} "
            f"after {took:.1f} s; console log {peer_log}")
        return PairResult(result, code, took, peer_log)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)



def main(argv: list[str] | None = None) -> int:
    """`python -m harness.vm.pair [--timeout-s N] --peer-command CMD -- LOCAL CMD...`:
    the pair's feasibility probe (the peer's command is one shell line, the local's argv)."""
    ap = argparse.ArgumentParser(prog="python -m harness.vm.pair")
    ap.add_argument("--timeout-s", type=float, default=VM_RUN_TIMEOUT_S)
    ap.add_argument("--peer-command", required=True, help="the peer guest's shell line")
    ap.add_argument("--log-dir", type=Path, default=Path("results"))
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="write the probe's record: both guests' PAIR-PROBE lines (read "
                    "back from their console logs), the pair's durations, the provenance")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no local command given: -- CMD...")
    here = Path.cwd()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    local = VmRequest(command=command, rw_dirs=[here], cwd=here, timeout_s=args.timeout_s,
                      log_path=args.log_dir / f"vm-pair-{stamp}-local-console.log",
                      cpus=LOCAL_CPUS, memory=LOCAL_MEMORY)
    peer = VmRequest(command=["sh", "-c", args.peer_command], rw_dirs=[here], cwd=here,
                     timeout_s=args.timeout_s, cpus=PEER_CPUS, memory=PEER_MEMORY,
                     log_path=args.log_dir / f"vm-pair-{stamp}-peer-console.log")
    try:
        res = run_pair(local, peer, peer.log_path)
    except RxePowerError as exc:
        say(str(exc))
        return HARNESS_ERROR_EXIT_CODE
    except StopSignal as stop:
        say(f"stopped by {stop}")
        return stop.exit_code
    say(f"pair: local exit {res.local.exit_code} after {res.local.duration_s:.1f} s; peer "
        f"{res.peer_exit_code} after {res.peer_duration_s:.1f} s")
    if args.json is not None:
        write_probe_record(args.json, res, shlex.join(["python -m harness.vm.pair",
                                                       *(argv or sys.argv[1:])]))
    return res.local.exit_code


PROBE_TAG = "PAIR-PROBE "  # harness.run.pair_probe's one line


def probe_line(log: Path) -> dict[str, Any] | None:
    """The PAIR-PROBE record a guest printed (its console log; a peer's line is prefixed)."""
    for raw in log.read_text(errors="replace").splitlines():
        at = raw.find(PROBE_TAG)
        if at >= 0 and raw[:at] in ("", "peer| "):
            rec = loads_strict(raw[at + len(PROBE_TAG):].encode())
            return rec if isinstance(rec, dict) else None
    return None


def write_probe_record(path: Path, res: PairResult, command: str) -> None:
    local, peer = probe_line(res.local.log_path), probe_line(res.peer_log_path)
    record = {"kind": "pair-probe", "command": command,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "provenance": (local or {}).pop("provenance", None),
              "pair": {"local_exit": res.local.exit_code, "local_s": round(res.local.duration_s, 1),
                       "peer_exit": res.peer_exit_code, "peer_s": round(res.peer_duration_s, 1),
                       "accel": res.local.accel, "kernel": res.local.kernel_version,
                       "local_vcpus": LOCAL_CPUS, "local_memory": LOCAL_MEMORY,
                       "peer_vcpus": PEER_CPUS, "peer_memory": PEER_MEMORY},
              "local": local, "peer": peer}
    path.write_text(json.dumps(record, indent=1) + "\n")
    say(f"pair: the probe's record in {path}")


if __name__ == "__main__":
    raise SystemExit(main())
