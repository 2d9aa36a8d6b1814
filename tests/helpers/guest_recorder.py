"""A stand-in for harness.vm.runner.run_in_vm that boots nothing: the CLI tests see which
guests would have booted, with what (the `guest` fixture of tests/unit/cli/conftest.py),
and the invocation each would have run (read as the guest reads it)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.cli.invocation import Invocation, read_invocation
from harness.vm import runner
from harness.vm.pair import PairResult


class GuestRecorder:
    """Stands in for runner.run_in_vm (and harness.vm.pair.run_pair: `pair`): records each
    request, boots nothing. A pair's local guest is in `requests`, its peer in `peers`."""

    def __init__(self) -> None:
        self.requests: list[runner.VmRequest] = []
        self.peers: list[runner.VmRequest] = []

    def __call__(self, req: runner.VmRequest) -> runner.VmResult:
        self.requests.append(req)
        return runner.VmResult(0, "tcg", "test", 0.0, False, req.log_path, [])

    def pair(self, local: runner.VmRequest, peer: runner.VmRequest, peer_log: Path,
             exit_wait_s: float = 0.0) -> PairResult:
        self.peers.append(peer)
        return PairResult(self(local), 0, 0.0, peer_log)

    def invocations(self) -> list[Invocation]:
        """The Invocation each guest would have read (its file, as the guest checks it)."""
        from harness.cli.guest import JOBS  # every command module: only when asked
        from harness.cli.operations import GUEST_MODULE

        out = []
        for req in self.requests:
            cmd = req.command
            at = cmd.index(GUEST_MODULE)
            out.append(read_invocation(Path(cmd[at + 1]), os.geteuid(), JOBS))
        return out
