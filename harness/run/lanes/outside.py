"""The outside-program lane: a program that is not ours (`--client-cmd`, with its own
server `--server-cmd`), run under the verbs tracer through each transition
(harness.run.outside). It is named `cmd:<program>` (the basename of the client command):
that is its policy name in the scenarios, the table and the results files. Its result is
an OutsideResult (harness.run.outside_result): typed, with its row and its JSON.
"""

from __future__ import annotations

from typing import Any

from harness.core.errors import SettingError
from harness.run.lanes.base import LaneContext, LaneKind, PolicyRef, RunSpec, Scenario
from harness.run.outside import OUTSIDE_PREFIX, OutsideSpec, run_outside
from harness.run.outside_result import OutsideResult


def outside_spec(spec: RunSpec) -> OutsideSpec:
    return OutsideSpec(spec.client_cmd, spec.server_cmd, spec.client_exit_timeout_s)


class OutsideLane:
    kind = LaneKind.OUTSIDE

    def claims(self, text: str) -> bool:
        return text.startswith(OUTSIDE_PREFIX)

    def parse(self, text: str) -> PolicyRef:
        return PolicyRef(LaneKind.OUTSIDE, text.removeprefix(OUTSIDE_PREFIX), "", text)

    def validate(self, ref: PolicyRef, spec: RunSpec) -> None:
        if not spec.client_cmd:
            raise SettingError(f"policy {ref.text!r} names an outside program, and an "
                               "outside program is given by its command line",
                               "give it with --client-cmd 'PROG ARGS' (and --server-cmd)")
        label = outside_spec(spec).validate().label
        if ref.text != label:
            raise SettingError(f"policy {ref.text!r} is not the program of --client-cmd "
                               f"({label})", "leave --policy out with --client-cmd")

    def groups(self, refs: tuple[PolicyRef, ...], spec: RunSpec,
               transition: str) -> list[tuple[PolicyRef, ...]]:
        return [(r,) for r in refs]

    def run(self, ctx: LaneContext, sc: Scenario) -> OutsideResult:
        return run_outside(ctx.shim, ctx.topo, ctx.request, outside_spec(ctx.spec),
                           ctx.log_dir)

    def result_from_json(self, d: dict[str, Any], schema: int) -> OutsideResult:
        return OutsideResult.from_json(d, schema)

