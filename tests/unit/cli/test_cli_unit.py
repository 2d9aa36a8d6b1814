"""The `rxe-power` parser after the split into command-group modules: every command is
registered by its module, the help says what the tool is, and both ways in
(`python -m harness.cli`, `python -m harness.vm`) still parse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.cli import maintenance, power_commands, results_commands, suite
from harness.cli.main import build_parser
from harness.core.errors import SettingError

HELP_TIMEOUT_S = 60.0

COMMANDS = {
    "run": results_commands.cmd_matrix, "matrix": results_commands.cmd_matrix,
    "stress": results_commands.cmd_stress, "report": results_commands.cmd_report,
    "test": suite.cmd_test, "check": maintenance.cmd_check,
    "cleanup": maintenance.cmd_cleanup, "setup": maintenance.cmd_topology,
    "teardown": maintenance.cmd_topology, "show": maintenance.cmd_topology,
    "transition": power_commands.cmd_transition, "recover": power_commands.cmd_recover,
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_reaches_its_module(command: str) -> None:
    argv = [command, *{"report": ["r.jsonl"], "transition": ["standby"]}.get(command, [])]
    args = build_parser().parse_args(argv)
    assert args.func is COMMANDS[command]


def test_help_says_what_the_tool_is() -> None:
    text = build_parser().format_help()
    assert "power transitions" in text and "Soft-RoCE" in text
    assert "main(argv)" not in text
    for command in ("run", "matrix", "stress", "bench", "doctor", "vm"):
        assert f"rxe-power {command}" in text


@pytest.mark.parametrize("module,words", [("harness.cli", "rxe-power"),
                                          ("harness.vm", "python -m harness.vm")])
def test_python_dash_m_entry_points_parse(module: str, words: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=HELP_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {words}")


def test_spec_builders_return_their_specs() -> None:
    args = build_parser().parse_args(["matrix", "--transition", "standby", "--policy",
                                      "graceful"])
    spec = results_commands.matrix_spec(args)
    assert spec.transitions == ("standby",) and [p.text for p in spec.policies] == ["graceful"]
    args = build_parser().parse_args(["stress", "--cycles", "3"])
    assert results_commands.stress_spec(args).cycles == 3


def test_run_has_kernel_clients_in_its_default_matrix() -> None:
    """`run`'s default matrix: the four userspace policies everywhere, each kernel client
    in RUN_KERNEL_TRANSITIONS; `matrix` has only the userspace ones by default; a kernel
    client asked for by --policy runs in every selected transition unless
    --kernel-transitions narrows it."""
    from harness.run.lanes.base import LaneKind
    from harness.run.matrix import RUN_KERNEL_TRANSITIONS, USER_POLICIES

    def is_kernel_policy(ref: object) -> bool:
        return getattr(ref, "lane", None) is LaneKind.KERNEL

    run = results_commands.matrix_spec(build_parser().parse_args(["run"]))
    kernel = [sc for sc in run.scenarios() if is_kernel_policy(sc.policies[0])]
    user = [sc for sc in run.scenarios() if not is_kernel_policy(sc.policies[0])]
    assert len(user) == 7  # 4 transitions: 2+2+2+1 orderings, the policies side by side
    assert all(sc.policies == USER_POLICIES for sc in user)
    apart = results_commands.matrix_spec(build_parser().parse_args(["run", "--apart"]))
    assert len([sc for sc in apart.scenarios() if not is_kernel_policy(sc.policies[0])]) \
        == 7 * len(USER_POLICIES)
    assert kernel and {sc.transition for sc in kernel} == set(RUN_KERNEL_TRANSITIONS)
    assert {sc.policies[0].name for sc in kernel} == {"nvme-rdma", "nfs-rdma"}
    matrix = results_commands.matrix_spec(build_parser().parse_args(["matrix"]))
    assert not any(is_kernel_policy(sc.policies[0]) for sc in matrix.scenarios())
    asked = results_commands.matrix_spec(build_parser().parse_args(
        ["run", "--policy", "nvme-rdma:fast-fail"]))
    assert len(asked.scenarios()) == 7  # every transition and ordering
    narrowed = results_commands.matrix_spec(build_parser().parse_args(
        ["matrix", "--policy", "nvme-rdma,graceful", "--kernel-transitions", "standby"]))
    assert [(sc.transition, sc.texts) for sc in narrowed.scenarios()
            if is_kernel_policy(sc.policies[0])] == [("standby", ("nvme-rdma",))] * 2
    assert len(narrowed.scenarios()) == 2 + 7
    with pytest.raises(SettingError, match="no-such"):
        results_commands.matrix_spec(build_parser().parse_args(
            ["matrix", "--kernel-transitions", "no-such"]))
