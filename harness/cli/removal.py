"""`--removal disassociate|block` for the commands that build the topology.

The mode closest to a real HCA, disassociate, is the default wherever our rdma_rxe can
be had for the kernel that will run it (cached by ci/build-rxe-disassociate.sh); else
block, and one line says why. An explicit `--removal disassociate` builds the module
on this host when it is missing (root, apt) and fails with the fix when it cannot.
The choice is made once, on the host (the guest's root is read-only), and kept in the
command's Invocation (harness.cli.invocation), which the guest reads; the run loads the
module before the topology is built (harness.cli.operations).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from harness.core.errors import RxePowerError
from harness.core.printer import Printer
from harness.core.settings import SETTINGS, Mode, RemovalMode, resolve
from harness.system import rxe_module
from harness.vm import kernel as vm_kernel

BUILD_TIMEOUT_S = 1200.0  # apt-get of the kernel source and headers, then the build (~50 s)
REPO = Path(__file__).resolve().parents[2]


def add_removal_option(p: argparse.ArgumentParser) -> None:
    s = SETTINGS["removal"]
    p.add_argument("--removal", default=None, help=f"{s.help} (env {s.env}; default "
                   "disassociate where ci/build-rxe-disassociate.sh's module exists for the "
                   "kernel, else block)")


def build_module(release: str, out: Printer) -> None:
    """ci/build-rxe-disassociate.sh RELEASE, bounded; its own message on failure."""
    argv = [str(REPO / "ci" / "build-rxe-disassociate.sh"), release]
    out(f"rxe-power: building rdma_rxe with disassociate_ucontext for {release} "
        f"(at most {BUILD_TIMEOUT_S:g} s): {' '.join(argv)}")
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired:
        raise RxePowerError(f"{argv[0]} did not finish within BUILD_TIMEOUT_S="
                            f"{BUILD_TIMEOUT_S:g}s", "run it by hand to see where it waits; "
                            "or use --removal block") from None
    if res.returncode != 0:
        raise RxePowerError(f"{argv[0]} {release} failed (exit {res.returncode}; its message "
                            "is above)", "follow its fix, or use --removal block")


def target_release(mode: Mode) -> str:
    return vm_kernel.find_guest_kernel().version if mode is Mode.VM else os.uname().release


def choose_removal(requested: str | None, mode: Mode,
                   out: Printer) -> tuple[RemovalMode, str]:
    """The mode to run and why; builds our module when it was asked for and is missing
    (saying so to `out`)."""
    res = resolve("removal", requested)
    release = target_release(mode)
    if res.source != "built-in default":
        want = res.value
        if want is RemovalMode.DISASSOCIATE and rxe_module.our_build(release) is None:
            build_module(release, out)
        return want, f"from {res.source}"
    if mode is Mode.NATIVE and rxe_module.software_rdma_devices():
        current = rxe_module.current_removal()
        if current is not None:  # cannot swap modules under existing devices: keep it
            return current, "the loaded rdma_rxe's (rxe devices exist, so it stays)"
    if rxe_module.default_removal(release) is RemovalMode.DISASSOCIATE:
        return RemovalMode.DISASSOCIATE, f"default: our rdma_rxe is built for {release}"
    return RemovalMode.BLOCK, (f"default: no disassociate rdma_rxe for {release} (build it: "
                               f"ci/build-rxe-disassociate.sh {release})")


def choose_suite_removal(requested: str | None, mode: Mode,
                         out: Printer) -> tuple[RemovalMode | None, str]:
    """`test`'s removal mode: the --removal asked for (built when missing, as for every
    command); else one set in RXE_POWER_REMOVAL (not built: the suite's plugin says what is
    missing); else None, the suite's own default (block; removal-marked modules switch by
    themselves)."""
    if requested is not None:
        return choose_removal(requested, mode, out)
    res = resolve("removal")
    if res.source == "built-in default":
        return None, ""
    return res.value, f"from {res.source}"
