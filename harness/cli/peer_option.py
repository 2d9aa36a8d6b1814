"""`--peer same-kernel|guest` for the commands that run scenarios (run, matrix, stress,
bench, test): where the peer HCA lives, parsed once here into a PeerPlacement.

same-kernel (the default) is the one-kernel topology every scenario runs on. guest (the
peer in a guest kernel of its own, joined by a wire: harness.vm.pair, issue 24) runs the
kernel clients' scenarios of `matrix` (nvme-rdma, nfs-rdma; the job says what it cannot
run: Job.peer_guest_problem); anything else is refused here, before any VM boots,
naming what does run. The choice
and its reason are said by harness.cli.invocation.invoke, which carries them in the
invocation to the run's provenance (`peer_reason`).
"""

from __future__ import annotations

import argparse

from harness.core.errors import SettingError
from harness.core.settings import SETTINGS, Mode, PeerPlacement, resolve

GUEST_PROBE = ("python -m harness.vm.pair --peer-command 'python -P -m harness.run.pair_probe "
               "peer' -- python -P -m harness.run.pair_probe local")


def add_peer_option(p: argparse.ArgumentParser) -> None:
    s = SETTINGS["peer"]
    p.add_argument("--peer", default=None, help=f"{s.help} (env {s.env}; default {s.default})")


def choose_peer(requested: str | None, mode: Mode, command: str,
                guest_problem: str | None) -> tuple[PeerPlacement, str]:
    """The placement to run and why; SettingError where it cannot work. `guest_problem`:
    why this run's scenarios cannot have the peer in its own guest (None: they can)."""
    res = resolve("peer", requested, option="--peer")
    if res.value is PeerPlacement.GUEST:
        if mode is not Mode.VM:
            raise SettingError(f"--peer guest (from {res.source}) needs two guest kernels, "
                               f"and rxe-power {command} runs natively (mode {mode.value})",
                               "use --mode vm, or --peer same-kernel")
        if guest_problem is not None:
            raise SettingError(f"--peer guest (from {res.source}): {guest_problem} (issue "
                               "24: with the peer in its own guest, the kernel clients "
                               "(nvme-rdma, nfs-rdma) run in `matrix`; the pair's feasibility "
                               f"probe: {GUEST_PROBE})", "use --peer same-kernel (the "
                               "default)")
        return res.value, (f"from {res.source}: the peer HCA in a guest kernel of its own "
                           "(harness.vm.pair), joined by a wire")
    why = (f"from {res.source}" if res.source != "built-in default" else
           "default: the two-kernel placement runs only the kernel clients yet")
    return res.value, why
