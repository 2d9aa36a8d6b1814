"""`rxe-power doctor`'s checks of this host: root, native rxe, the rdma tool, pyverbs,
the Python packages, the topology, the state file, the kernel clients' modules and tools.
Each takes its inputs (paths, a `which`, a `run`, finder functions) as parameters with
real defaults, so tests/unit/cli/test_doctor_unit.py runs it on any host."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from harness.cli.doctor_findings import (
    Finding,
    Runner,
    Status,
    Which,
    fail,
    last_line,
    ok,
    os_detail,
    run_cmd,
    warn,
)
from harness.cli.launch import native_rxe_available
from harness.core.errors import RxePowerError
from harness.core.proc import python_child
from harness.core.state import RUN_KINDS, STATE_PATH, StateFile, alive
from harness.system import command, inventory, rdma_netlink
from harness.topology import devices
from harness.topology.config import Topology, TopologyConfig

DOCTOR_IMPORT_TIMEOUT_S = 20.0  # `import pyverbs` in a child; a broken install must not hang us
DOCTOR_CMD_TIMEOUT_S = 10.0  # rdma, dpkg-query

NATIVE_FIX = ("install the module for this kernel (Ubuntu: apt-get install "
              "linux-modules-extra-$(uname -r)), or use the VM path (--mode vm; auto picks it)")
PYVERBS_FIX = ("apt-get install python3-pyverbs, and make the venv from the system python "
               "with its site packages: /usr/bin/python3 -m venv --system-site-packages .venv")
PYVERBS_PROBE = "harness.cli.pyverbs_probe"
# (distribution, status when missing, what needs it)
PACKAGES = (("psutil", "FAIL", "the harness"), ("pytest", "FAIL", "rxe-power test"),
            ("pytest-timeout", "FAIL", "rxe-power test"),
            ("matplotlib", "warn", "rxe-power report"),
            ("rich", "warn", "the progress bar of rxe-power stress"))


def check_root(geteuid: Callable[[], int] = os.geteuid) -> Finding:
    if (uid := geteuid()) == 0:
        return ok("root", "running as root")
    return fail("root", f"running as uid {uid}; setup, run and test add veths, routing rules "
                "and rdma links", "run as root: sudo .venv/bin/rxe-power ...")


def native_probe() -> tuple[bool, str]:

    return native_rxe_available()


def check_native(probe: Callable[[], tuple[bool, str]] = native_probe) -> Finding:
    good, why = probe()
    return ok("native rxe", why) if good else warn("native rxe", why, NATIVE_FIX)


def check_rdma(native_ok: bool = True, which: Which = shutil.which,
               run: Runner = run_cmd) -> Finding:
    """`rdma -j link show` parsed as JSON; without native rxe it may fail (no RDMA netlink)."""
    if (path := which("rdma")) is None:
        return fail("rdma tool", "`rdma` is not on PATH", "apt-get install iproute2")
    try:
        r = run([path, "-j", "link", "show"], DOCTOR_CMD_TIMEOUT_S)
    except OSError as exc:
        return fail("rdma tool", os_detail(f"cannot run {path}", exc),
                    "apt-get install --reinstall iproute2")
    if r.returncode is None:
        return fail("rdma tool", f"`rdma -j link show` did not finish within "
                    f"{DOCTOR_CMD_TIMEOUT_S:g} s", "look for a blocked device delete (dmesg)")
    if r.returncode != 0 and not native_ok:
        return ok("rdma tool", f"{path} is there; `rdma -j link show` exited {r.returncode} "
                  f"({last_line(r.stderr)}): expected, this kernel has no RDMA; the VM's has")
    if r.returncode != 0:
        return warn("rdma tool", f"`rdma -j link show` exited {r.returncode}: "
                    f"{last_line(r.stderr)}", "modprobe rdma_rxe (rxe-power setup does it)")
    try:
        links = rdma_netlink.parse_rdma_links(
            command.parse_json_list(r.stdout, "rdma -j link show"))
    except RxePowerError as exc:
        return fail("rdma tool", exc.problem, exc.fix)
    except (KeyError, TypeError, ValueError) as exc:
        return fail("rdma tool", f"`rdma -j link show` JSON lacks {exc}", "update iproute2")
    have = ", ".join(f"{lk.ifname}/{lk.port} {lk.state}" for lk in links) or "no RDMA links"
    return ok("rdma tool", f"{path}: {have}")


def dpkg_version(package: str, which: Which = shutil.which, run: Runner = run_cmd) -> str | None:
    if (tool := which("dpkg-query")) is None:
        return None
    try:
        r = run([tool, "-W", "-f=${Version}", package], DOCTOR_CMD_TIMEOUT_S)
    except OSError:
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def check_pyverbs(run: Runner = run_cmd, which: Which = shutil.which) -> Finding:
    """`import pyverbs` in a child of ours (harness.cli.pyverbs_probe: -P, never from the
    working directory) bounded by DOCTOR_IMPORT_TIMEOUT_S."""
    python = sys.executable
    try:
        r = run(python_child(PYVERBS_PROBE), DOCTOR_IMPORT_TIMEOUT_S)
    except OSError as exc:
        return fail("pyverbs", os_detail(f"cannot run {python}", exc), PYVERBS_FIX)
    if r.returncode is None:
        return fail("pyverbs", f"`import pyverbs` did not finish within DOCTOR_IMPORT_TIMEOUT_S="
                    f"{DOCTOR_IMPORT_TIMEOUT_S:g} s", PYVERBS_FIX)
    if r.returncode != 0:
        return fail("pyverbs", f"{python} cannot import pyverbs: {last_line(r.stderr)}",
                    PYVERBS_FIX)
    try:
        info = json.loads(last_line(r.stdout))
        version, where = info["version"], info["file"]
    except (ValueError, KeyError, TypeError):
        return fail("pyverbs", f"the import probe printed {last_line(r.stdout)!r}", PYVERBS_FIX)
    if version is None and (deb := dpkg_version("python3-pyverbs", which, run)):
        version = f"{deb} (python3-pyverbs)"
    return ok("pyverbs", f"pyverbs {version or '(version unknown)'} from {where}")


def check_package(dist: str, missing: Status, used_by: str, python: str = sys.executable,
                  version: Callable[[str], str] = importlib.metadata.version) -> Finding:
    try:
        return ok(dist, f"{dist} {version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        return Finding(dist, missing, f"not installed for {python} (needed by {used_by})",
                       f"{python} -m pip install -e '.[test]' (from the clone)")


def check_topology(native_ok: bool, is_root: bool,
                   discover: Callable[[TopologyConfig], Topology] | None = None,
                   ) -> Finding:
    if not native_ok:
        return ok("topology", "not checked: no native rxe (each VM run builds its own)")
    if not is_root:
        return warn("topology", "not checked: needs root", "run doctor as root")
    try:
        topo = (discover or devices.discover)(TopologyConfig.from_settings())
    except RxePowerError as exc:
        return warn("topology", f"not set up ({exc.problem})",
                    "rxe-power setup builds it; tests build it themselves")
    except OSError as exc:
        return warn("topology", os_detail("not set up: reading it failed", exc),
                    "rxe-power setup builds it; tests build it themselves")
    detail = ", ".join(f"{e.dev} {e.state} on {e.netdev} {e.addr}" for e in (topo.local, topo.peer))
    if topo.local.state == topo.peer.state == "ACTIVE":
        return ok("topology", detail)
    return warn("topology", f"{detail}: a port is not ACTIVE", "rxe-power recover")


def _netdev_names() -> set[str]:
    return {lk.ifname for lk in inventory.ip_links()}


def _rdma_names() -> set[str]:
    try:
        return {lk.ifname for lk in inventory.rdma_links()}
    except RxePowerError:  # no RDMA netlink in this kernel: no rdma devices either
        return set()


def check_state_file(path: Path | None = None, netdevs: Callable[[], set[str]] = _netdev_names,
                     rdma_devs: Callable[[], set[str]] = _rdma_names) -> Finding:
    """A topology state file whose devices are gone is a leftover for `rxe-power teardown`."""
    path = path if path is not None else STATE_PATH
    if not path.exists():
        return ok("state file", f"no {path} (nothing of ours to remove)")
    try:
        state = StateFile.load(path)
        present = netdevs() | rdma_devs()
    except RxePowerError as exc:
        return warn("state file", exc.problem, exc.fix)
    except OSError as exc:
        return warn("state file", os_detail(f"cannot check {path}", exc), "rxe-power teardown")
    runs = [e for e in state.created if e.get("kind") in RUN_KINDS]
    live = sorted({int(e["owner"]["pid"]) for e in runs if alive(e.get("owner"))})
    dead = [e for e in runs if not alive(e.get("owner"))]
    if dead:
        return warn("state file", f"{path}: {len(dead)} process/folder entries of dead runs "
                    "are left", "rxe-power cleanup")
    names = [n for e in state.topology_entries() if e.get("kind") in ("netdev", "rdma_link")
             for n in (e.get("name"), e.get("peer")) if n]
    if not state.topology_entries() and live:  # a live run (e.g. a VM run's guest): no topology
        return ok("state file", f"{path}: the live rxe-power run (pid "
                  f"{', '.join(map(str, live))}) records its own processes; no topology")
    gone = [n for n in names if n not in present]
    if names and not gone:
        return ok("state file", f"{path}: our {', '.join(names)} are present")
    if gone and len(gone) < len(names):
        return warn("state file", f"{path}: of ours, {', '.join(gone)} are gone",
                    "rxe-power teardown, then rxe-power setup")
    return warn("state file", f"leftover {path}: none of the {len(state.created)} objects it "
                "lists has a device left", "rxe-power teardown")


def check_kernel_clients(modules_dir: Path | None) -> Finding:
    """nvme-rdma, nvmet-rdma, null_blk, nfsd, rpcrdma, nfsv4 in the kernel the run uses;
    nvme-cli, fio, rpc.mountd, mount.nfs."""
    from clients.kernel.requirements import missing

    gaps = missing(modules_dir)
    if not gaps:
        return ok("kernel clients", f"nvme-rdma, nvmet-rdma, null_blk, nfsd, rpcrdma, nfsv4 "
                  f"in {modules_dir}; nvme-cli, fio, rpc.mountd, mount.nfs")
    return warn("kernel clients", "; ".join(w for w, _ in gaps),
                "; ".join(dict.fromkeys(f for _, f in gaps)))
