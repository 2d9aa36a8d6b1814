"""Guest check of issue 17 #17 and #1 (boots guests: run it under the guest lock).

    flock /tmp/rxe-guest.lock timeout -k 10 600 .venv/bin/python ci/vm-stop-check.py

1. For `rxe-power vm -- sleep 300` and `rxe-power check --mode vm`: start it, wait
   (bounded) for its qemu-system process, SIGTERM the command, and assert that no
   process of its guest is left within GUEST_STOP_TIMEOUT_S (plus the poll) and that it
   exits 143 saying it ended the guest.
2. A folder outside the cwd given to the guest (what `run_in_guest` shares for --out,
   --json, --junit, RXE_POWER_RESULTS) is written by the guest and seen on the host.
Prints one line per check; exits 1 if any failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.vm.process import GUEST_STOP_TIMEOUT_S

QEMU_APPEAR_TIMEOUT_S = 120.0  # vng start -> qemu-system running
EXIT_TIMEOUT_S = GUEST_STOP_TIMEOUT_S + 10.0  # SIGTERM -> the command has exited
POLL_S = 0.1
RXE_POWER = str(Path(sys.executable).with_name("rxe-power"))


def descendants(pid: int) -> dict[int, str]:
    """Live processes below `pid`, {pid: comm}, from /proc."""
    kids: dict[int, list[int]] = {}
    comm: dict[int, str] = {}
    for e in Path("/proc").iterdir():
        if not e.name.isdigit():
            continue
        try:
            stat = (e / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        if rest[0] == "Z":
            continue
        kids.setdefault(int(rest[1]), []).append(int(e.name))
        comm[int(e.name)] = stat[stat.find("(") + 1:stat.rfind(")")]
    out, todo = {}, [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out[k] = comm.get(k, "?")
            todo.append(k)
    return out


def qemu_pids(tree: dict[int, str]) -> list[int]:
    return [p for p, c in tree.items() if c.startswith("qemu-system")]


def stop_check(argv: list[str]) -> bool:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + QEMU_APPEAR_TIMEOUT_S
    while not (qemu := qemu_pids(descendants(proc.pid))) and time.monotonic() < end:
        time.sleep(POLL_S)
    if not qemu:
        proc.kill()
        print(f"FAIL {argv}: no qemu-system within {QEMU_APPEAR_TIMEOUT_S:g} s")
        return False
    guest = set(descendants(proc.pid))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        print(f"FAIL {argv}: still running {EXIT_TIMEOUT_S:g} s after SIGTERM")
    exited = time.monotonic() - t0
    left = [p for p in guest if Path(f"/proc/{p}").exists()
            and (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"]
    for p in left:  # ours: never leave one behind
        os.kill(p, signal.SIGKILL)
    said = [ln for ln in out.splitlines() if "ended the guest" in ln or "stopped by" in ln]
    ok = not left and proc.returncode == 128 + signal.SIGTERM and exited <= EXIT_TIMEOUT_S \
        and any("ended the guest" in ln for ln in said)
    print(f"{'PASS' if ok else 'FAIL'} {' '.join(argv[1:])}: qemu {qemu}; SIGTERM -> exit "
          f"{proc.returncode} after {exited:.2f} s (bound GUEST_STOP_TIMEOUT_S="
          f"{GUEST_STOP_TIMEOUT_S:g} s); guest processes left: {left or 'none'}")
    for ln in said:
        print(f"    {ln}")
    return ok


def shared_folder_check() -> bool:
    with tempfile.TemporaryDirectory(prefix="rxe-power-rw-") as d:
        target = Path(d) / "deep" / "results"
        from harness.cli.launch import guest_rw_dirs
        dirs = guest_rw_dirs([target], Path.cwd().absolute())
        argv = [RXE_POWER, "vm", "--timeout-s", "300",
                *[a for x in dirs for a in ("--rwdir", str(x))],
                "--", "sh", "-c", f"echo from-guest > {target}/f"]
        rc = subprocess.run(argv, check=False, capture_output=True, timeout=330).returncode
        ok = rc == 0 and (target / "f").read_text().strip() == "from-guest" \
            if (target / "f").exists() else False
        print(f"{'PASS' if ok else 'FAIL'} guest writes {target} (outside the cwd): exit {rc}")
        return ok


def main() -> int:
    results = [stop_check([RXE_POWER, "vm", "--timeout-s", "300", "--", "sleep", "300"]),
               stop_check([RXE_POWER, "check", "--mode", "vm", "--timeout-s", "300"]),
               shared_folder_check()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
