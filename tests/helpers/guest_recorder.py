"""A stand-in for harness.vm.runner.run_in_vm that boots nothing: the CLI tests see which
guests would have booted, with what (the `guest` fixture of tests/unit/cli/conftest.py)."""

from __future__ import annotations

from harness.vm import runner


class GuestRecorder:
    """Stands in for runner.run_in_vm: records each request, boots nothing."""

    def __init__(self) -> None:
        self.requests: list[runner.VmRequest] = []

    def __call__(self, req: runner.VmRequest) -> runner.VmResult:
        self.requests.append(req)
        return runner.VmResult(0, "tcg", "test", 0.0, False, req.log_path, [])
