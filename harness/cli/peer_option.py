"""`--peer same-kernel|guest` for the commands that run scenarios (run, matrix, stress,
bench, test): where the peer HCA lives, parsed once here into a PeerPlacement.

same-kernel (the default) is the one-kernel topology every scenario runs on. guest (the
peer in a guest kernel of its own, joined by a wire: harness.vm.pair, issue 24) has its
links, its secret-gated channel and a feasibility probe, and no scenario runs with it
yet: asking for it is refused here, before any VM boots, naming what does run. The choice
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


def choose_peer(requested: str | None, mode: Mode, command: str) -> tuple[PeerPlacement, str]:
    """The placement to run and why; SettingError where it cannot work."""
    res = resolve("peer", requested, option="--peer")
    if res.value is PeerPlacement.GUEST:
        if mode is not Mode.VM:
            raise SettingError(f"--peer guest (from {res.source}) needs two guest kernels, "
                               f"and rxe-power {command} runs natively (mode {mode.value})",
                               "use --mode vm, or --peer same-kernel")
        raise SettingError(f"--peer guest (from {res.source}): no scenario of rxe-power "
                           f"{command} runs with the peer in its own guest yet (issue 24: "
                           "the two guests, their wire and the peer's secret-gated channel "
                           f"exist; only their feasibility probe runs: {GUEST_PROBE})",
                           "use --peer same-kernel (the default)")
    why = (f"from {res.source}" if res.source != "built-in default" else
           "default: the guest placement is not yet proven in CI")
    return res.value, why
