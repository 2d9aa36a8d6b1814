"""One guest run: boot the guest kernel with vng and run a shell command in it.

Shaped like the KUnit tool's runner: a request dataclass, a result dataclass, and a
runner that prints the exact command, enforces its timeout (harness.vm.process) and
keeps a console log. The guest command's exit code is propagated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import settings
from harness.core.bounds import MAX_TIMEOUT_S, check_number
from harness.core.errors import SettingError
from harness.system.provenance_collect import vm_facts_json
from harness.vm.accel import ACCELS, AccelChoice, choose_accel
from harness.vm.kernel import GuestKernel, find_guest_kernel
from harness.vm.messages import say
from harness.vm.process import TIMEOUT_EXIT_CODE, ExitMark, run_logged
from harness.vm.python_copy import PythonCopy, archive_dir, prepare_python_copy
from harness.vm.tools import VmTools, find_vm_tools

# vng hands the guest command over on the kernel command line, base64-encoded
# (`virtme.exec=`): x86 keeps 2048 bytes of it in all, and a longer line is cut, which
# hangs the boot with no output at all (measured: `rxe-power test` with four test files
# named, 3 s of guest CPU in 6 minutes). A command longer than this is handed over as a
# script file in build/vm-python instead, removed after the run.
EXEC_INLINE_MAX_CHARS = 800
# With kernel_console the guest kernel's own console (the 8250 UART ttyS0, not a virtio
# device) goes into the console log at every level (vng --verbose), and it keeps printing
# while devices are suspended (no_console_suspend): a system sleep that never resumes
# still leaves the kernel's last words in the log.
KERNEL_CONSOLE_VNG_ARGS = ("--verbose", "--append", "no_console_suspend")
VM_RUN_TIMEOUT_S = 1500.0  # whole guest command, boot included (TCG boot is ~15 s)
GUEST_MEMORY_MIB = 2048  # each guest's memory (vng --memory)
GUEST_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QEMU_OPT = re.compile(r"^[A-Za-z0-9_.,=/:+-]+$")  # no word a shell would change


@dataclass
class VmRequest:
    command: list[str]
    rw_dirs: list[Path]
    log_path: Path
    timeout_s: float = VM_RUN_TIMEOUT_S
    cpus: int = 2
    memory: str = f"{GUEST_MEMORY_MIB}M"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=Path.cwd)
    python_copy: bool = True  # the guest imports from a copy in its memory (python_copy.py)
    # QEMU arguments after vng's own (the two-kernel pair's links: harness.vm.pair); vng
    # hands them to QEMU through a shell, so each must be shell-safe (checked)
    qemu_opts: list[str] = field(default_factory=list)
    kernel_console: bool = False  # the guest kernel's console (ttyS0) in the log, see below
    # the guest command's exit mark carries it (harness.vm.process.ExitMark): made per boot
    exit_token: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class VmResult:
    exit_code: int
    accel: str
    kernel_version: str
    duration_s: float
    timed_out: bool
    log_path: Path
    vng_argv: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "accel": self.accel,
            "kernel_version": self.kernel_version,
            "duration_s": round(self.duration_s, 3),
            "timed_out": self.timed_out,
            "log_path": str(self.log_path),
            "vng_argv": list(self.vng_argv),
        }


def guest_env(req: VmRequest, bin_dir: Path) -> dict[str, str]:
    """The guest command's environment additions: PATH (venv bin first), then req.env."""
    env = {"PATH": f"{bin_dir}:{GUEST_SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", **req.env}
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise SettingError(
                f"guest environment variable name {name!r} is not a shell identifier",
                "use names of letters, digits and _ that do not start with a digit",
            )
        if "\0" in value:
            raise SettingError(
                f"guest environment variable {name} contains a NUL byte", "remove it"
            )
    return env


def guest_shell_command(req: VmRequest, bin_dir: Path, prefix: list[str] | None = None) -> str:
    """`cd <cwd> && env K=V ... [prefix...] <command>; rc=$?; <the exit mark>; exit $rc`,
    every word shell-quoted; the exit mark (harness.vm.process.ExitMark) is the line
    `exit_tag(req.exit_token) <rc>` on stderr."""
    if not req.command:
        raise SettingError("empty guest command", "give the command to run after `--`")
    assignments = [shlex.quote(f"{k}={v}") for k, v in guest_env(req, bin_dir).items()]
    return " ".join(
        ["cd", shlex.quote(str(req.cwd)), "&&", "env", *assignments,
         shlex.join([*(prefix or []), *req.command]), *EXIT_MARK_WORDS[:5],
         shlex.quote(exit_tag(req.exit_token)), *EXIT_MARK_WORDS[5:]]
    )


# after the command: its code kept, the exit mark on stderr (the tag goes after the
# fifth word, printf's format), the code returned
EXIT_MARK_WORDS = (";", "rc=$?", ";", "printf", "'%s%s\\n'", '"$rc"', ">&2", ";", "exit",
                   '"$rc"')
EXIT_MARK_WORD_COUNT = len(EXIT_MARK_WORDS) + 1  # and the tag


def exit_tag(token: str) -> str:
    return f"rxe-power guest exit {token}: "


def build_vng_argv(req: VmRequest, kernel: GuestKernel, accel: str, vng: str,
                   copy: PythonCopy | None = None) -> list[str]:
    """The vng command line for `req`. `vng`'s directory is also the guest PATH's head;
    with `copy`, the guest unpacks it before the command (python_copy.py)."""
    if accel not in ACCELS:
        raise SettingError(f"accelerator {accel!r} is not kvm or tcg", "pass kvm or tcg")
    argv = [vng, "-r", str(kernel.vmlinuz)]
    if accel == "tcg":
        argv.append("--disable-kvm")
    argv += ["--cpus", str(req.cpus), "--memory", req.memory]
    if req.kernel_console:
        argv += KERNEL_CONSOLE_VNG_ARGS
    for d in req.rw_dirs:
        argv += ["--rwdir", str(d)]
    prefix = copy.guest_argv() if copy is not None else None
    argv += ["--exec", guest_shell_command(req, Path(vng).parent, prefix)]
    if req.qemu_opts:  # vng keeps --qemu-opts last on virtme-run's line (its REMAINDER)
        for opt in req.qemu_opts:
            if not _QEMU_OPT.match(opt):
                raise SettingError(f"QEMU argument {opt!r} holds a character vng's shell "
                                   "would change", "use paths of letters, digits and ._-/")
        argv.append("--qemu-opts=" + " ".join(req.qemu_opts))
    return argv


def host_env(bin_dir: Path) -> dict[str, str]:
    """This environment with vng's directory first on PATH (vng runs `virtme-run`)."""
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(":") if p and p != str(bin_dir)]
    env["PATH"] = ":".join([str(bin_dir), *parts])
    return env


def exec_argument(shell_command: str) -> tuple[str, Path | None]:
    """What goes after vng's --exec: the command itself when it is short, else `sh
    SCRIPT` and the script file written here (EXEC_INLINE_MAX_CHARS says why)."""
    if len(shell_command) <= EXEC_INLINE_MAX_CHARS:
        return shell_command, None
    fd, name = tempfile.mkstemp(prefix="guest-command-", suffix=".sh", dir=archive_dir())
    with os.fdopen(fd, "w") as f:
        f.write(shell_command + "\n")
    return f"sh {shlex.quote(name)}", Path(name)


def _validate_request(req: VmRequest) -> None:
    check_number("--timeout-s", req.timeout_s, 0, MAX_TIMEOUT_S, "s", "MAX_TIMEOUT_S",
                 lo_open=True)
    if not req.cwd.is_dir():
        raise SettingError(f"working directory {req.cwd} does not exist", "run from a directory")
    for d in req.rw_dirs:
        if not d.is_dir():
            raise SettingError(
                f"--rwdir {d} is not a directory", "create it first, or drop the --rwdir"
            )


def prepare_boot(req: VmRequest, kernel: GuestKernel, accel: AccelChoice, tools: VmTools,
                 copy: PythonCopy | None, role: str = "vm") -> tuple[list[str], list[str],
                                                                      Path | None]:
    """The vng argv of one guest, its console log's header, and the script file its
    command went into when too long for the kernel command line (remove it after)."""
    # every guest command knows it runs in our guest, and its provenance names the
    # accelerator and this host (`rxe-power vm -- CMD` as much as `rxe-power run`)
    req.env = {**req.env, settings.IN_VM_ENV: "1", settings.VM_FACTS_ENV: json.dumps(
        vm_facts_json(accel.accel, accel.reason), separators=(",", ":"))}
    argv = build_vng_argv(req, kernel, accel.accel, str(tools.vng), copy)
    who = "" if role == "vm" else f"{role}: "
    say(f"{who}command (with {tools.bin_dir} first on PATH): {shlex.join(argv)}")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [
        f"rxe-power {role} console log",
        f"started: {started}",
        f"kernel: {kernel.version} ({kernel.vmlinuz})",
        f"accel: {accel.accel} ({accel.reason})",
        f"command: {shlex.join(argv)}",
        f"guest command: {shlex.join(req.command)}",
        f"timeout_s: {req.timeout_s:g}",
    ]
    exec_at = argv.index("--exec") + 1
    argv[exec_at], script = exec_argument(argv[exec_at])
    if script is not None:
        header.append(f"guest command handed over as the script {script} (too long for the "
                      f"kernel command line: EXEC_INLINE_MAX_CHARS={EXEC_INLINE_MAX_CHARS})")
    return argv, header, script


def run_in_vm(
    req: VmRequest,
    *,
    kernel: GuestKernel | None = None,
    accel: AccelChoice | None = None,
    tools: VmTools | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> VmResult:
    """Boot the guest kernel with vng and run `req.command` in it; never raises on timeout.
    `on_start(proc)` hears of vng's process as soon as it runs (harness.vm.guardian)."""
    req.cwd = req.cwd.absolute()
    req.rw_dirs = [d.absolute() for d in req.rw_dirs]
    req.log_path = req.log_path if req.log_path.is_absolute() else req.cwd / req.log_path
    _validate_request(req)
    tools = tools or find_vm_tools()
    kernel = kernel or find_guest_kernel()
    accel = accel or choose_accel(kernel, qemu=tools.qemu)
    copy, how = prepare_python_copy() if req.python_copy else (None, "off (--no-python-copy)")
    say(f"kernel {kernel.version}, accel {accel.accel} ({accel.reason})")
    say(f"guest's copy of the Python trees: {how}")
    argv, header, script = prepare_boot(req, kernel, accel, tools, copy)
    try:
        outcome = run_logged(
            argv,
            log_path=req.log_path,
            timeout_s=req.timeout_s,
            header=header,
            env=host_env(tools.bin_dir),
            cwd=req.cwd,
            on_start=on_start,
            exit_mark=ExitMark(exit_tag(req.exit_token)),
        )
    finally:
        if script is not None:
            script.unlink(missing_ok=True)
    if outcome.timed_out:
        say(
            f"timed out: the VM ran {outcome.duration_s:.1f} s of its {req.timeout_s:g} s "
            f"bound and was killed (exit code {TIMEOUT_EXIT_CODE}); console log: {req.log_path}"
        )
    return VmResult(
        exit_code=outcome.exit_code,
        accel=accel.accel,
        kernel_version=kernel.version,
        duration_s=outcome.duration_s,
        timed_out=outcome.timed_out,
        log_path=req.log_path,
        vng_argv=argv,
    )
